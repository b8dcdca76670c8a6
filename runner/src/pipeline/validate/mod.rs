//! Text → validated [`Pipeline`], collecting every problem as a [`Diagnostic`] with
//! file:line:column and a hint.
//!
//! The steps: refuse an oversized text; read the YAML with positions (`yaml`); split it into the
//! raw serde types (`raw`); then check meaning, one section per module: `hosts` (roles, and
//! references to them from elsewhere), `push` (code, data and config pushes, against the
//! [`Source`] the file came from), `stages` (stages, `needs` and its cycles), `on` (branch globs),
//! with the shared judges of `names` (names and "did you mean" hints) and `values` (durations and
//! relative paths). This module holds the entry [`load`], the [`Report`] every check writes to,
//! and the top-level `version`. A check never stops at its first finding: the user sees every
//! problem of the file at once. Reading the file from where it lives is `super::file`'s job; this
//! module must not touch a host or render a template.

mod hosts;
mod names;
mod on;
mod push;
mod stages;
#[cfg(test)]
mod testing;
mod values;

use std::collections::HashSet;

use super::diagnostic::{Diagnostic, Diagnostics};
use super::raw::{self, RawFile, RawProblem};
use super::yaml::{self, KeyPath, Pos, Positions};
use super::{Pipeline, SecretNames, MAX_PIPELINE_BYTES};
use crate::source::Source;
use hosts::HostRefs;
pub use names::MAX_NAME_LEN;
use names::{closest, list};
pub use values::MAX_STEP_TIMEOUT;

/// The only `version:` this Gantry reads.
const SUPPORTED_VERSION: &str = "1";

/// Parse and validate a pipeline file given as text. See [`super::load`].
pub(super) fn load(
    file_name: &str,
    text: &str,
    source: &dyn Source,
    secrets: SecretNames<'_>,
) -> Result<Pipeline, Diagnostics> {
    if text.len() > MAX_PIPELINE_BYTES {
        return Err(too_large(file_name, u64::try_from(text.len()).unwrap_or(u64::MAX)));
    }
    let document = yaml::read(text).map_err(|problem| {
        Diagnostics(vec![Diagnostic {
            file: file_name.to_owned(),
            line: problem.pos.line,
            column: problem.pos.column,
            message: problem.message,
            hint: problem.hint,
        }])
    })?;
    let mut report = Report {
        file: file_name,
        positions: &document.positions,
        diagnostics: Vec::new(),
        misspelled: HashSet::new(),
        secrets,
    };
    for problem in &document.problems {
        report.at(problem.pos, &problem.message, problem.hint.clone());
    }
    let mut raw_problems = Vec::new();
    let raw = raw::split(document.value, &mut raw_problems);
    for problem in raw_problems {
        report.raw_problem(problem);
    }
    let pipeline = raw.map(|raw| check(raw, source, &mut report));
    match pipeline {
        Some(pipeline) if report.diagnostics.is_empty() => Ok(pipeline),
        _ => Err(report.finish()),
    }
}

/// The one diagnostic of a file over [`MAX_PIPELINE_BYTES`], `len` bytes long.
pub(super) fn too_large(file_name: &str, len: u64) -> Diagnostics {
    Diagnostics(vec![Diagnostic {
        file: file_name.to_owned(),
        line: 1,
        column: 1,
        message: format!("the file is {len} bytes; pipeline files are limited to {MAX_PIPELINE_BYTES} bytes"),
        hint: Some("move long scripts into files of the repository and run them from `run:`".to_owned()),
    }])
}

/// Collects the diagnostics of one file, locating paths through the position index.
struct Report<'a> {
    file: &'a str,
    positions: &'a Positions,
    diagnostics: Vec<Diagnostic>,
    /// Top-level keys that an unknown key was reported as a likely misspelling of (`stags` →
    /// `stages`): their absence is not reported a second time.
    misspelled: HashSet<&'static str>,
    /// The secrets steps and templates may name.
    secrets: SecretNames<'a>,
}

