//! The `steps` table: the entries of a build's plan (provision, push, setup, stages, teardown)
//! with their status, exit code and times, as the executor reported them.

use gantry_event::{StepId, StepKind, StepStatus};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::Connection;

use super::builds::{build_columns, build_from_row};
use super::{parse_column, Backend, BuildId, BuildRow, Result, Store};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRow {
    pub build_id: BuildId,
    pub idx: i64,
    pub kind: StepKind,
    pub name: String,
    pub host: String,
    pub status: StepStatus,
    pub exit_code: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl StepRow {
    /// How long the step ran, once it has finished.
    pub fn duration_ms(&self) -> Option<i64> {
        Some(self.finished_at? - self.started_at?)
    }
}

macro_rules! step_columns {
    () => {
        "build_id, idx, kind, name, host, status, exit_code, started_at, finished_at"
    };
}

/// [`cancel_unfinished`]'s statement: `$1` the time, `$2` the build (also a part of
/// `builds::finish`'s one statement on PostgreSQL).
macro_rules! cancel_unfinished_sql {
    () => {
        "UPDATE steps SET status = 'cancelled', finished_at = CASE WHEN started_at IS NULL THEN NULL ELSE $1 END \
         WHERE build_id = $2 AND status IN ('pending', 'running')"
    };
}
pub(super) use cancel_unfinished_sql;

pub(super) fn step_from_row(row: &AnyRow) -> Result<StepRow> {
    Ok(StepRow {
        build_id: BuildId(row.try_get("build_id")?),
        idx: row.try_get("idx")?,
        kind: parse_column("steps.kind", row.try_get("kind")?, StepKind::parse)?,
        name: row.try_get("name")?,
        host: row.try_get("host")?,
        status: parse_column("steps.status", row.try_get("status")?, StepStatus::parse)?,
        exit_code: row.try_get("exit_code")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

/// Record the plan: one pending step per entry, indexed in plan order. Returns the steps' rows
/// and the build's row as it is then (the plan's events show both): on PostgreSQL the insert and
/// the read are one statement.
pub async fn insert_planned(
    conn: &mut Connection,
    build: BuildId,
    steps: &[StepId],
) -> Result<(Vec<StepRow>, Option<BuildRow>)> {
    let backend = Backend::of(conn);
    let mut insert = super::sql::Builder::new(backend, "");
    if backend == Backend::Postgres && !steps.is_empty() {
        insert.push("WITH planned AS (");
    }
    if !steps.is_empty() {
        insert.push("INSERT INTO steps (build_id, idx, kind, name, host, status) ");
        insert.push_values(steps.iter().enumerate(), |row, (idx, step)| {
            row.push_bind(build.0)
                .push_bind(idx as i64)
                .push_bind(step.kind.as_str())
                .push_bind(step.name.as_str())
                .push_bind(step.host.as_str())
                .push_bind(StepStatus::Pending.as_str());
        });
    }
    let row = match backend {
        Backend::Postgres => {
            if !steps.is_empty() {
                insert.push(") ");
            }
            insert.push(concat!("SELECT ", build_columns!(), " FROM builds WHERE id = ")).push_bind(build.0);
            insert.build()?.fetch_optional(&mut *conn).await?
        }
        Backend::Sqlite => {
            if !steps.is_empty() {
                insert.build()?.execute(&mut *conn).await?;
            }
            sqlx::query(concat!("SELECT ", build_columns!(), " FROM builds WHERE id = $1"))
                .bind(build.0)
                .fetch_optional(&mut *conn)
                .await?
        }
    };
    // What was inserted, as it is stored: no step has started.
    let rows = steps
        .iter()
        .enumerate()
        .map(|(idx, step)| StepRow {
            build_id: build,
            idx: idx as i64,
            kind: step.kind,
            name: step.name.clone(),
            host: step.host.clone(),
            status: StepStatus::Pending,
            exit_code: None,
            started_at: None,
            finished_at: None,
        })
        .collect();
    Ok((rows, row.as_ref().map(build_from_row).transpose()?))
}

/// Mark a step running; returns its row.
pub async fn start(conn: &mut Connection, build: BuildId, idx: usize, at: i64) -> Result<Option<StepRow>> {
    let row = sqlx::query(concat!(
        "UPDATE steps SET status = 'running', started_at = $1 WHERE build_id = $2 AND idx = $3 RETURNING ",
        step_columns!()
    ))
    .bind(at)
    .bind(build.0)
    .bind(idx as i64)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(step_from_row).transpose()
}

/// Record a step's end; returns its row (whose start time is its end when it never started).
pub async fn finish(
    conn: &mut Connection,
    build: BuildId,
    idx: usize,
    status: StepStatus,
    exit_code: Option<i32>,
    at: i64,
) -> Result<Option<StepRow>> {
    let row = sqlx::query(concat!(
        "UPDATE steps SET status = $1, exit_code = $2, finished_at = $3, started_at = COALESCE(started_at, $4) \
         WHERE build_id = $5 AND idx = $6 RETURNING ",
        step_columns!()
    ))
    .bind(status.as_str())
    .bind(exit_code)
    .bind(at)
    .bind(at)
    .bind(build.0)
    .bind(idx as i64)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(step_from_row).transpose()
}

/// Steps still pending or running when their build ended become `cancelled`.
pub async fn cancel_unfinished(conn: &mut Connection, build: BuildId, at: i64) -> Result<()> {
    sqlx::query(cancel_unfinished_sql!()).bind(at).bind(build.0).execute(conn).await?;
    Ok(())
}

impl Store {
    /// A build's steps in plan order.
    pub async fn steps(&self, build: BuildId) -> Result<Vec<StepRow>> {
        let rows = sqlx::query(concat!("SELECT ", step_columns!(), " FROM steps WHERE build_id = $1 ORDER BY idx"))
            .bind(build.0)
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(step_from_row).collect()
    }

    /// The steps of a repo's newest `limit` builds (for the repo page's stage grid).
    pub async fn steps_of_recent_builds(&self, repo: &str, limit: u32) -> Result<Vec<StepRow>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            step_columns!(),
            " FROM steps WHERE build_id IN (SELECT id FROM builds WHERE repo = $1 ORDER BY id DESC LIMIT $2) \
             ORDER BY build_id DESC, idx"
        ))
        .bind(repo)
        .bind(i64::from(limit))
        .fetch_all(self.reader())
        .await?;
        rows.iter().map(step_from_row).collect()
    }

    /// The steps of `builds`, ordered like them (then in plan order), for the stage grid of a
    /// history page.
    pub async fn steps_of_builds(&self, builds: &[BuildId]) -> Result<Vec<StepRow>> {
        if builds.is_empty() {
            return Ok(Vec::new());
        }
        let mut query = super::sql::Builder::new(self.backend, concat!("SELECT ", step_columns!(), " FROM steps"));
        query.push(" WHERE build_id IN ").push_list(builds.iter().map(|build| build.0));
        let rows = query.build()?.fetch_all(self.reader()).await?;
        let mut steps = rows.iter().map(step_from_row).collect::<Result<Vec<_>>>()?;
        let position = |id: BuildId| builds.iter().position(|b| *b == id).unwrap_or(usize::MAX);
        steps.sort_by_key(|s| (position(s.build_id), s.idx));
        Ok(steps)
    }

    pub async fn step_by_name(&self, build: BuildId, name: &str) -> Result<Option<StepRow>> {
        let row = sqlx::query(concat!("SELECT ", step_columns!(), " FROM steps WHERE build_id = $1 AND name = $2"))
            .bind(build.0)
            .bind(name)
            .fetch_optional(self.reader())
            .await?;
        row.as_ref().map(step_from_row).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;

    #[tokio::test]
    async fn a_plan_is_recorded_and_updated_in_order() {
        let (store, _dir, build) = testing::store_with_build().await;
        let plan = vec![
            StepId::host_step(StepKind::Provision, "web"),
            StepId { kind: StepKind::Stage, name: "unit".into(), host: "web".into() },
            StepId { kind: StepKind::Stage, name: "lint".into(), host: "web".into() },
        ];
        let mut tx = store.begin().await.unwrap();
        let (planned, row) = insert_planned(&mut tx, build.id, &plan).await.unwrap();
        assert_eq!(row, Some(build.clone()));
        tx.commit().await.unwrap();
        // The rows it returns are the ones stored.
        assert_eq!(planned, store.steps(build.id).await.unwrap());
        assert!(planned.iter().all(|step| step.status == StepStatus::Pending));
        let mut tx = store.begin().await.unwrap();
        start(&mut tx, build.id, 1, 1_000).await.unwrap();
        finish(&mut tx, build.id, 1, StepStatus::Failed, Some(3), 1_250).await.unwrap();
        tx.commit().await.unwrap();

        let steps = store.steps(build.id).await.unwrap();
        assert_eq!(steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["provision:web", "unit", "lint"]);
        assert_eq!(steps[1].status, StepStatus::Failed);
        assert_eq!(steps[1].exit_code, Some(3));
        assert_eq!(steps[1].duration_ms(), Some(250));
        assert_eq!(steps[0].status, StepStatus::Pending);

        store.finish_build(build.id, gantry_event::BuildStatus::Failed, None).await.unwrap();
        let steps = store.steps(build.id).await.unwrap();
        assert_eq!(steps[0].status, StepStatus::Cancelled);
        assert_eq!(steps[1].status, StepStatus::Failed);
        assert_eq!(store.step_by_name(build.id, "lint").await.unwrap().unwrap().idx, 2);
        assert!(store.step_by_name(build.id, "nope").await.unwrap().is_none());
        assert_eq!(store.steps_of_recent_builds("acme", 5).await.unwrap().len(), 3);
        assert_eq!(store.steps_of_builds(&[build.id]).await.unwrap(), steps);
        assert!(store.steps_of_builds(&[BuildId(build.id.0 + 1)]).await.unwrap().is_empty());
    }
}
