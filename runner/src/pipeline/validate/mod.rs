//! raw → validated [`Pipeline`], collecting every problem as a [`Diagnostic`] with
//! file:line:column and a hint.
//!
//! The steps: refuse an oversized file before parsing; read the YAML with positions (`yaml`); split
//! it into the raw serde types (`raw`); then check meaning here — names, references between hosts,
//! stages and pushes, `needs` cycles, durations, paths (against the [`Source`] the file came from)
//! and branch globs. A check never stops at its first finding: the user sees every problem of the
//! file at once. This module must not touch a host or render a template.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use globset::{GlobBuilder, GlobMatcher};

use super::diagnostic::{Diagnostic, Diagnostics};
use super::raw::{self, EnvMap, RawFile, RawProblem, RawStage, StageSlot};
use super::yaml::{self, KeyPath, Pos, Positions};
use super::{ConfigPush, DataPush, HostDef, Pipeline, Push, Stage, Trigger, DEFAULT_STEP_TIMEOUT, MAX_PIPELINE_BYTES};
use crate::source::{EntryKind, Source};

/// The only `version:` this Gantry reads.
const SUPPORTED_VERSION: &str = "1";

/// The longest `timeout:` a setup step or stage may ask for.
pub const MAX_STEP_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest host role or stage name; both appear in URLs, paths and variable names.
pub const MAX_NAME_LEN: usize = 63;

/// Variables with this prefix are set by Gantry for every step and cannot be set by a pipeline.
const RESERVED_ENV_PREFIX: &str = "GANTRY_";

/// The most names listed in a "did you mean" or "declared: …" hint.
const MAX_NAMES_IN_HINT: usize = 8;

/// Parse and validate a pipeline file given as text. See [`super::load`].
pub(super) fn load(file_name: &str, text: &str, source: &dyn Source) -> Result<Pipeline, Diagnostics> {
    if text.len() > MAX_PIPELINE_BYTES {
        return Err(too_large(file_name, text.len()));
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
    let mut report =
        Report { file: file_name, positions: &document.positions, diagnostics: Vec::new(), misspelled: HashSet::new() };
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

/// Parse and validate a pipeline file given as bytes, as read from a commit or a disk: the size
/// is checked before anything else, and invalid UTF-8 is reported at its line and column.
pub(super) fn load_bytes(file_name: &str, bytes: &[u8], source: &dyn Source) -> Result<Pipeline, Diagnostics> {
    if bytes.len() > MAX_PIPELINE_BYTES {
        return Err(too_large(file_name, bytes.len()));
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => load(file_name, text, source),
        Err(error) => {
            let valid = &bytes[..error.valid_up_to()];
            // The prefix is valid UTF-8 by definition of `valid_up_to`.
            let valid = std::str::from_utf8(valid).unwrap_or_default();
            let line = valid.matches('\n').count() + 1;
            let column = valid.rsplit('\n').next().map_or(0, |last| last.chars().count()) + 1;
            Err(Diagnostics(vec![Diagnostic {
                file: file_name.to_owned(),
                line,
                column,
                message: "the file is not valid UTF-8".to_owned(),
                hint: Some("save the file as UTF-8 text".to_owned()),
            }]))
        }
    }
}

/// Whether a push to `branch` should build. `branch` is a short name (`main`, `release/1.0`); a
/// full `refs/heads/…` ref is accepted too. An empty pattern list matches every branch.
///
/// Patterns are globs where `*` and `?` stay within one `/`-separated segment and `**` crosses
/// segments: `release/*` matches `release/1.0` but not `release/1.0/fix`, `feature/**` matches
/// both `feature/a` and `feature/a/b`, and `*` alone matches `main` but not `user/x`. An invalid
/// pattern (which validation refuses) matches nothing.
pub(super) fn branch_matches(patterns: &[String], branch: &str) -> bool {
    let branch = branch.strip_prefix("refs/heads/").unwrap_or(branch);
    patterns.is_empty() || patterns.iter().any(|pattern| branch_glob(pattern).is_ok_and(|glob| glob.is_match(branch)))
}

fn branch_glob(pattern: &str) -> Result<GlobMatcher, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(true).build().map(|glob| glob.compile_matcher())
}

fn too_large(file_name: &str, len: usize) -> Diagnostics {
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
    let root = KeyPath::root();
    if !(raw.version.is_none() && report.misspelled.contains("version")) {
        check_version(raw.version.as_deref(), report);
    }

    // Hosts, first: every other section refers to them.
    let hosts_path = root.key("hosts");
    if raw.hosts.is_empty() && !report.misspelled.contains("hosts") {
        report.key(
            &hosts_path,
            "the pipeline declares no hosts",
            Some("declare at least one host under `hosts:`, e.g. `hosts: { web: {} }`".to_owned()),
        );
    }
    let roles: Vec<String> = raw.hosts.iter().map(|(role, _)| role.clone()).collect();
    let mut hosts = Vec::new();
    for (role, host) in raw.hosts {
        let path = hosts_path.key(&role);
        if !is_role(&role) {
            report.key(
                &path,
                &format!("invalid host role `{role}`"),
                Some(format!(
                    "a role is lowercase letters, digits and `-`, starts with a letter or digit, and has at most \
                        {MAX_NAME_LEN} characters (e.g. `db`, `web-1`)"
                )),
            );
        }
        let setup_timeout = check_timeout(host.timeout.as_deref(), &path.key("timeout"), report);
        let setup = host.setup.map(|script| script.0).filter(|script| !script.trim().is_empty());
        hosts.push(HostDef { role, image: host.image, size: host.size, setup, setup_timeout });
    }
    let hosts_ref = HostRefs { roles: &roles };

    let push = check_push(raw.push, &hosts_ref, source, report);
    let env = check_env(raw.env, &root.key("env"), report);
    let stages = check_stages(raw.stages, &hosts_ref, report);
    let on = check_on(raw.on, report);
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

/// The declared host roles, to check references against.
struct HostRefs<'a> {
    roles: &'a [String],
}

impl HostRefs<'_> {
    /// Report `role` (written at `path`, in the field `field`) when no host declares it.
    fn check(&self, role: &str, path: &KeyPath, field: &str, report: &mut Report<'_>) -> bool {
        if self.roles.iter().any(|r| r == role) {
            return true;
        }
        let hint = match closest(role, self.roles.iter().map(String::as_str)) {
            Some(suggestion) => format!("did you mean `{suggestion}`? Or declare `{role}` under `hosts:`"),
            None if self.roles.is_empty() => format!("declare `{role}` under `hosts:`"),
            None => {
                format!("declare `{role}` under `hosts:` (declared: {})", list(self.roles.iter().map(String::as_str)))
            }
        };
        report.value(path, &format!("{field} names host `{role}`, which is not declared"), Some(hint));
        false
    }
}

