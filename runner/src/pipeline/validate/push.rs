//! The `push:` section: which hosts receive the code, which files of the repository are copied
//! into a host's `~/data/`, and which templates are rendered to `HOST:PATH`. Every pushed path is
//! checked against the [`Source`] the file came from, and pushes that would overwrite each other
//! are refused. It checks; it never archives, copies or renders anything.

use std::collections::{HashMap, HashSet};

use super::hosts::HostRefs;
use super::names::check_secrets;
use super::values::normalise_relative;
use super::Report;
use crate::pipeline::raw;
use crate::pipeline::yaml::KeyPath;
use crate::pipeline::{ConfigPush, DataPush, Push};
use crate::source::{EntryKind, Source};

pub(super) fn check_push(
    raw: Option<raw::RawPush>,
    hosts: &HostRefs<'_>,
    source: &dyn Source,
    report: &mut Report<'_>,
) -> Push {
    let Some(raw) = raw else { return Push::default() };
    let path = KeyPath::root().key("push");
    let mut push = Push::default();

    if let Some(code) = raw.code {
        let to_path = path.key("code").key("to");
        let roles = code.to.map(|names| names.0).unwrap_or_default();
        if roles.is_empty() {
            report.value(
                &to_path,
                "`push.code` names no host",
                Some("list the hosts that receive the code: `code: { to: [web] }`".to_owned()),
            );
        }
        for (i, role) in roles.into_iter().enumerate() {
            if hosts.check(&role, &to_path.index(i), "`push.code.to`", report) && !push.code_to.contains(&role) {
                push.code_to.push(role);
            }
        }
    }

    // Where each data push lands (host, file name in `~/data/`), to refuse two pushes that would
    // overwrite each other.
    let mut landings: HashMap<(String, String), String> = HashMap::new();
    for (i, data) in raw.data.unwrap_or_default().into_iter().enumerate() {
        let entry = path.key("data").index(i);
        let from = match data.from {
            Some(from) => check_source_path(&from, &entry.key("from"), EntryKind::Dir, source, report),
            None => {
                report.value(
                    &entry,
                    "this data push has no `from`",
                    Some("add `from: PATH`, a file or directory of the repository".to_owned()),
                );
                None
            }
        };
        let to = match data.to {
            Some(to) => hosts.check(&to, &entry.key("to"), "`to`", report).then_some(to),
            None => {
                report.value(
                    &entry,
                    "this data push has no `to`",
                    Some("add `to: ROLE`, the host that receives it".to_owned()),
                );
                None
            }
        };
        if let (Some(from), Some(to)) = (from, to) {
            let name = from.rsplit('/').next().unwrap_or(&from).to_owned();
            match landings.get(&(to.clone(), name.clone())) {
                Some(earlier) => report.value(
                    &entry.key("from"),
                    &format!("`{from}` and `{earlier}` would both land in `~/data/{name}` on `{to}`"),
                    Some("push their common directory instead, or rename one of them".to_owned()),
                ),
                None => {
                    landings.insert((to.clone(), name), from.clone());
                }
            }
            push.data.push(DataPush { from, to });
        }
    }

    let mut targets: HashSet<(String, String)> = HashSet::new();
    for (i, config) in raw.config.unwrap_or_default().into_iter().enumerate() {
        let entry = path.key("config").index(i);
        let template = match config.template {
            Some(template) => check_source_path(&template, &entry.key("template"), EntryKind::File, source, report),
            None => {
                report.value(
                    &entry,
                    "this config push has no `template`",
                    Some("add `template: PATH`, a Jinja template file of the repository".to_owned()),
                );
                None
            }
        };
        let target = match config.to {
            Some(to) => check_config_target(&to, &entry.key("to"), hosts, report),
            None => {
                report.value(
                    &entry,
                    "this config push has no `to`",
                    Some("add `to: HOST:PATH`, e.g. `to: web:src/.env`".to_owned()),
                );
                None
            }
        };
        let secrets = check_secrets(config.secrets, &entry.key("secrets"), report);
        if let (Some(template), Some((host, target_path))) = (template, target) {
            if !targets.insert((host.clone(), target_path.clone())) {
                report.value(
                    &entry.key("to"),
                    &format!("`{host}:{target_path}` is already the target of another config push"),
                    Some("each rendered file needs its own path".to_owned()),
                );
            }
            push.config.push(ConfigPush { template, host, path: target_path, secrets });
        }
    }
    push
}