impl Report<'_> {
    fn at(&mut self, pos: Pos, message: &str, hint: Option<String>) {
        self.diagnostics.push(Diagnostic {
            file: self.file.to_owned(),
            line: pos.line,
            column: pos.column,
            message: message.to_owned(),
            hint,
        });
    }

    /// A problem with the value at `path`.
    fn value(&mut self, path: &KeyPath, message: &str, hint: Option<String>) {
        let pos = self.positions.value(path);
        self.at(pos, message, hint);
    }

    /// A problem with the key of the mapping entry at `path`.
    fn key(&mut self, path: &KeyPath, message: &str, hint: Option<String>) {
        let pos = self.positions.key(path);
        self.at(pos, message, hint);
    }

    fn raw_problem(&mut self, problem: RawProblem) {
        match problem {
            RawProblem::UnknownKey { path } => {
                let key = path.last_key().unwrap_or_default().to_owned();
                let parent = path.parent();
                let known = raw::known_keys(&parent);
                let place = if parent.0.is_empty() { "at the top level".to_owned() } else { format!("in `{parent}`") };
                let hint = if key == "<<" {
                    "YAML merge keys are not supported: repeat the keys, or use an alias for a whole value".to_owned()
                } else {
                    match closest(&key, known.iter().copied()) {
                        Some(suggestion) => {
                            if parent.0.is_empty() {
                                self.misspelled.insert(suggestion);
                            }
                            format!("did you mean `{suggestion}`?")
                        }
                        None => format!("the keys allowed here are {}", list(known.iter().copied())),
                    }
                };
                self.key(&path, &format!("unknown key `{key}` {place}"), Some(hint));
            }
            RawProblem::Invalid { path, message } => {
                let text = if path.0.is_empty() { message } else { format!("`{path}`: {message}") };
                self.value(&path, &text, shape_hint(&path));
            }
        }
    }

    /// Every diagnostic, in file order, without repeats.
    fn finish(mut self) -> Diagnostics {
        self.diagnostics.sort_by_key(|d| (d.line, d.column));
        self.diagnostics.dedup();
        Diagnostics(self.diagnostics)
    }
}

/// What a value at `path` should look like, from the key that holds it.
fn shape_hint(path: &KeyPath) -> Option<String> {
    let hint = match path.last_key()? {
        "run" | "setup" => {
            "write a shell script as text (`run: make test`, or `run: |` and lines below) or as a list of lines"
        }
        "needs" => "list the stages this one waits for: `needs: [build, lint]`",
        "to" if path.0.len() == 3 => "list the hosts that receive the code: `to: [web]`",
        "to" => "name the destination: a host role for data, `HOST:PATH` for config",
        "env" => "write variables as a mapping: `env: { NAME: value }`",
        "reports" => "list JUnit XML paths: `reports: [reports/unit.xml]`",
        "branches" => "list branch patterns: `branches: [main, \"release/*\"]`",
        "hosts" => "declare hosts as a mapping from role to settings: `hosts: { web: {} }`",
        "stages" => "list stages, each with `name`, `host` and `run`",
        "data" | "config" => "write a list of entries, each starting with `- `",
        "timeout" => "write a duration such as `90s`, `10m` or `1h 30m`",
        _ => return None,
    };
    Some(hint.to_owned())
}

/// The semantic checks. Returns the pipeline as far as it could be built; it is only used when
/// `report` stays empty.
fn check(raw: RawFile, source: &dyn Source, report: &mut Report<'_>) -> Pipeline {
    if !(raw.version.is_none() && report.misspelled.contains("version")) {
        check_version(raw.version.as_deref(), report);
    }
    // Hosts, first: every other section refers to them.
    let (hosts, roles) = hosts::check_hosts(raw.hosts, report);
    let host_refs = HostRefs { roles: &roles };
    let push = push::check_push(raw.push, &host_refs, source, report);
    let env = names::check_env(raw.env, &KeyPath::root().key("env"), report);
    let stages = stages::check_stages(raw.stages, &host_refs, report);
    let on = on::check_on(raw.on, report);
    Pipeline { hosts, push, env, stages, on }
}

