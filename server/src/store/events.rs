//! A build's event sequence: the numbers the live stream (`GET /api/builds/{id}/events`) uses as
//! event ids, and the events other than log lines (`build_events`), stored as the JSON the stream
//! sends.
//!
//! Every event of a build takes the next number of the build's sequence (`builds.event_seq` holds
//! the last one handed out) in the same transaction that stores it, so what a reader finds here is
//! exactly what was broadcast, in order. A resuming client reads the events after its last id with
//! [`Store::events_after`]; a new one starts from [`Store::event_snapshot`], the build's state at
//! one event id, read in one transaction. What the JSON says is not this module's business.

use std::ops::{Deref, DerefMut};

use gantry_event::BuildStatus;
use sqlx::any::AnyRow;
use sqlx::pool::PoolConnection;
use sqlx::{Any, Row, Transaction};

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
    /// Where to write the next batch of a build's events.
    pub async fn event_writer(&self) -> Result<EventWriter> {
        Ok(match self.backend() {
            Backend::Sqlite => EventWriter::Sqlite(self.begin().await?),
            Backend::Postgres => EventWriter::Postgres(self.writer().acquire().await?),
        })
    }
}

/// Where the persister writes one batch of a build's events (the rows its events change, then
/// [`append`]): a transaction on SQLite, where statements cost no round trip and one commit is
/// one write for all of them; a connection on PostgreSQL, where every statement is atomic on its
/// own and a transaction would cost two round trips more per batch. There, [`append`] comes
/// last and is what hands the batch's events out: a batch that fails halfway leaves the rows it
/// changed (which snapshots show) but none of its events.
pub enum EventWriter {
    Sqlite(Transaction<'static, Any>),
    Postgres(PoolConnection<Any>),
}

impl EventWriter {
    /// The batch is written: commit it on SQLite.
    pub async fn done(self) -> Result<()> {
        match self {
            EventWriter::Sqlite(tx) => Ok(tx.commit().await?),
            EventWriter::Postgres(_) => Ok(()),
        }
    }
}

impl Deref for EventWriter {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        match self {
            EventWriter::Sqlite(tx) => tx,
            EventWriter::Postgres(conn) => conn,
        }
    }
}

impl DerefMut for EventWriter {
    fn deref_mut(&mut self) -> &mut Connection {
        match self {
            EventWriter::Sqlite(tx) => tx,
            EventWriter::Postgres(conn) => conn,
        }
    }
}

/// Append a batch of a build's events: its log lines, its other events, and `last_seq`, the last
/// event id handed out (the largest of theirs). The other servers sharing a PostgreSQL database
/// are told which ids are stored, by `server` (this server's id): PostgreSQL delivers a
/// notification sent in a transaction when it commits, and never if it rolls back. SQLite has no other servers. An empty batch writes nothing.
///
/// On PostgreSQL this is one statement, so one round trip, and atomic without a transaction
/// around it (see [`EventWriter`]): the rows travel as two JSON parameters, which keeps
/// the statement's text (and its prepared plan) the same for every batch. On SQLite, where a
/// statement costs no round trip, it is the three statements of the caller's transaction.
pub async fn append(
    conn: &mut Connection,
    server: &str,
    build: BuildId,
    lines: &[LogLine],
    events: &[EventRow],
    last_seq: i64,
) -> Result<()> {
    let mut seqs = lines.iter().map(|l| l.seq).chain(events.iter().map(|e| e.seq));
    let Some(some) = seqs.next() else { return Ok(()) };
    if Backend::of(conn) == Backend::Sqlite {
        super::logs::insert_lines(conn, build, lines).await?;
        insert(conn, build, events).await?;
        sqlx::query("UPDATE builds SET event_seq = $1 WHERE id = $2")
            .bind(last_seq)
            .bind(build.0)
            .execute(conn)
            .await?;
        return Ok(());
    }
    #[derive(serde::Serialize)]
    struct Line<'a> {
        step_idx: i64,
        line: i64,
        seq: i64,
        at: i64,
        stream: &'a str,
        text: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Event<'a> {
        seq: i64,
        kind: &'a str,
        data: &'a str,
    }
    let lines: Vec<Line> = lines
        .iter()
        .map(|l| Line {
            step_idx: l.step_idx,
            line: l.line,
            seq: l.seq,
            at: l.at,
            stream: l.stream.as_str(),
            text: &l.text,
        })
        .collect();
    let events: Vec<Event> =
        events.iter().map(|e| Event { seq: e.seq, kind: e.kind.as_str(), data: &e.data }).collect();
    let (first, last) = seqs.fold((some, some), |(first, last), seq| (first.min(seq), last.max(seq)));
    let (channel, payload) = Notice::Stored { build, first, last }.channel_and_payload(server);
    sqlx::query(
        "WITH lines AS (INSERT INTO log_lines (build_id, step_idx, line, seq, at, stream, text) \
           SELECT $1, step_idx, line, seq, at, stream, text FROM json_to_recordset($2::json) \
           AS l(step_idx BIGINT, line BIGINT, seq BIGINT, at BIGINT, stream TEXT, text TEXT)), \
         events AS (INSERT INTO build_events (build_id, seq, kind, data) \
           SELECT $1, seq, kind, data FROM json_to_recordset($3::json) AS e(seq BIGINT, kind TEXT, data TEXT)) \
         UPDATE builds SET event_seq = $4 WHERE id = $1 RETURNING pg_notify($5, $6)",
    )
    .bind(build.0)
    .bind(serde_json::to_string(&lines).map_err(|e| sqlx::Error::Encode(Box::new(e)))?)
    .bind(serde_json::to_string(&events).map_err(|e| sqlx::Error::Encode(Box::new(e)))?)
    .bind(last_seq)
    .bind(channel)
    .bind(payload)
    .execute(conn)
    .await?;
    Ok(())
}