/// Check a repository path written at `path` and that it exists in `source`. `wanted` is
/// `EntryKind::File` when only a file will do, `EntryKind::Dir` when either will. Returns the
/// normalised path.
fn check_source_path(
    written: &str,
    path: &KeyPath,
    wanted: EntryKind,
    source: &dyn Source,
    report: &mut Report<'_>,
) -> Option<String> {
    let normalised = match normalise_relative(written) {
        Ok(normalised) => normalised,
        Err(problem) => {
            report.value(path, &problem.message(written), Some(problem.hint("repository root")));
            return None;
        }
    };
    match source.kind(&normalised) {
        Ok(Some(EntryKind::Dir)) if wanted == EntryKind::File => {
            report.value(
                path,
                &format!("`{normalised}` is a directory; a template must be a file"),
                Some("name the template file itself".to_owned()),
            );
            None
        }
        Ok(Some(_)) => Some(normalised),
        Ok(None) => {
            report.value(
                path,
                &format!("`{normalised}` does not exist in {}", source.describe()),
                Some(
                    "paths are relative to the repository root; check the spelling and that the file is committed"
                        .to_owned(),
                ),
            );
            None
        }
        Err(error) => {
            report.value(path, &format!("could not check `{normalised}`: {error}"), None);
            None
        }
    }
}

/// Split and check a config `to: HOST:PATH`.
fn check_config_target(
    to: &str,
    path: &KeyPath,
    hosts: &HostRefs<'_>,
    report: &mut Report<'_>,
) -> Option<(String, String)> {
    let Some((host, target)) = to.split_once(':').filter(|(host, _)| !host.is_empty()) else {
        report.value(
            path,
            &format!("`{to}` is not `HOST:PATH`"),
            Some("write the host's role, a colon and a path relative to its home, e.g. `web:src/.env`".to_owned()),
        );
        return None;
    };
    let host_known = hosts.check(host, path, "`to`", report);
    match normalise_relative(target) {
        Ok(target) => host_known.then(|| (host.to_owned(), target)),
        Err(problem) => {
            report.value(path, &problem.message(target), Some(problem.hint("host's home")));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn a_push_to_an_undeclared_host_is_refused() {
        let mut text = MINIMAL.to_vec();
        text.extend([
            "push:",
            "  code: {to: [web, api]}",
            "  data:",
            "    - {from: seed.sql, to: db}",
            "  config:",
            "    - {template: app.env.j2, to: 'cache:app.conf'}",
        ]);
        let source = MemorySource::with_files(&["seed.sql", "app.env.j2"]);
        assert_eq!(
            problems(&file(&text), &source),
            [
                "9:20: `push.code.to` names host `api`, which is not declared",
                "11:28: `to` names host `db`, which is not declared",
                "13:34: `to` names host `cache`, which is not declared",
            ]
        );
    }

    #[test]
    fn a_config_target_must_be_host_colon_relative_path() {
        let mut text = MINIMAL.to_vec();
        text.extend([
            "push:",
            "  config:",
            "    - {template: t.j2, to: web}",
            "    - {template: t.j2, to: 'web:/etc/app.conf'}",
            "    - {template: t.j2, to: 'web:../app.conf'}",
            "    - {template: t.j2, to: 'web:'}",
            "    - {template: t.j2, to: 'web:conf/app.conf'}",
            "    - {template: t.j2, to: 'web:./conf//app.conf'}",
        ]);
        let source = MemorySource::with_files(&["t.j2"]);
        assert_eq!(
            problems(&file(&text), &source),
            [
                "10:28: `web` is not `HOST:PATH`",
                "11:28: `/etc/app.conf` is an absolute path",
                "12:28: `../app.conf` leaves its directory with `..`",
                "13:28: the path is empty",
                "15:28: `web:conf/app.conf` is already the target of another config push",
            ]
        );
    }

    #[test]
    fn pushed_paths_must_exist_in_the_source() {
        let mut text = MINIMAL.to_vec();
        text.extend([
            "push:",
            "  data:",
            "    - {from: ci/seed.sql, to: web}",
            "    - {from: ci/missing.sql, to: web}",
            "    - {from: ci/, to: web}",
            "    - {from: /etc/passwd, to: web}",
            "  config:",
            "    - {template: ci/app.env.j2, to: 'web:.env'}",
            "    - {template: ci, to: 'web:x'}",
        ]);
        let source = MemorySource::with_files(&["ci/seed.sql"]);
        assert_eq!(
            problems(&file(&text), &source),
            [
                "11:14: `ci/missing.sql` does not exist in test@0123456",
                "13:14: `/etc/passwd` is an absolute path",
                "15:18: `ci/app.env.j2` does not exist in test@0123456",
                "16:18: `ci` is a directory; a template must be a file",
            ]
        );
    }

    #[test]
    fn data_pushes_that_would_overwrite_each_other_are_refused() {
        let mut text = MINIMAL.to_vec();
        text.extend(["push:", "  data:", "    - {from: a/seed.sql, to: web}", "    - {from: b/seed.sql, to: web}"]);
        let source = MemorySource::with_files(&["a/seed.sql", "b/seed.sql"]);
        assert_eq!(
            problems(&file(&text), &source),
            ["11:14: `b/seed.sql` and `a/seed.sql` would both land in `~/data/seed.sql` on `web`"]
        );
    }
}
