//! Names and the hints that suggest them: host roles, stage names and environment variable
//! names each have their pattern (roles and stage names appear in URLs, paths and variable
//! names), `GANTRY_*` variables are Gantry's own, and a misspelled name gets a "did you mean" from
//! the names it could have meant. Nothing here knows where a name is used beyond the message.

use std::collections::BTreeMap;

use super::Report;
use crate::env::is_env_name;
use crate::pipeline::raw::{EnvMap, Names};
use crate::pipeline::yaml::KeyPath;
use crate::pipeline::SecretNames;

/// The longest host role or stage name; both appear in URLs, paths and variable names.
pub const MAX_NAME_LEN: usize = 63;

/// Variables with this prefix are set by Gantry for every step and cannot be set by a pipeline.
const RESERVED_ENV_PREFIX: &str = "GANTRY_";

/// The most names listed in a "did you mean" or "declared: …" hint.
const MAX_NAMES_IN_HINT: usize = 8;

pub(super) fn check_env(env: Option<EnvMap>, path: &KeyPath, report: &mut Report<'_>) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for (name, value) in env.map(|env| env.0).unwrap_or_default() {
        let key_path = path.key(&name);
        if !is_env_name(&name) {
            report.key(
                &key_path,
                &format!("invalid environment variable name `{name}`"),
                Some("a name is letters, digits and `_`, and does not start with a digit".to_owned()),
            );
        } else if name.starts_with(RESERVED_ENV_PREFIX) {
            report.key(
                &key_path,
                &format!("`{name}` is reserved"),
                Some(format!("Gantry sets the `{RESERVED_ENV_PREFIX}*` variables itself; choose another name")),
            );
        }
        vars.insert(name, value);
    }
    vars
}

/// The secrets a host's setup, a config push or a stage names (`secrets: [A, B]`), each an
/// environment variable name the repo defines; duplicates are kept once.
pub(super) fn check_secrets(raw: Option<Names>, path: &KeyPath, report: &mut Report<'_>) -> Vec<String> {
    let mut secrets = Vec::new();
    for (j, name) in raw.map(|names| names.0).unwrap_or_default().into_iter().enumerate() {
        let at = path.index(j);
        if !is_env_name(&name) {
            report.value(
                &at,
                &format!("invalid secret name `{name}`"),
                Some("a secret is named like an environment variable: letters, digits and `_`".to_owned()),
            );
            continue;
        }
        if let SecretNames::Defined(defined) = report.secrets {
            if !defined.contains(&name) {
                let hint = match closest(&name, defined.iter().map(String::as_str)) {
                    Some(suggestion) => format!("did you mean `{suggestion}`?"),
                    None if defined.is_empty() => {
                        "this repo defines no secrets: add them to its `secrets` in the server's configuration"
                            .to_owned()
                    }
                    None => format!("the secrets of this repo are {}", list(defined.iter().map(String::as_str))),
                };
                report.value(&at, &format!("secret `{name}` is not defined for this repo"), Some(hint));
                continue;
            }
        }
        if !secrets.contains(&name) {
            secrets.push(name);
        }
    }
    secrets
}

/// `[a-z0-9][a-z0-9-]*`, at most [`MAX_NAME_LEN`] characters.
pub(super) fn is_role(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_NAME_LEN
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `[A-Za-z0-9_.-]+`, at most [`MAX_NAME_LEN`] characters; `.` and `..` alone are refused since
/// stage names appear in URL paths.
pub(super) fn is_stage_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The candidate closest to `written`, when close enough to be a likely typo.
pub(super) fn closest<'a>(written: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let allowed = (written.chars().count() / 3).max(1);
    candidates
        .filter(|candidate| *candidate != written)
        .map(|candidate| (strsim::damerau_levenshtein(written, candidate), candidate))
        .filter(|(distance, _)| *distance <= allowed)
        .min()
        .map(|(_, candidate)| candidate)
}

pub(super) fn sorted<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let mut names = names.to_vec();
    names.sort_unstable();
    names
}

/// `a`, `b`, `c` (and N more).
pub(super) fn list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    let mut text = names.iter().take(MAX_NAMES_IN_HINT).map(|name| format!("`{name}`")).collect::<Vec<_>>().join(", ");
    if names.len() > MAX_NAMES_IN_HINT {
        text.push_str(&format!(" and {} more", names.len() - MAX_NAMES_IN_HINT));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn names_must_match_their_patterns() {
        let text = file(&[
            "version: 1",
            "hosts:",
            "  Web_1:",
            "env:",
            "  1ST: x",
            "  GANTRY_HOST: y",
            "stages:",
            "  - name: 'unit:fast'",
            "    host: Web_1",
            "    env: {my-var: z}",
            "    run: make",
        ]);
        assert_eq!(
            problems(&text, &no_files()),
            [
                "3:3: invalid host role `Web_1`",
                "5:3: invalid environment variable name `1ST`",
                "6:3: `GANTRY_HOST` is reserved",
                "8:11: invalid stage name `unit:fast`",
                "10:11: invalid environment variable name `my-var`",
            ]
        );
    }
}