/// Store events other than log lines.
pub(super) async fn insert(conn: &mut Connection, build: BuildId, events: &[EventRow]) -> Result<()> {
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
        append(&mut tx, store.server(), build.id, &[lines.clone(), vec![later]].concat(), &others, 9).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(store.build(build.id).await.unwrap().unwrap().event_seq, 9);

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

    #[tokio::test]
    async fn a_batch_is_appended_whole_and_the_other_servers_hear_its_ids() {
        let (store, _dir, build) = testing::store_with_build().await;
        let mut listener = store.clone().for_server("other").listen().await.unwrap();
        assert_eq!(listener.is_some(), store.backend() == Backend::Postgres);
        let mut lines = super::super::logs::tests::two_step_lines(3);
        lines[1].text = "\\ \u{1b}[31mred\u{1b}[0m \u{1F680} \"quoted\" }]".to_string();
        let append = |lines: Vec<LogLine>, events: Vec<EventRow>, last_seq: i64| {
            let store = store.clone();
            async move {
                let mut writer = store.event_writer().await?;
                append(&mut writer, store.server(), build.id, &lines, &events, last_seq).await?;
                writer.done().await
            }
        };
        append(lines.clone(), Vec::new(), 3).await.unwrap();
        // An empty batch writes nothing, not even its last id.
        append(Vec::new(), Vec::new(), 7).await.unwrap();
        assert_eq!(store.build(build.id).await.unwrap().unwrap().event_seq, 3);
        let step = EventRow { seq: 4, kind: EventKind::Step, data: r#"{"name":"t\u00e9st \" ]}"}"#.to_string() };
        append(Vec::new(), vec![step.clone()], 4).await.unwrap();
        assert_eq!(store.build(build.id).await.unwrap().unwrap().event_seq, 4);

        let stored = store.events_after(build.id, 0, 100).await.unwrap();
        let mut expected: Vec<StoredEvent> = lines.into_iter().map(StoredEvent::Log).collect();
        expected.push(StoredEvent::Other(step));
        assert_eq!(stored, expected);
        // A line whose number is taken fails the whole batch: nothing of it is stored.
        let mut taken = super::super::logs::tests::two_step_lines(1);
        taken[0].seq = 5;
        let event = EventRow { seq: 6, kind: EventKind::Build, data: "{}".into() };
        assert!(append(taken, vec![event], 6).await.is_err());
        assert_eq!(store.events_after(build.id, 0, 100).await.unwrap(), expected);
        assert_eq!(store.build(build.id).await.unwrap().unwrap().event_seq, 4);

        if let Some(listener) = &mut listener {
            assert_eq!(listener.recv().await.unwrap(), Notice::Stored { build: build.id, first: 1, last: 3 });
            assert_eq!(listener.recv().await.unwrap(), Notice::Stored { build: build.id, first: 4, last: 4 });
        }
    }
}