fn check_version(version: Option<&str>, report: &mut Report<'_>) {
    match version {
        None => report.at(
            Pos::START,
            "the file has no `version`",
            Some(format!("add `version: {SUPPORTED_VERSION}` as the first line")),
        ),
        Some(SUPPORTED_VERSION) => {}
        Some(other) => report.value(
            &KeyPath::root().key("version"),
            &format!("unsupported version `{other}`"),
            Some(format!("this Gantry reads `version: {SUPPORTED_VERSION}` files")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use super::testing::*;
    use super::*;
    use crate::pipeline::{load, load_file, PipelineFile, DEFAULT_STEP_TIMEOUT, PIPELINE_FILE};
    use crate::source::WorkDirSource;

    #[test]
    fn the_contract_example_loads_with_everything_it_says() {
        let text = file(&[
            "version: 1",
            "hosts:",
            "  db:",
            "    image: debian-12",
            "    size: small",
            "    setup:",
            "      - sh data/db-setup.sh",
            "  web:",
            "    setup:",
            "      - pip install -r requirements.txt",
            "push:",
            "  code:",
            "    to: [web]",
            "  data:",
            "    - from: ci/seed.sql",
            "      to: db",
            "    - from: ./ci/db-setup.sh",
            "      to: db",
            "  config:",
            "    - template: ci/app.env.j2",
            "      to: web:src/.env",
            "env:",
            "  APP_ENV: test",
            "stages:",
            "  - name: migrate",
            "    host: web",
            "    run: ./manage.py migrate",
            "  - name: unit",
            "    host: web",
            "    needs: [migrate]",
            "    timeout: 10m",
            "    env: { PYTHONWARNINGS: ignore }",
            "    run: |",
            "      pytest -q --junitxml=reports/unit.xml",
            "    reports: [reports/unit.xml]",
            "on:",
            "  branches: [main, \"release/*\"]",
        ]);
        let source = MemorySource::with_files(&["ci/seed.sql", "ci/db-setup.sh", "ci/app.env.j2"]);
        let pipeline = load(".gantry.yml", &text, &source).unwrap();

        let roles: Vec<&str> = pipeline.hosts.iter().map(|h| h.role.as_str()).collect();
        assert_eq!(roles, ["db", "web"], "hosts keep file order");
        let db = pipeline.host("db").unwrap();
        assert_eq!((db.image.as_deref(), db.size.as_deref()), (Some("debian-12"), Some("small")));
        assert_eq!(db.setup.as_deref(), Some("sh data/db-setup.sh"));
        assert_eq!(db.setup_timeout, DEFAULT_STEP_TIMEOUT);
        assert_eq!(pipeline.push.code_to, ["web"]);
        assert!(pipeline.has_code("web") && !pipeline.has_code("db"));
        let data: Vec<(&str, &str)> = pipeline.push.data.iter().map(|d| (d.from.as_str(), d.to.as_str())).collect();
        assert_eq!(data, [("ci/seed.sql", "db"), ("ci/db-setup.sh", "db")]);
        let config = &pipeline.push.config[0];
        assert_eq!(
            (config.template.as_str(), config.host.as_str(), config.path.as_str()),
            ("ci/app.env.j2", "web", "src/.env")
        );
        assert_eq!(pipeline.env, BTreeMap::from([("APP_ENV".to_owned(), "test".to_owned())]));

        let migrate = &pipeline.stages[0];
        assert_eq!(
            (migrate.name.as_str(), migrate.host.as_str(), migrate.run.as_str()),
            ("migrate", "web", "./manage.py migrate")
        );
        assert_eq!(migrate.timeout, DEFAULT_STEP_TIMEOUT);
        let unit = &pipeline.stages[1];
        assert_eq!(unit.needs, ["migrate"]);
        assert_eq!(unit.timeout, Duration::from_secs(600));
        assert_eq!(unit.env.get("PYTHONWARNINGS").map(String::as_str), Some("ignore"));
        assert_eq!(unit.run, "pytest -q --junitxml=reports/unit.xml\n");
        assert_eq!(unit.reports, ["reports/unit.xml"]);
        assert_eq!(pipeline.on.branches(), ["main", "release/*"]);
        assert!(pipeline.on.matches_branch("release/2.1") && !pipeline.on.matches_branch("feature/x"));
        assert_eq!(pipeline.total_timeout(), DEFAULT_STEP_TIMEOUT * 3 + Duration::from_secs(600));
    }

    #[test]
    fn several_errors_are_reported_together_in_file_order_with_hints() {
        let text = file(&[
            "version: 1",
            "hosts:",
            "  web:",
            "    imgae: debian-12",
            "stages:",
            "  - name: build",
            "    host: wbe",
            "    run: make",
            "  - name: unit",
            "    host: web",
            "    needs: [biuld]",
            "    timeout: 10",
            "    run: make test",
        ]);
        let diagnostics = load(".gantry.yml", &text, &no_files()).unwrap_err();
        assert_eq!(
            diagnostics.to_string(),
            [
                ".gantry.yml:4:5: error: unknown key `imgae` in `hosts.web`",
                "  hint: did you mean `image`?",
                ".gantry.yml:7:11: error: stage `build` names host `wbe`, which is not declared",
                "  hint: did you mean `web`? Or declare `wbe` under `hosts:`",
                ".gantry.yml:11:13: error: stage `unit` needs `biuld`, which is not a stage",
                "  hint: did you mean `build`?",
                ".gantry.yml:12:14: error: invalid timeout `10`: time unit needed, for example 10sec or 10ms",
                "  hint: add a unit: `10s` for seconds, `10m` for minutes",
            ]
            .join("\n")
        );
    }

    #[test]
    fn unknown_keys_are_all_reported_at_their_key() {
        let text = file(&[
            "version: 1",
            "host: {}",
            "hosts:",
            "  web: {image: x, sise: small}",
            "push:",
            "  code: {to: [web], from: x}",
            "  files: []",
            "stages:",
            "  - name: unit",
            "    host: web",
            "    run: make",
            "    <<: {}",
            "on: {branch: [main]}",
        ]);
        assert_eq!(
            problems(&text, &no_files()),
            [
                "2:1: unknown key `host` at the top level",
                "4:19: unknown key `sise` in `hosts.web`",
                "6:21: unknown key `from` in `push.code`",
                "7:3: unknown key `files` in `push`",
                "12:5: unknown key `<<` in `stages[0]`",
                "13:6: unknown key `branch` in `on`",
            ]
        );
        let hint = only_hint(&file(&["version: 1", "hosts: {web: }", "stags: []"]), &no_files());
        assert_eq!(hint, "did you mean `stages`?", "a misspelled section is not also reported missing");
        assert_eq!(
            problems(&file(&["verison: 1", "hosts: {web: }", "stages: [{name: a, host: web, run: x}]"]), &no_files()),
            ["1:1: unknown key `verison` at the top level"]
        );
    }

    #[test]
    fn the_version_must_be_present_and_one() {
        let mut text = MINIMAL.to_vec();
        text[0] = "version: 2";
        assert_eq!(problems(&file(&text), &no_files()), ["1:10: unsupported version `2`"]);
        assert_eq!(problems(&file(&MINIMAL[1..]), &no_files()), ["1:1: the file has no `version`"]);
    }

    #[test]
    fn a_pipeline_needs_hosts_and_stages() {
        assert_eq!(
            problems(&file(&["version: 1", "hosts: {}", "stages: []"]), &no_files()),
            ["2:1: the pipeline declares no hosts", "3:1: the pipeline has no stages"]
        );
        assert_eq!(
            problems(&file(&["version: 1"]), &no_files()),
            ["1:1: the pipeline declares no hosts", "1:1: the pipeline has no stages"]
        );
    }

    #[test]
    fn an_empty_or_non_mapping_file_is_one_error() {
        assert_eq!(problems("", &no_files()), ["1:1: the file is empty"]);
        assert_eq!(
            problems("- a\n- b\n", &no_files()),
            ["1:1: the file holds a list, not a mapping of `version`, `hosts` and `stages`"]
        );
    }

    #[test]
    fn duplicate_yaml_keys_are_refused_at_the_second() {
        let mut text = MINIMAL.to_vec();
        text.insert(3, "  web:");
        text.insert(3, "    setup: make deps");
        text.push("    run: make again");
        assert_eq!(problems(&file(&text), &no_files()), ["5:3: duplicate key `web`", "10:5: duplicate key `run`"]);
    }

    #[test]
    fn a_value_of_the_wrong_shape_is_located_and_others_still_reported() {
        let text = file(&[
            "version: 1",
            "hosts: {web: }",
            "stages:",
            "  - name: a",
            "    host: web",
            "    run:",
            "      make: all",
            "  - name: b",
            "    host: web",
            "    needs: [a, zz]",
            "    run: make",
        ]);
        assert_eq!(
            problems(&text, &no_files()),
            [
                "7:7: `stages[0].run`: invalid type: map, expected a shell script: a text or a list of lines",
                "10:16: stage `b` needs `zz`, which is not a stage",
            ]
        );
    }

    #[test]
    fn a_yaml_syntax_error_is_one_located_diagnostic() {
        let text = file(&["version: 1", "hosts:", "  web: {", "stages: []"]);
        let found = problems(&text, &no_files());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("invalid YAML"), "{found:?}");
    }

    #[test]
    fn an_alias_bomb_is_refused_without_expanding_it() {
        let mut text = vec!["a0: &a0 [x, x, x, x, x, x, x, x, x, x]".to_owned()];
        for level in 1..10 {
            let previous = format!("*a{}", level - 1);
            text.push(format!("a{level}: &a{level} [{}]", vec![previous; 10].join(", ")));
        }
        let text = text.join("\n");
        let started = std::time::Instant::now();
        let found = problems(&text, &no_files());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains(&format!("more than {} YAML values", yaml::MAX_NODES)), "{found:?}");
        // Line 5 holds the first alias whose expansion passes the limit (`*a3`, 11111 values).
        assert!(found[0].starts_with("5:10: "), "refused at the first alias past the limit: {found:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "the bomb was expanded");
    }

    #[test]
    fn a_huge_file_is_refused_before_parsing() {
        // Invalid YAML too: only the size check can produce this message.
        let text = format!("version: 1\n{}", "[".repeat(MAX_PIPELINE_BYTES));
        assert_eq!(
            problems(&text, &no_files()),
            [format!(
                "1:1: the file is {} bytes; pipeline files are limited to {MAX_PIPELINE_BYTES} bytes",
                text.len()
            )]
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let limit = yaml::MAX_NESTING_DEPTH;
        let message = format!("values are nested more than {limit} levels deep");
        // One level past the limit: refused at the opening bracket that passes it (the top-level
        // mapping is the first level).
        let text = format!("version: 1\nx: {}{}\n", "[".repeat(limit), "]".repeat(limit));
        assert_eq!(problems(&text, &no_files()), [format!("2:{}: {message}", 3 + limit)]);
        // Far past it, where the YAML scanner's own limit is met first: the same message.
        let depth = 100_000;
        let text = format!("version: 1\nx: {}{}\n", "[".repeat(depth), "]".repeat(depth));
        let found = problems(&text, &no_files());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("2:") && found[0].ends_with(&message), "{found:?}");
        // Block style counts the same way.
        let mut text = String::from("version: 1\nx:\n");
        for level in 0..limit {
            text.push_str(&format!("{}- \n", "  ".repeat(level)));
            text.pop();
        }
        text.push_str("deep\n");
        let found = problems(&text, &no_files());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].ends_with(&message), "{found:?}");
    }

    fn pipelines_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines")
    }

    fn schema() -> jsonschema::Validator {
        let text = std::fs::read_to_string(pipelines_dir().join("gantry.schema.json")).unwrap();
        let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
        jsonschema::draft202012::new(&schema).unwrap()
    }

    /// Every example pipeline, and the demo, passes both the JSON schema and `load`.
    #[test]
    fn every_example_pipeline_is_valid_against_the_schema_and_the_loader() {
        let schema = schema();
        let mut dirs: Vec<PathBuf> =
            std::fs::read_dir(pipelines_dir().join("examples")).unwrap().map(|entry| entry.unwrap().path()).collect();
        dirs.push(pipelines_dir().join("demo"));
        dirs.sort();
        let names: Vec<String> = dirs.iter().map(|d| d.file_name().unwrap().to_string_lossy().into_owned()).collect();
        for required in ["single-host", "two-host-webapp", "parallel-stages"] {
            assert!(names.iter().any(|n| n == required), "missing example {required}: {names:?}");
        }
        for dir in dirs {
            let path = dir.join(PIPELINE_FILE);
            let text = std::fs::read_to_string(&path).unwrap();
            let instance: serde_json::Value = serde_yaml::from_str(&text).unwrap();
            let errors: Vec<String> =
                schema.iter_errors(&instance).map(|e| format!("{}: {e}", e.instance_path())).collect();
            assert!(errors.is_empty(), "{}: schema errors: {errors:#?}", path.display());
            // Through the loader `gantry run` uses, on the example's directory.
            let source = WorkDirSource { root: dir.clone() };
            if let Err(error) =
                load_file(&path.display().to_string(), PipelineFile::InSource(PIPELINE_FILE), &source, SecretNames::Any)
            {
                panic!("{error}");
            }
        }
    }

    /// The schema is as strict as the loader on the points it can express.
    #[test]
    fn the_schema_refuses_what_the_loader_refuses() {
        let schema = schema();
        let refused = [
            "version: 2\nhosts: {web: }\nstages: [{name: a, host: web, run: x}]",
            "version: 1\nhosts: {web: }\nstages: [{name: a, host: web, run: x, rnu: y}]",
            "version: 1\nhosts: {Web: }\nstages: [{name: a, host: Web, run: x}]",
            "version: 1\nhosts: {web: }\nstages: [{name: 'a:b', host: web, run: x}]",
            "version: 1\nhosts: {web: }\nstages: [{name: a, host: web}]",
            "version: 1\nhosts: {web: }\nstages: [{name: a, host: web, run: x, reports: [/abs.xml]}]",
            "version: 1\nhosts: {web: }\npush: {config: [{template: t, to: web}]}\nstages: [{name: a, host: web, \
                run: x}]",
            "version: 1\nhosts: {web: }\nenv: {GANTRY_X: y}\nstages: [{name: a, host: web, run: x}]",
            "version: 1\nhosts: {web: }\nstages: [{name: a, host: web, run: x, timeout: soon}]",
            "version: 1\nhosts: {}\nstages: [{name: a, host: web, run: x}]",
            "version: 1\nhosts: {web: }\nstages: [{name: a, host: web, run: x}]\non: {pull_requests: sometimes}",
            "version: 1\nhosts: {web: }\nstages: [{name: a, host: web, run: x}]\non: {pull_requests: {target: main}}",
        ];
        for text in refused {
            let instance: serde_json::Value = serde_yaml::from_str(text).unwrap();
            assert!(!schema.is_valid(&instance), "the schema accepts:\n{text}");
            assert!(
                load(".gantry.yml", text, &MemorySource::with_files(&["t"])).is_err(),
                "the loader accepts:\n{text}"
            );
        }
        let accepted = "version: 1\nhosts: {web: }\nstages: [{name: a, host: web, run: x, timeout: 1h 30m, needs: []}]";
        assert!(schema.is_valid(&serde_yaml::from_str(accepted).unwrap()));
        assert!(load(".gantry.yml", accepted, &no_files()).is_ok());
    }
}
