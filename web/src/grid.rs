//! The stage grid of a repo page, like Jenkins' stage view: one row per build (newest first),
//! one column per step name seen in those builds, each cell the step's status and duration.
//!
//! This module only arranges steps the server already loaded; it never reads anything itself.
//! Columns keep the order of a build's plan (provision, push, setup, stages, teardown): a step
//! name first seen in an older build is placed after the step that precedes it there, and the
//! kinds never interleave.

use gantry_event::StepKind;

use crate::view::{BuildSummary, StepSummary};

/// A column: one step name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GridColumn {
    pub kind: StepKind,
    pub name: String,
}

impl GridColumn {
    /// The heading: a stage's name, or the role of a provision/push/setup/teardown column (its
    /// kind is shown on the line above).
    pub fn label(&self) -> &str {
        match self.kind {
            StepKind::Stage => &self.name,
            _ => self.name.split_once(':').map(|(_, role)| role).unwrap_or(&self.name),
        }
    }
}

/// A row: one build and, per column, its step of that name if it had one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GridRow {
    pub build: BuildSummary,
    pub cells: Vec<Option<StepSummary>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StageGrid {
    pub columns: Vec<GridColumn>,
    pub rows: Vec<GridRow>,
}

/// Where a kind's columns go, left to right.
fn kind_rank(kind: StepKind) -> u8 {
    match kind {
        StepKind::Provision => 0,
        StepKind::Push => 1,
        StepKind::Setup => 2,
        StepKind::Stage => 3,
        StepKind::Teardown => 4,
    }
}

impl StageGrid {
    /// The grid of `builds`, newest first, each with its steps in plan order.
    pub fn new(builds: Vec<(BuildSummary, Vec<StepSummary>)>) -> StageGrid {
        let mut columns: Vec<GridColumn> = Vec::new();
        for (_, steps) in &builds {
            // Where the next new name of this build goes: after the column of its predecessor.
            let mut cursor = 0;
            for step in steps {
                match columns.iter().position(|c| c.name == step.name) {
                    Some(at) => cursor = at + 1,
                    None => {
                        columns.insert(cursor, GridColumn { kind: step.kind, name: step.name.clone() });
                        cursor += 1;
                    }
                }
            }
        }
        // Stable, so each kind keeps the order found above.
        columns.sort_by_key(|c| kind_rank(c.kind));

        let rows = builds
            .into_iter()
            .map(|(build, steps)| {
                let mut cells: Vec<Option<StepSummary>> = vec![None; columns.len()];
                for step in steps {
                    if let Some(at) = columns.iter().position(|c| c.name == step.name) {
                        cells[at] = Some(step);
                    }
                }
                GridRow { build, cells }
            })
            .collect();
        StageGrid { columns, rows }
    }

    /// The kinds of the columns in order, each with how many columns it spans, for the grid's
    /// upper heading row.
    pub fn kind_spans(&self) -> Vec<(&'static str, usize)> {
        let mut spans: Vec<(&'static str, usize)> = Vec::new();
        for column in &self.columns {
            let kind = column.kind.as_str();
            match spans.last_mut() {
                Some((last, count)) if *last == kind => *count += 1,
                _ => spans.push((kind, 1)),
            }
        }
        spans
    }
}

#[cfg(test)]
mod tests {
    use gantry_event::{BuildStatus, StepStatus};

    use super::*;
    use crate::view::GitRef;

    fn build(number: i64) -> BuildSummary {
        BuildSummary {
            id: number + 100,
            repo: "shop".to_string(),
            number,
            status: BuildStatus::Passed,
            git_ref: GitRef::Branch("main".to_string()),
            commit: "6b1f53303a732ccc8c6aae6640399827c15250e3".to_string(),
            trigger: "push".to_string(),
            created_at_ms: 0,
            started_at_ms: Some(0),
            finished_at_ms: Some(1),
        }
    }

    fn steps(names: &[&str]) -> Vec<StepSummary> {
        names
            .iter()
            .enumerate()
            .map(|(index, name)| {
                let kind = match name.split_once(':') {
                    Some((kind, _)) => StepKind::parse(kind).unwrap(),
                    None => StepKind::Stage,
                };
                let host = name.split_once(':').map(|(_, role)| role).unwrap_or("web").to_string();
                StepSummary {
                    index: index as i64,
                    kind,
                    name: name.to_string(),
                    host,
                    status: StepStatus::Passed,
                    exit_code: Some(0),
                    started_at_ms: Some(0),
                    finished_at_ms: Some(10),
                }
            })
            .collect()
    }

    fn names(grid: &StageGrid) -> Vec<&str> {
        grid.columns.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn columns_are_the_union_in_plan_order() {
        let newest = steps(&["provision:web", "push:web", "setup:web", "migrate", "unit", "teardown:web"]);
        // An older build had a database host and a lint stage between migrate and unit.
        let older = steps(&[
            "provision:db",
            "provision:web",
            "push:db",
            "push:web",
            "setup:db",
            "setup:web",
            "migrate",
            "lint",
            "unit",
            "teardown:db",
            "teardown:web",
        ]);
        let grid = StageGrid::new(vec![(build(2), newest), (build(1), older)]);
        assert_eq!(
            names(&grid),
            [
                "provision:db",
                "provision:web",
                "push:db",
                "push:web",
                "setup:db",
                "setup:web",
                "migrate",
                "lint",
                "unit",
                "teardown:db",
                "teardown:web"
            ]
        );
        assert_eq!(grid.rows.len(), 2);
        let lint = names(&grid).iter().position(|n| *n == "lint").unwrap();
        assert!(grid.rows[0].cells[lint].is_none(), "the newest build had no lint stage");
        assert_eq!(grid.rows[1].cells[lint].as_ref().unwrap().name, "lint");
        assert!(grid.rows[1].cells.iter().all(Option::is_some));
        assert_eq!(grid.rows[0].build.number, 2);
    }

    #[test]
    fn kinds_never_interleave_and_span_their_columns() {
        // A stage seen only in an older build whose plan starts with it.
        let grid = StageGrid::new(vec![
            (build(2), steps(&["provision:web", "unit", "teardown:web"])),
            (build(1), steps(&["e2e", "provision:web"])),
        ]);
        assert_eq!(names(&grid), ["provision:web", "e2e", "unit", "teardown:web"]);
        assert_eq!(grid.kind_spans(), [("provision", 1), ("stage", 2), ("teardown", 1)]);
        assert_eq!(grid.columns[0].label(), "web");
        assert_eq!(grid.columns[1].label(), "e2e");
    }

    #[test]
    fn an_empty_history_has_no_columns() {
        let grid = StageGrid::new(Vec::new());
        assert!(grid.columns.is_empty() && grid.rows.is_empty());
        let grid = StageGrid::new(vec![(build(1), Vec::new())]);
        assert!(grid.columns.is_empty());
        assert_eq!(grid.rows[0].cells.len(), 0);
    }
}
