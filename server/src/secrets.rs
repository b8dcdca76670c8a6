//! Pipeline secrets (contract §6): where a repo's secret values come from, and which builds get
//! them.
//!
//! A value comes from the server's environment or from a file, read when a build starts (so a
//! rotated file takes effect without a restart), and lives only in memory as a [`SecretString`].
//! It never comes from the pipeline file or the database, and nothing here logs or formats a
//! value: errors name the secret and where it should have come from, never what it holds.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

/// A secret file larger than this is refused: secrets are passwords and keys, not data.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Where one secret's value comes from: `{ env = "NAME" }` or `{ file = "/path" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretSource {
    /// An environment variable of the server.
    Env(String),
    /// A file on the server, its contents as they are (a key file keeps its last newline).
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret {name}: the server's environment has no variable {var}")]
    MissingEnv { name: String, var: String },
    #[error("secret {name}: the variable {var} is not valid UTF-8")]
    EnvNotText { name: String, var: String },
    #[error("secret {name}: cannot read {path}: {reason}")]
    File { name: String, path: String, reason: String },
}

impl SecretSource {
    /// Read the value of the secret `name` from its source.
    pub fn resolve(&self, name: &str) -> Result<SecretString, SecretError> {
        match self {
            SecretSource::Env(var) => match std::env::var(var) {
                Ok(value) => Ok(SecretString::from(value)),
                Err(std::env::VarError::NotPresent) => {
                    Err(SecretError::MissingEnv { name: name.to_string(), var: var.clone() })
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    Err(SecretError::EnvNotText { name: name.to_string(), var: var.clone() })
                }
            },
            SecretSource::File(path) => {
                let file_error = |reason: String| SecretError::File {
                    name: name.to_string(),
                    path: path.display().to_string(),
                    reason,
                };
                let file = std::fs::File::open(path).map_err(|e| file_error(e.to_string()))?;
                let mut bytes = Vec::new();
                file.take(MAX_SECRET_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| file_error(e.to_string()))?;
                if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
                    return Err(file_error(format!("it is larger than {MAX_SECRET_FILE_BYTES} bytes")));
                }
                let text = String::from_utf8(bytes).map_err(|_| file_error("it is not UTF-8 text".to_string()))?;
                Ok(SecretString::from(text))
            }
        }
    }
}

/// The values a build may use: every secret the repo defines, or none for a build of a pull
/// request when the repo does not allow it.
pub fn for_build(
    defined: &BTreeMap<String, SecretSource>,
    is_pull_request: bool,
    for_pull_requests: bool,
) -> Result<BTreeMap<String, SecretString>, SecretError> {
    if is_pull_request && !for_pull_requests {
        return Ok(BTreeMap::new());
    }
    defined.iter().map(|(name, source)| Ok((name.clone(), source.resolve(name)?))).collect()
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn sources(pairs: &[(&str, SecretSource)]) -> BTreeMap<String, SecretSource> {
        pairs.iter().map(|(name, source)| (name.to_string(), source.clone())).collect()
    }

    #[test]
    fn values_come_from_the_environment_and_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("deploy_key");
        std::fs::write(&key, "-----BEGIN KEY-----\nabc\n-----END KEY-----\n").unwrap();
        // A variable no other test or process sets.
        std::env::set_var("GANTRY_TEST_SECRET_FROM_ENV", "hunter2");
        let defined = sources(&[
            ("DB_PASSWORD", SecretSource::Env("GANTRY_TEST_SECRET_FROM_ENV".into())),
            ("DEPLOY_KEY", SecretSource::File(key)),
        ]);
        let values = for_build(&defined, false, false).unwrap();
        assert_eq!(values["DB_PASSWORD"].expose_secret(), "hunter2");
        assert_eq!(values["DEPLOY_KEY"].expose_secret(), "-----BEGIN KEY-----\nabc\n-----END KEY-----\n");
    }

    #[test]
    fn pull_requests_get_no_secrets_unless_the_repo_allows_it() {
        std::env::set_var("GANTRY_TEST_SECRET_FOR_PRS", "pr-secret");
        let defined = sources(&[("TOKEN", SecretSource::Env("GANTRY_TEST_SECRET_FOR_PRS".into()))]);
        assert!(for_build(&defined, true, false).unwrap().is_empty());
        assert_eq!(for_build(&defined, true, true).unwrap()["TOKEN"].expose_secret(), "pr-secret");
        assert_eq!(for_build(&defined, false, false).unwrap().len(), 1);
    }

    #[test]
    fn errors_say_where_the_value_should_come_from_and_never_a_value() {
        let dir = tempfile::tempdir().unwrap();
        let missing =
            for_build(&sources(&[("A", SecretSource::Env("GANTRY_TEST_NO_SUCH_VARIABLE".into()))]), false, false)
                .unwrap_err()
                .to_string();
        assert_eq!(missing, "secret A: the server's environment has no variable GANTRY_TEST_NO_SUCH_VARIABLE");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_SECRET_FILE_BYTES as usize + 1]).unwrap();
        let error = SecretSource::File(big).resolve("B").unwrap_err().to_string();
        assert!(error.contains("secret B") && error.contains("larger than") && !error.contains("xxx"), "{error}");
        let binary = dir.path().join("binary");
        std::fs::write(&binary, b"\xff\xfe").unwrap();
        assert!(SecretSource::File(binary).resolve("C").unwrap_err().to_string().contains("not UTF-8"));
    }

    #[test]
    fn the_config_spells_a_source_as_an_inline_table() {
        #[derive(Deserialize)]
        struct Repo {
            secrets: BTreeMap<String, SecretSource>,
        }
        let repo: Repo = toml::from_str("secrets = { A = { env = \"X\" }, B = { file = \"/etc/k\" } }").unwrap();
        assert_eq!(repo.secrets["A"], SecretSource::Env("X".into()));
        assert_eq!(repo.secrets["B"], SecretSource::File("/etc/k".into()));
        assert!(toml::from_str::<Repo>("secrets = { A = { value = \"inline\" } }").is_err(), "no inline values");
    }
}