fn check_push(raw: Option<raw::RawPush>, hosts: &HostRefs<'_>, source: &dyn Source, report: &mut Report<'_>) -> Push {
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
        if let (Some(template), Some((host, target_path))) = (template, target) {
            if !targets.insert((host.clone(), target_path.clone())) {
                report.value(
                    &entry.key("to"),
                    &format!("`{host}:{target_path}` is already the target of another config push"),
                    Some("each rendered file needs its own path".to_owned()),
                );
            }
            push.config.push(ConfigPush { template, host, path: target_path });
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

fn check_env(env: Option<EnvMap>, path: &KeyPath, report: &mut Report<'_>) -> BTreeMap<String, String> {
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

fn check_stages(slots: Vec<StageSlot>, hosts: &HostRefs<'_>, report: &mut Report<'_>) -> Vec<Stage> {
    let stages_path = KeyPath::root().key("stages");
    if slots.is_empty() && !report.misspelled.contains("stages") {
        report.key(
            &stages_path,
            "the pipeline has no stages",
            Some("add at least one stage under `stages:`, with `name`, `host` and `run`".to_owned()),
        );
    }
    // Every name written, broken stages included, so a `needs` naming a broken stage is not
    // reported twice. The first stage of a name is the one `needs` refers to.
    let mut first_of_name: HashMap<String, usize> = HashMap::new();
    for (i, slot) in slots.iter().enumerate() {
        let name = match slot {
            StageSlot::Parsed(RawStage { name: Some(name), .. }) | StageSlot::Broken { name: Some(name) } => name,
            _ => continue,
        };
        if let Some(&first) = first_of_name.get(name) {
            let first_line = report.positions.value(&stages_path.index(first).key("name")).line;
            report.value(
                &stages_path.index(i).key("name"),
                &format!("duplicate stage name `{name}`"),
                Some(format!(
                    "a stage named `{name}` is already defined at line {first_line}; stage names must be unique"
                )),
            );
        } else {
            first_of_name.insert(name.clone(), i);
        }
    }
    let names: Vec<&str> = first_of_name.keys().map(String::as_str).collect();

    let mut stages = Vec::new();
    // For the cycle check: stage index → (needed stage index, index in `needs`).
    let mut edges: Vec<Vec<(usize, usize)>> = vec![Vec::new(); slots.len()];
    for (i, slot) in slots.iter().enumerate() {
        let StageSlot::Parsed(raw) = slot else { continue };
        let path = stages_path.index(i);
        let name = match &raw.name {
            Some(name) => {
                if !is_stage_name(name) {
                    report.value(
                        &path.key("name"),
                        &format!("invalid stage name `{name}`"),
                        Some(format!(
                            "a stage name is letters, digits, `_`, `.` and `-`, with at most {MAX_NAME_LEN} \
                             characters (it appears in URLs)"
                        )),
                    );
                }
                name.clone()
            }
            None => {
                report.value(
                    &path,
                    "this stage has no `name`",
                    Some("add `name:`, unique in the file (letters, digits, `_`, `.`, `-`)".to_owned()),
                );
                String::new()
            }
        };
        let label = if name.is_empty() { format!("stage {}", i + 1) } else { format!("stage `{name}`") };
        let host = match &raw.host {
            Some(host) => {
                hosts.check(host, &path.key("host"), &label, report);
                host.clone()
            }
            None => {
                let hint = match hosts.roles {
                    [only] => format!("add `host: {only}`"),
                    roles => format!(
                        "add `host:` with one of the declared hosts: {}",
                        list(roles.iter().map(String::as_str))
                    ),
                };
                report.value(&path, &format!("{label} has no `host`"), Some(hint));
                String::new()
            }
        };
        let run = raw.run.as_ref().map(|script| script.0.clone()).unwrap_or_default();
        if run.trim().is_empty() {
            report.value(
                &path,
                &format!("{label} has nothing to `run`"),
                Some("add `run:` with the shell commands of the stage".to_owned()),
            );
        }
        let timeout = check_timeout(raw.timeout.as_deref(), &path.key("timeout"), report);
        let env = check_env(raw.env.clone(), &path.key("env"), report);

        let mut reports = Vec::new();
        for (j, written) in raw.reports.iter().flat_map(|names| names.0.iter()).enumerate() {
            match normalise_relative(written) {
                Ok(normalised) => reports.push(normalised),
                Err(problem) => report.value(
                    &path.key("reports").index(j),
                    &problem.message(written),
                    Some(problem.hint("stage's working directory")),
                ),
            }
        }

        let mut needs = Vec::new();
        for (j, needed) in raw.needs.iter().flat_map(|names| names.0.iter()).enumerate() {
            match first_of_name.get(needed) {
                Some(&target) => {
                    edges[i].push((target, j));
                    if !needs.contains(needed) {
                        needs.push(needed.clone());
                    }
                }
                None => {
                    let hint = match closest(needed, names.iter().copied()) {
                        Some(suggestion) => format!("did you mean `{suggestion}`?"),
                        None => format!("`needs` lists stages of this file (stages: {})", list(sorted(&names))),
                    };
                    report.value(
                        &path.key("needs").index(j),
                        &format!("{label} needs `{needed}`, which is not a stage"),
                        Some(hint),
                    );
                }
            }
        }
        stages.push(Stage { name, host, needs, timeout, env, run, reports });
    }

    let stage_name = |i: usize| match &slots[i] {
        StageSlot::Parsed(RawStage { name: Some(name), .. }) => name.clone(),
        _ => format!("stage {}", i + 1),
    };
    for cycle in find_cycles(&edges) {
        let chain: Vec<String> = cycle.members.iter().chain(cycle.members.first()).map(|&i| stage_name(i)).collect();
        report.value(
            &stages_path.index(cycle.closing_stage).key("needs").index(cycle.closing_need),
            &format!("`needs` forms a cycle: {}", chain.join(" → ")),
            Some("the stages of a cycle can never start: remove one of these `needs`".to_owned()),
        );
    }
    stages
}

/// A cycle of `needs`: each member needs the next, the last needs the first.
#[derive(Debug, PartialEq, Eq)]
struct Cycle {
    /// Stage indexes, starting with the earliest in the file.
    members: Vec<usize>,
    /// The `needs` entry (stage index, index in its `needs`) that closes the cycle, where it is
    /// reported.
    closing_stage: usize,
    closing_need: usize,
}

/// Every distinct cycle of the `needs` graph (`edges[stage]` = (needed stage, index in `needs`)),
/// found by a depth-first search. Iterative, so a long chain of stages cannot overflow the stack.
fn find_cycles(edges: &[Vec<(usize, usize)>]) -> Vec<Cycle> {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum State {
        New,
        OnPath,
        Done,
    }
    let mut state = vec![State::New; edges.len()];
    let mut seen: HashSet<Vec<usize>> = HashSet::new();
    let mut cycles = Vec::new();
    for start in 0..edges.len() {
        if state[start] != State::New {
            continue;
        }
        // The current path: (stage, how many of its edges were followed).
        let mut path = vec![(start, 0)];
        state[start] = State::OnPath;
        while let Some(&(node, followed)) = path.last() {
            let Some(&(target, need)) = edges[node].get(followed) else {
                state[node] = State::Done;
                path.pop();
                continue;
            };
            if let Some(top) = path.last_mut() {
                top.1 += 1;
            }
            match state[target] {
                State::New => {
                    state[target] = State::OnPath;
                    path.push((target, 0));
                }
                State::OnPath => {
                    // The path from `target` to `node` plus this edge is a cycle, in `needs` order.
                    let from = path.iter().position(|&(n, _)| n == target).unwrap_or(0);
                    let mut members: Vec<usize> = path[from..].iter().map(|&(n, _)| n).collect();
                    let earliest = members.iter().enumerate().min_by_key(|&(_, &m)| m).map_or(0, |(k, _)| k);
                    members.rotate_left(earliest);
                    let mut key = members.clone();
                    key.sort_unstable();
                    if seen.insert(key) {
                        cycles.push(Cycle { members, closing_stage: node, closing_need: need });
                    }
                }
                State::Done => {}
            }
        }
    }
    cycles
}

fn check_on(on: Option<raw::RawOn>, report: &mut Report<'_>) -> Trigger {
    let path = KeyPath::root().key("on").key("branches");
    let mut trigger = Trigger::default();
    for (i, pattern) in on.and_then(|on| on.branches).map(|names| names.0).unwrap_or_default().into_iter().enumerate() {
        match branch_glob(&pattern) {
            Ok(_) => trigger.branches.push(pattern),
            Err(error) => report.value(
                &path.index(i),
                &format!("invalid branch pattern `{pattern}`: {}", error.kind()),
                Some(
                    "patterns use `*` and `?` within one segment, `**` across `/`, and `[abc]`; quote patterns that \
                    start with `*`"
                        .to_owned(),
                ),
            ),
        }
    }
    trigger
}

/// Parse an optional `timeout:`; the default when absent or invalid (invalid is reported).
fn check_timeout(written: Option<&str>, path: &KeyPath, report: &mut Report<'_>) -> Duration {
    let Some(written) = written else { return DEFAULT_STEP_TIMEOUT };
    let max = humantime::format_duration(MAX_STEP_TIMEOUT);
    match humantime::parse_duration(written) {
        Ok(duration) if duration.is_zero() => {
            report.value(
                path,
                "a timeout must be longer than zero",
                Some("write a duration such as `90s` or `10m`".to_owned()),
            );
            DEFAULT_STEP_TIMEOUT
        }
        Ok(duration) if duration > MAX_STEP_TIMEOUT => {
            report.value(
                path,
                &format!("timeout `{written}` is longer than the limit of {max}"),
                Some(format!("write at most `{max}`")),
            );
            DEFAULT_STEP_TIMEOUT
        }
        Ok(duration) => duration,
        Err(error) => {
            let hint = if written.trim().chars().all(|c| c.is_ascii_digit()) {
                format!("add a unit: `{}s` for seconds, `{}m` for minutes", written.trim(), written.trim())
            } else {
                "write a duration such as `90s`, `10m` or `1h 30m`".to_owned()
            };
            report.value(path, &format!("invalid timeout `{written}`: {error}"), Some(hint));
            DEFAULT_STEP_TIMEOUT
        }
    }
}

/// Why a relative path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathProblem {
    Empty,
    Absolute,
    Home,
    Escapes,
}

impl PathProblem {
    fn message(self, written: &str) -> String {
        match self {
            PathProblem::Empty => "the path is empty".to_owned(),
            PathProblem::Absolute => format!("`{written}` is an absolute path"),
            PathProblem::Home => format!("`{written}` starts with `~`"),
            PathProblem::Escapes => format!("`{written}` leaves its directory with `..`"),
        }
    }

    /// `base` says what the path is relative to ("repository root", "host's home", …).
    fn hint(self, base: &str) -> String {
        match self {
            PathProblem::Empty => format!("write a path relative to the {base}"),
            PathProblem::Absolute | PathProblem::Home => {
                format!("paths here are relative to the {base}: drop the leading `/` or `~/`")
            }
            PathProblem::Escapes => format!("paths must stay inside the {base}: remove the `..`"),
        }
    }
}

/// `./a//b/` → `a/b`; refuses empty, absolute, `~` and `..` paths.
fn normalise_relative(written: &str) -> Result<String, PathProblem> {
    if written.starts_with('/') {
        return Err(PathProblem::Absolute);
    }
    if written.starts_with('~') {
        return Err(PathProblem::Home);
    }
    let parts: Vec<&str> = written.split('/').filter(|part| !part.is_empty() && *part != ".").collect();
    if parts.contains(&"..") {
        return Err(PathProblem::Escapes);
    }
    if parts.is_empty() {
        return Err(PathProblem::Empty);
    }
    Ok(parts.join("/"))
}

/// `[a-z0-9][a-z0-9-]*`, at most [`MAX_NAME_LEN`] characters.
fn is_role(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_NAME_LEN
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `[A-Za-z0-9_.-]+`, at most [`MAX_NAME_LEN`] characters; `.` and `..` alone are refused since
/// stage names appear in URL paths.
fn is_stage_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The candidate closest to `written`, when close enough to be a likely typo.
fn closest<'a>(written: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let allowed = (written.chars().count() / 3).max(1);
    candidates
        .filter(|candidate| *candidate != written)
        .map(|candidate| (strsim::damerau_levenshtein(written, candidate), candidate))
        .filter(|(distance, _)| *distance <= allowed)
        .min()
        .map(|(_, candidate)| candidate)
}

fn sorted<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let mut names = names.to_vec();
    names.sort_unstable();
    names
}

/// `a`, `b`, `c` (and N more).
fn list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    let mut text = names.iter().take(MAX_NAMES_IN_HINT).map(|name| format!("`{name}`")).collect::<Vec<_>>().join(", ");
    if names.len() > MAX_NAMES_IN_HINT {
        text.push_str(&format!(" and {} more", names.len() - MAX_NAMES_IN_HINT));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::pipeline::{load, load_bytes};
    use crate::source::SourceError;

    /// A source held in memory: repository-relative path → contents. Directories are implied by
    /// the paths of their files.
    struct MemorySource(BTreeMap<String, Vec<u8>>);

    impl MemorySource {
        fn with_files(paths: &[&str]) -> MemorySource {
            MemorySource(paths.iter().map(|path| ((*path).to_owned(), b"content\n".to_vec())).collect())
        }

        /// Every file under `root`, `.git` excepted.
        fn from_dir(root: &Path) -> MemorySource {
            fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<String, Vec<u8>>) {
                for entry in std::fs::read_dir(dir).unwrap() {
                    let path = entry.unwrap().path();
                    if path.file_name().is_some_and(|name| name == ".git") {
                        continue;
                    }
                    if path.is_dir() {
                        walk(root, &path, files);
                    } else {
                        let relative = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
                        files.insert(relative, std::fs::read(&path).unwrap());
                    }
                }
            }
            let mut files = BTreeMap::new();
            walk(root, root, &mut files);
            MemorySource(files)
        }
    }

    impl Source for MemorySource {
        fn describe(&self) -> String {
            "test@0123456".to_owned()
        }

        fn kind(&self, path: &str) -> Result<Option<EntryKind>, SourceError> {
            if self.0.contains_key(path) {
                return Ok(Some(EntryKind::File));
            }
            let prefix = format!("{path}/");
            Ok(self.0.keys().any(|key| key.starts_with(&prefix)).then_some(EntryKind::Dir))
        }

        fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, SourceError> {
            Ok(self.0.get(path).cloned())
        }

        fn archive(&self, path: &str, prefix: &str, out: &mut dyn Write) -> Result<(), SourceError> {
            let io = |source| SourceError::Io { path: PathBuf::from(path), source };
            let base = path.rsplit('/').next().unwrap_or(path);
            let mut builder = tar::Builder::new(out);
            for (name, contents) in &self.0 {
                let entry = if path.is_empty() {
                    name.clone()
                } else if name == path {
                    base.to_owned()
                } else if let Some(rest) = name.strip_prefix(&format!("{path}/")) {
                    format!("{base}/{rest}")
                } else {
                    continue;
                };
                let mut header = tar::Header::new_gnu();
                header.set_size(contents.len() as u64);
                header.set_mode(0o644);
                header.set_cksum();
                builder.append_data(&mut header, format!("{prefix}/{entry}"), contents.as_slice()).map_err(io)?;
            }
            builder.finish().map_err(io)
        }
    }

    /// The lines joined with `\n`: line `n` of the file is `lines[n - 1]`.
    fn file(lines: &[&str]) -> String {
        let mut text = lines.join("\n");
        text.push('\n');
        text
    }

    /// The diagnostics of `text` as `line:column: message`, in order.
    fn problems(text: &str, source: &MemorySource) -> Vec<String> {
        let diagnostics = load(".gantry.yml", text, source).expect_err("the file should be refused");
        diagnostics.0.iter().map(|d| format!("{}:{}: {}", d.line, d.column, d.message)).collect()
    }

    /// The hint of the only diagnostic of `text`.
    fn only_hint(text: &str, source: &MemorySource) -> String {
        let diagnostics = load(".gantry.yml", text, source).expect_err("the file should be refused");
        assert_eq!(diagnostics.0.len(), 1, "{diagnostics}");
        diagnostics.0[0].hint.clone().unwrap_or_default()
    }

    fn no_files() -> MemorySource {
        MemorySource::with_files(&[])
    }

    /// A valid file of one host and one stage, to which a test appends its own lines.
    const MINIMAL: &[&str] =
        &["version: 1", "hosts:", "  web:", "stages:", "  - name: unit", "    host: web", "    run: make test"];

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
        assert_eq!(pipeline.on.branches, ["main", "release/*"]);
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
    fn a_stage_on_an_undeclared_host_is_refused() {
        let mut text = MINIMAL.to_vec();
        text[5] = "    host: database";
        assert_eq!(
            problems(&file(&text), &no_files()),
            ["6:11: stage `unit` names host `database`, which is not declared"]
        );
        assert_eq!(only_hint(&file(&text), &no_files()), "declare `database` under `hosts:` (declared: `web`)");
    }

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
    fn needs_naming_an_unknown_stage_is_refused_with_a_suggestion() {
        let mut text = MINIMAL.to_vec();
        text.extend(["  - name: deploy", "    host: web", "    needs: [unit, units, smoke]", "    run: make deploy"]);
        assert_eq!(
            problems(&file(&text), &no_files()),
            [
                "10:19: stage `deploy` needs `units`, which is not a stage",
                "10:26: stage `deploy` needs `smoke`, which is not a stage"
            ]
        );
        let diagnostics = load(".gantry.yml", &file(&text), &no_files()).unwrap_err();
        assert_eq!(diagnostics.0[0].hint.as_deref(), Some("did you mean `unit`?"));
        assert_eq!(
            diagnostics.0[1].hint.as_deref(),
            Some("`needs` lists stages of this file (stages: `deploy`, `unit`)")
        );
    }

    #[test]
    fn a_cycle_in_needs_is_named() {
        let text = file(&[
            "version: 1",
            "hosts: {web: }",
            "stages:",
            "  - {name: a, host: web, needs: [c], run: x}",
            "  - {name: b, host: web, needs: [a], run: x}",
            "  - {name: c, host: web, needs: [b], run: x}",
            "  - {name: self, host: web, needs: self, run: x}",
            "  - {name: free, host: web, needs: [a], run: x}",
        ]);
        assert_eq!(
            problems(&text, &no_files()),
            ["5:34: `needs` forms a cycle: a → c → b → a", "7:36: `needs` forms a cycle: self → self"]
        );
    }

    #[test]
    fn duplicate_stage_names_are_refused() {
        let mut text = MINIMAL.to_vec();
        text.extend(["  - name: unit", "    host: web", "    run: make other"]);
        assert_eq!(problems(&file(&text), &no_files()), ["8:11: duplicate stage name `unit`"]);
        assert_eq!(
            only_hint(&file(&text), &no_files()),
            "a stage named `unit` is already defined at line 5; stage names must be unique"
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

    #[test]
    fn invalid_timeouts_are_refused() {
        let text = file(&[
            "version: 1",
            "hosts:",
            "  web: {timeout: soon}",
            "stages:",
            "  - {name: a, host: web, run: x, timeout: 0s}",
            "  - {name: b, host: web, run: x, timeout: 2d}",
            "  - {name: c, host: web, run: x, timeout: 1h 30m}",
        ]);
        assert_eq!(
            problems(&text, &no_files()),
            [
                "3:18: invalid timeout `soon`: expected number at 0",
                "5:43: a timeout must be longer than zero",
                "6:43: timeout `2d` is longer than the limit of 1day",
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

    #[test]
    fn report_paths_must_stay_relative() {
        let mut text = MINIMAL.to_vec();
        text.push("    reports: [ok.xml, /tmp/x.xml, ../x.xml, '~/x.xml']");
        assert_eq!(
            problems(&file(&text), &no_files()),
            [
                "8:23: `/tmp/x.xml` is an absolute path",
                "8:35: `../x.xml` leaves its directory with `..`",
                "8:45: `~/x.xml` starts with `~`",
            ]
        );
    }

    #[test]
    fn invalid_branch_globs_are_refused() {
        let mut text = MINIMAL.to_vec();
        text.extend(["on:", "  branches: [main, 'release/[1-', '{a,b']"]);
        let found = problems(&file(&text), &no_files());
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("9:20: invalid branch pattern `release/[1-`: "), "{found:?}");
        assert!(found[1].starts_with("9:35: invalid branch pattern `{a,b`: "), "{found:?}");
    }

    #[test]
    fn a_stage_without_name_host_or_run_is_refused() {
        let text = file(&["version: 1", "hosts: {web: , db: }", "stages:", "  - needs: []"]);
        assert_eq!(
            problems(&text, &no_files()),
            ["4:5: this stage has no `name`", "4:5: stage 1 has no `host`", "4:5: stage 1 has nothing to `run`"]
        );
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
        let diagnostics = load_bytes(".gantry.yml", text.as_bytes(), &no_files()).unwrap_err();
        assert!(diagnostics.0[0].message.contains("limited to"));
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

    #[test]
    fn invalid_utf8_is_located() {
        let mut bytes = b"version: 1\nhosts:\n  w".to_vec();
        bytes.extend([0xff, b'\n']);
        let diagnostics = load_bytes("ci.yml", &bytes, &no_files()).unwrap_err();
        assert_eq!(
            diagnostics.to_string(),
            "ci.yml:3:4: error: the file is not valid UTF-8\n  hint: save the file as UTF-8 text"
        );
    }

    #[test]
    fn branch_patterns_match_what_users_expect() {
        let patterns = |list: &[&str]| list.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>();
        assert!(branch_matches(&[], "anything/at/all"), "no patterns: every branch");
        let release = patterns(&["main", "release/*"]);
        assert!(branch_matches(&release, "main"));
        assert!(branch_matches(&release, "refs/heads/main"));
        assert!(branch_matches(&release, "release/1.0"));
        assert!(!branch_matches(&release, "release/1.0/hotfix"), "`*` stays within one segment");
        assert!(!branch_matches(&release, "mainline"));
        let deep = patterns(&["feature/**"]);
        assert!(branch_matches(&deep, "feature/a") && branch_matches(&deep, "feature/a/b"));
        assert!(!branch_matches(&patterns(&["*"]), "user/x"));
        assert!(!branch_matches(&patterns(&["release/[1-"]), "release/[1-"), "an invalid pattern matches nothing");
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
            let path = dir.join(PIPELINE_FILE_NAME);
            let text = std::fs::read_to_string(&path).unwrap();
            let instance: serde_json::Value = serde_yaml::from_str(&text).unwrap();
            let errors: Vec<String> =
                schema.iter_errors(&instance).map(|e| format!("{}: {e}", e.instance_path())).collect();
            assert!(errors.is_empty(), "{}: schema errors: {errors:#?}", path.display());
            let source = MemorySource::from_dir(&dir);
            if let Err(diagnostics) = load_bytes(&path.display().to_string(), text.as_bytes(), &source) {
                panic!("{diagnostics}");
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

    use crate::pipeline::PIPELINE_FILE as PIPELINE_FILE_NAME;
}
