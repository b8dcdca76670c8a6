//! A build's event sequence: the numbers the live stream (`GET /api/builds/{id}/events`) uses as
//! event ids, and the events other than log lines (`build_events`), stored as the JSON the stream
//! sends.
//!
//! Every event of a build takes the next number of the build's sequence (`builds.event_seq` holds
//! the last one handed out) in the same transaction that stores it, so what a reader finds here is
//! exactly what was broadcast, in order. A resuming client reads the events after its last id with
//! [`Store::events_after`]; a new one starts from [`Store::event_snapshot`], the build's state at
//! one event id, read in one transaction. What the JSON says is not this module's business.

use gantry_event::BuildStatus;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::notify::Notice;
use super::sql::Builder;
use super::{Backend, Connection};

use super::builds::build_from_row;
use super::hosts::host_from_row;
use super::logs::{line_from_row, LINES_AFTER_SEQ};
use super::reports::ReportRow;
use super::steps::step_from_row;
use super::{parse_column, BuildId, BuildRow, HostRow, LogLine, Result, StepRow, Store};

/// What an event other than a log line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Build,
    Step,
    Host,
    Report,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Build => "build",
            EventKind::Step => "step",
            EventKind::Host => "host",
            EventKind::Report => "report",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        [EventKind::Build, EventKind::Step, EventKind::Host, EventKind::Report].into_iter().find(|k| k.as_str() == s)
    }
}

/// A stored event other than a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub seq: i64,
    pub kind: EventKind,
    /// The event's JSON.
    pub data: String,
}

/// One event of a build as stored: a log line or another event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredEvent {
    Log(LogLine),
    Other(EventRow),
}

impl StoredEvent {
    pub fn seq(&self) -> i64 {
        match self {
            StoredEvent::Log(line) => line.seq,
            StoredEvent::Other(event) => event.seq,
        }
    }
}

/// A build's state as of one event id, read in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub build: BuildRow,
    /// The last event id handed out for the build (0: none yet).
    pub event_seq: i64,
    pub steps: Vec<StepRow>,
    pub hosts: Vec<HostRow>,
    pub reports: Vec<ReportRow>,
}

fn event_from_row(row: &AnyRow) -> Result<EventRow> {
    Ok(EventRow {
        seq: row.try_get("seq")?,
        kind: parse_column("build_events.kind", row.try_get("kind")?, EventKind::parse)?,
        data: row.try_get("data")?,
    })
}

impl Store {
    /// The last event id handed out for `build` (0 before any), read outside a transaction: only
    /// the build's persister writes it.
    pub async fn last_event_seq(&self, build: BuildId) -> Result<i64> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT event_seq FROM builds WHERE id = $1")
            .bind(build.0)
            .fetch_optional(self.writer())
            .await?;
        Ok(seq.unwrap_or(0))
    }
}

/// Record that event ids up to `seq` are handed out for `build`.
///
/// With a `notice`, the other servers sharing a PostgreSQL database are told by the same statement
/// (one round trip instead of two): PostgreSQL delivers a notification sent in a transaction when
/// it commits, and never if it rolls back. SQLite has no other servers.
pub async fn set_last_seq(conn: &mut Connection, build: BuildId, seq: i64, notice: Option<&Notice>) -> Result<()> {
    let notice = notice.filter(|_| Backend::of(conn) == Backend::Postgres).map(Notice::channel_and_payload);
    let sql = match notice {
        Some(_) => "UPDATE builds SET event_seq = $1 WHERE id = $2 RETURNING pg_notify($3, $4)",
        None => "UPDATE builds SET event_seq = $1 WHERE id = $2",
    };
    let mut query = sqlx::query(sql).bind(seq).bind(build.0);
    if let Some((channel, payload)) = notice {
        query = query.bind(channel).bind(payload);
    }
    query.execute(conn).await?;
    Ok(())
}

