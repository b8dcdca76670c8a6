//! The `stages:` section: each stage's name, host, script, timeout, environment and report
//! paths, the references of `needs` and the cycles they could form (found by an iterative
//! depth-first search, so a long chain cannot overflow the stack). It checks the graph; running it
//! in `needs` order is the executor's business.

use std::collections::{HashMap, HashSet};

use super::hosts::HostRefs;
use super::names::{check_env, check_secrets, closest, is_stage_name, list, sorted, MAX_NAME_LEN};
use super::values::{check_timeout, normalise_relative};
use super::Report;
use crate::pipeline::raw::{RawStage, StageSlot};
use crate::pipeline::yaml::KeyPath;
use crate::pipeline::Stage;

pub(super) fn check_stages(slots: Vec<StageSlot>, hosts: &HostRefs<'_>, report: &mut Report<'_>) -> Vec<Stage> {
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
        let secrets = check_secrets(raw.secrets.clone(), &path.key("secrets"), report);
        stages.push(Stage { name, host, needs, timeout, env, run, reports, secrets });
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

#[cfg(test)]
mod tests {
    use super::super::testing::*;

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
    fn a_stage_without_name_host_or_run_is_refused() {
        let text = file(&["version: 1", "hosts: {web: , db: }", "stages:", "  - needs: []"]);
        assert_eq!(
            problems(&text, &no_files()),
            ["4:5: this stage has no `name`", "4:5: stage 1 has no `host`", "4:5: stage 1 has nothing to `run`"]
        );
    }
}
