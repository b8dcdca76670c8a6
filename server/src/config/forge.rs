//! A repo's forge keys (contract §7): `forge`, `forge_api`, `forge_project`, `forge_token`. They
//! say where the repo's commit statuses go; parsing lives on `RepoConfig`, the checks here. Like
//! the rest of `config`, nothing here opens a socket or reads the token.

use crate::forge::status::{check_project, ForgeKind};
use crate::secrets::SecretSource;

/// A repo's forge settings as they stand after validation.
#[derive(Debug, Clone, Copy)]
pub struct ForgeSettings<'a> {
    pub kind: ForgeKind,
    /// The API base: `forge_api`, or the forge's public default.
    pub api: &'a str,
    pub project: &'a str,
    pub token: &'a SecretSource,
}

/// The problems of a repo's forge keys, each a sentence naming the key.
pub(super) fn check(
    forge: Option<ForgeKind>,
    api: Option<&str>,
    project: Option<&str>,
    token: Option<&SecretSource>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(kind) = forge else {
        for (key, set) in
            [("forge_api", api.is_some()), ("forge_project", project.is_some()), ("forge_token", token.is_some())]
        {
            if set {
                problems.push(format!("{key} needs forge = \"github\", \"gitlab\", \"gitea\" or \"forgejo\""));
            }
        }
        return problems;
    };
    match api {
        Some(api) => {
            if let Err(problem) = check_api(api) {
                problems.push(format!("forge_api: {problem}"));
            }
        }
        None if kind.default_api().is_none() => problems.push(format!(
            "forge = \"{}\" needs forge_api, the API base of the server (e.g. \"https://code.example.com/api/v1\")",
            kind.as_str()
        )),
        None => {}
    }
    match project {
        Some(project) => {
            if check_project(kind, project).is_err() {
                problems.push(match kind {
                    ForgeKind::GitLab => "forge_project is empty; give the project's path or numeric id".to_string(),
                    _ => format!("forge_project {project:?} is not of the form owner/name"),
                });
            }
        }
        None => problems.push(format!("forge = \"{}\" needs forge_project", kind.as_str())),
    }
    if token.is_none() {
        problems.push(format!(
            "forge = \"{}\" needs forge_token = {{ env = \"VAR\" }} or {{ file = \"/path\" }}",
            kind.as_str()
        ));
    }
    problems
}

/// An API base is an absolute http(s) URL without credentials, query or fragment.
fn check_api(api: &str) -> Result<(), String> {
    let (scheme, rest) = api.split_once("://").ok_or_else(|| format!("{api:?} is not a URL"))?;
    if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
        return Err(format!("{api:?} is not an http or https URL"));
    }
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("{api:?} names no host"));
    }
    if host.contains('@') {
        return Err("the URL may not carry credentials; the token goes in forge_token".to_string());
    }
    if rest.contains(['?', '#']) {
        return Err(format!("{api:?} has a query or fragment"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> SecretSource {
        SecretSource::Env("T".into())
    }

    #[test]
    fn complete_settings_pass_and_defaults_cover_github_and_gitlab() {
        assert!(check(Some(ForgeKind::GitHub), None, Some("o/r"), Some(&token())).is_empty());
        assert!(check(Some(ForgeKind::GitLab), None, Some("group/sub/p"), Some(&token())).is_empty());
        let api = Some("http://127.0.0.1:3000/api/v1");
        assert!(check(Some(ForgeKind::Forgejo), api, Some("o/r"), Some(&token())).is_empty());
        assert!(check(None, None, None, None).is_empty(), "no forge: nothing to report");
    }

    #[test]
    fn the_contract_example_parses_and_validates() {
        let config = crate::config::Config::from_toml_str(
            r#"
            public_url = "https://ci.example.com"
            [[repo]]
            name = "acme"
            url = "https://git.example.com/acme/shop.git"
            secret = "s"
            forge = "github"
            forge_api = "https://api.github.com"
            forge_project = "acme/shop"
            forge_token = { env = "ACME_FORGE_TOKEN" }
            [[repo]]
            name = "lab"
            url = "/srv/lab"
            secret = "s"
            forge = "gitlab"
            forge_project = "group/lab"
            forge_token = { file = "/etc/gantry/lab_token" }
            [[repo]]
            name = "plain"
            url = "/srv/plain"
            secret = "s"
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        let acme = config.repo("acme").unwrap().forge_settings().unwrap();
        assert_eq!((acme.kind, acme.api, acme.project), (ForgeKind::GitHub, "https://api.github.com", "acme/shop"));
        assert_eq!(acme.token, &SecretSource::Env("ACME_FORGE_TOKEN".into()));
        let lab = config.repo("lab").unwrap().forge_settings().unwrap();
        assert_eq!(lab.api, "https://gitlab.com/api/v4");
        assert!(config.repo("plain").unwrap().forge_settings().is_none());
        let err = crate::config::Config::from_toml_str(
            "[[repo]]\nname = \"a\"\nurl = \"/x\"\nsecret = \"s\"\nforge = \"gitea\"\nforge_project = \"o/r\"\n\
             forge_token = { env = \"T\" }\n",
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("repo \"a\": forge = \"gitea\" needs forge_api"), "{err}");
        assert!(crate::config::Config::from_toml_str(
            "[[repo]]\nname = \"a\"\nurl = \"/x\"\nsecret = \"s\"\nforge = \"bitbucket\"\n"
        )
        .is_err());
    }

    #[test]
    fn each_missing_or_bad_key_is_named() {
        let found = check(Some(ForgeKind::Gitea), None, Some("nope"), None).join("; ");
        for expected in ["needs forge_api", "not of the form owner/name", "needs forge_token"] {
            assert!(found.contains(expected), "{expected} missing from {found}");
        }
        let found = check(None, Some("https://x"), None, Some(&token())).join("; ");
        assert!(found.contains("forge_api needs forge") && found.contains("forge_token needs forge"), "{found}");
        for bad in ["ftp://x/api", "https://", "https://user:pw@host/api", "https://host/api?x=1", "host/api"] {
            assert!(!check(Some(ForgeKind::GitHub), Some(bad), Some("o/r"), Some(&token())).is_empty(), "{bad}");
        }
        assert!(!check(Some(ForgeKind::GitHub), None, None, Some(&token())).is_empty(), "forge_project is required");
    }
}