/// Store events other than log lines.
pub async fn insert(conn: &mut Connection, build: BuildId, events: &[EventRow]) -> Result<()> {
    // One statement per batch (a round trip each on PostgreSQL), of at most a fixed number of
    // rows so that few statements are prepared.
    let backend = Backend::of(conn);
    for chunk in events.chunks(EVENT_INSERT_ROWS) {
        let mut insert = Builder::new(backend, "INSERT INTO build_events (build_id, seq, kind, data) ");
        insert.push_values(chunk, |row, event| {
            row.push_bind(build.0).push_bind(event.seq).push_bind(event.kind.as_str()).push_bind(event.data.clone());
        });
        insert.build()?.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Rows of one `INSERT` of events at most.
const EVENT_INSERT_ROWS: usize = 32;

/// A build's row as the open transaction sees it.
pub async fn build(conn: &mut Connection, build: BuildId) -> Result<Option<BuildRow>> {
    let row = sqlx::query("SELECT * FROM builds WHERE id = $1").bind(build.0).fetch_optional(conn).await?;
    row.as_ref().map(build_from_row).transpose()
}

impl Store {
    /// The build's status and its last event id (a cheap look for a quiet stream); `None` when
    /// there is no such build.
    pub async fn event_head(&self, id: BuildId) -> Result<Option<(BuildStatus, i64)>> {
        let Some(row) = sqlx::query("SELECT status, event_seq FROM builds WHERE id = $1")
            .bind(id.0)
            .fetch_optional(self.reader())
            .await?
        else {
            return Ok(None);
        };
        let status = parse_column("builds.status", row.try_get("status")?, BuildStatus::parse)?;
        Ok(Some((status, row.try_get("event_seq")?)))
    }

    /// The build's state and the last event id it includes, all read in one transaction (so no
    /// event is half in it). `None` when there is no such build.
    pub async fn event_snapshot(&self, id: BuildId) -> Result<Option<Snapshot>> {
        let mut tx = self.reader().begin().await?;
        let Some(row) = sqlx::query("SELECT * FROM builds WHERE id = $1").bind(id.0).fetch_optional(&mut *tx).await?
        else {
            return Ok(None);
        };
        let build = build_from_row(&row)?;
        let event_seq: i64 = row.try_get("event_seq")?;
        let steps = sqlx::query("SELECT * FROM steps WHERE build_id = $1 ORDER BY idx")
            .bind(id.0)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(step_from_row)
            .collect::<Result<_>>()?;
        let hosts = sqlx::query("SELECT * FROM hosts WHERE build_id = $1 ORDER BY id")
            .bind(id.0)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(host_from_row)
            .collect::<Result<_>>()?;
        let reports =
            sqlx::query("SELECT step_idx, path, content FROM reports WHERE build_id = $1 ORDER BY step_idx, path")
                .bind(id.0)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| {
                    Ok(ReportRow {
                        step_idx: r.try_get("step_idx")?,
                        path: r.try_get("path")?,
                        content: r.try_get("content")?,
                    })
                })
                .collect::<Result<_>>()?;
        tx.commit().await?;
        Ok(Some(Snapshot { build, event_seq, steps, hosts, reports }))
    }

    /// At most `limit` of the build's events whose id is after `after`, in order: log lines and
    /// the other events merged by id.
    pub async fn events_after(&self, build: BuildId, after: i64, limit: u32) -> Result<Vec<StoredEvent>> {
        let mut tx = self.reader().begin().await?;
        let lines =
            sqlx::query(LINES_AFTER_SEQ).bind(build.0).bind(after).bind(i64::from(limit)).fetch_all(&mut *tx).await?;
        let others = sqlx::query(
            "SELECT seq, kind, data FROM build_events WHERE build_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(build.0)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut lines = lines.iter().map(line_from_row).peekable();
        let mut others = others.iter().map(event_from_row).peekable();
        let mut merged = Vec::with_capacity(limit.min(lines.len() as u32 + others.len() as u32) as usize);
        while merged.len() < limit as usize {
            let take_line = match (lines.peek(), others.peek()) {
                (Some(Ok(line)), Some(Ok(other))) => line.seq < other.seq,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
                // An error is taken (and returned) from whichever side has it.
                (Some(Err(_)), _) => true,
                (_, Some(Err(_))) => false,
            };
            merged.push(if take_line {
                StoredEvent::Log(lines.next().expect("peeked")?)
            } else {
                StoredEvent::Other(others.next().expect("peeked")?)
            });
        }
        Ok(merged)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;

    #[tokio::test]
    async fn events_merge_with_log_lines_by_id_and_the_snapshot_names_the_last_id() {
        let (store, _dir, build) = testing::store_with_build().await;
        let lines = super::super::logs::tests::two_step_lines(6);
        // Ids 1..=6 are lines; 7 and 9 are other events; 8 is a line again.
        let mut later = lines[5].clone();
        later.seq = 8;
        later.line = 4;
        let others = vec![
            EventRow { seq: 7, kind: EventKind::Step, data: "{\"index\":0}".into() },
            EventRow { seq: 9, kind: EventKind::Build, data: "{\"status\":\"running\"}".into() },
        ];
        let mut tx = store.begin().await.unwrap();
        super::super::logs::insert_lines(&mut tx, build.id, &lines).await.unwrap();
        super::super::logs::insert_lines(&mut tx, build.id, std::slice::from_ref(&later)).await.unwrap();
        insert(&mut tx, build.id, &others).await.unwrap();
        set_last_seq(&mut tx, build.id, 9, None).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(store.last_event_seq(build.id).await.unwrap(), 9);

        let all = store.events_after(build.id, 0, 100).await.unwrap();
        assert_eq!(all.iter().map(StoredEvent::seq).collect::<Vec<_>>(), (1..=9).collect::<Vec<_>>());
        assert!(matches!(&all[6], StoredEvent::Other(e) if e.kind == EventKind::Step));
        let page = store.events_after(build.id, 5, 3).await.unwrap();
        assert_eq!(page.iter().map(StoredEvent::seq).collect::<Vec<_>>(), [6, 7, 8]);
        assert!(store.events_after(build.id, 9, 100).await.unwrap().is_empty());

        let snapshot = store.event_snapshot(build.id).await.unwrap().unwrap();
        assert_eq!(snapshot.event_seq, 9);
        assert_eq!(snapshot.build.id, build.id);
        assert!(store.event_snapshot(BuildId(999)).await.unwrap().is_none());
        assert_eq!(store.event_head(build.id).await.unwrap(), Some((snapshot.build.status, 9)));
        assert!(store.event_head(BuildId(999)).await.unwrap().is_none());
    }
}
