//! The `log_lines` table: every output line of every step, with its number within the step, its
//! event id within the build, its stream and the time it was produced.
//!
//! This is the store's hot path: lines arrive in batches and are written with multi-row inserts
//! of a few fixed sizes (so each size's statement is prepared once and cached) inside the
//! caller's transaction on SQLite; on PostgreSQL a batch's lines go in with its other events in
//! one statement (`events::append`). Reads are always windows: a range of one step's lines by number, or of
//! the build's lines by event id, so no caller ever holds a whole log of a million lines.

use gantry_event::Stream;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::sql::Builder;
use super::Connection;

use super::{parse_column, Backend, BuildId, Result, Store};

/// Rows per `INSERT` statement, largest first: a batch is cut into statements of these sizes, so
/// only these few statements are ever prepared (7 parameters a row; the largest stays under
/// SQLite's limit of 32,766 parameters).
pub const LOG_INSERT_CHUNKS: [usize; 4] = [1024, 128, 16, 1];

/// One stored output line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub step_idx: i64,
    /// The line's number within its step: 1, 2, 3, ...
    pub line: i64,
    /// The line's event id within the build (see `events`).
    pub seq: i64,
    /// Unix milliseconds.
    pub at: i64,
    pub stream: Stream,
    pub text: String,
}

fn parse_stream(s: &str) -> Option<Stream> {
    [Stream::Stdout, Stream::Stderr, Stream::System].into_iter().find(|stream| stream.as_str() == s)
}

pub(super) fn line_from_row(row: &AnyRow) -> Result<LogLine> {
    Ok(LogLine {
        step_idx: row.try_get("step_idx")?,
        line: row.try_get("line")?,
        seq: row.try_get("seq")?,
        at: row.try_get("at")?,
        stream: parse_column("log_lines.stream", row.try_get("stream")?, parse_stream)?,
        text: row.try_get("text")?,
    })
}

/// A build's lines (every step's) after an event id, in event order, at most a number of them.
pub(super) const LINES_AFTER_SEQ: &str = "SELECT step_idx, line, seq, at, stream, text FROM log_lines \
     WHERE build_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";

/// Append lines to a build's log.
pub async fn insert_lines(conn: &mut Connection, build: BuildId, lines: &[LogLine]) -> Result<()> {
    let backend = Backend::of(conn);
    let mut rest = lines;
    for size in LOG_INSERT_CHUNKS {
        while rest.len() >= size {
            let (chunk, tail) = rest.split_at(size);
            let mut insert =
                Builder::new(backend, "INSERT INTO log_lines (build_id, step_idx, line, seq, at, stream, text) ");
            insert.push_values(chunk, |row, line| {
                row.push_bind(build.0)
                    .push_bind(line.step_idx)
                    .push_bind(line.line)
                    .push_bind(line.seq)
                    .push_bind(line.at)
                    .push_bind(line.stream.as_str())
                    .push_bind(line.text.as_str());
            });
            insert.build()?.execute(&mut *conn).await?;
            rest = tail;
        }
    }
    Ok(())
}

impl Store {
    /// One step's lines numbered `from` and after, at most `limit` of them, in order.
    pub async fn step_lines(&self, build: BuildId, step_idx: i64, from: i64, limit: u32) -> Result<Vec<LogLine>> {
        let rows = sqlx::query(
            "SELECT step_idx, line, seq, at, stream, text FROM log_lines \
             WHERE build_id = $1 AND step_idx = $2 AND line >= $3 ORDER BY line LIMIT $4",
        )
        .bind(build.0)
        .bind(step_idx)
        .bind(from)
        .bind(i64::from(limit))
        .fetch_all(self.reader())
        .await?;
        rows.iter().map(line_from_row).collect()
    }

    /// The build's lines (every step's) whose event id is after `after_seq`, at most `limit` of
    /// them, in the order they were produced.
    pub async fn build_lines_after(&self, build: BuildId, after_seq: i64, limit: u32) -> Result<Vec<LogLine>> {
        let rows = sqlx::query(LINES_AFTER_SEQ)
            .bind(build.0)
            .bind(after_seq)
            .bind(i64::from(limit))
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(line_from_row).collect()
    }

    /// A build's log in the order it was produced, or one step's; `limit` keeps the *last* lines,
    /// `None` returns everything. For small logs (tests, short steps): pages read windows.
    pub async fn log_lines(&self, build: BuildId, step_idx: Option<i64>, limit: Option<u32>) -> Result<Vec<LogLine>> {
        // No limit is the largest one: both backends refuse some other way of saying it.
        let limit = limit.map_or(i64::MAX, i64::from);
        let rows = sqlx::query(
            "SELECT * FROM (SELECT step_idx, line, seq, at, stream, text FROM log_lines \
             WHERE build_id = $1 AND ($2 IS NULL OR step_idx = $2) ORDER BY seq DESC LIMIT $3) AS tail ORDER BY seq",
        )
        .bind(build.0)
        .bind(step_idx)
        .bind(limit)
        .fetch_all(self.reader())
        .await?;
        rows.iter().map(line_from_row).collect()
    }

    /// How many lines each step of a build has, as `(step, lines)` for the steps that have any.
    /// Each step's count is its last line's number, found through the key (no scan of the log).
    pub async fn log_line_counts(&self, build: BuildId) -> Result<Vec<(i64, i64)>> {
        let rows = sqlx::query(
            "SELECT idx, (SELECT MAX(line) FROM log_lines l WHERE l.build_id = s.build_id AND l.step_idx = s.idx) \
             AS n FROM steps s WHERE s.build_id = $1 ORDER BY idx",
        )
        .bind(build.0)
        .fetch_all(self.reader())
        .await?;
        let mut counts = Vec::with_capacity(rows.len());
        for row in &rows {
            let n: Option<i64> = row.try_get("n")?;
            if let Some(n) = n {
                counts.push((row.try_get("idx")?, n));
            }
        }
        Ok(counts)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::testing;
    use super::*;

    /// `count` lines alternating between steps 0 and 1, numbered per step, with event ids 1, 2, ...
    pub(crate) fn two_step_lines(count: i64) -> Vec<LogLine> {
        let mut next_line = [0, 0];
        (1..=count)
            .map(|seq| {
                let step = (seq % 2) as usize;
                next_line[step] += 1;
                LogLine {
                    step_idx: step as i64,
                    line: next_line[step],
                    seq,
                    at: 1_000 + seq,
                    stream: if seq % 3 == 0 { Stream::Stderr } else { Stream::Stdout },
                    text: format!("line {seq} \u{FFFD}\t'\"<b>"),
                }
            })
            .collect()
    }

    #[tokio::test]
    async fn lines_come_back_in_windows_per_step_and_per_build() {
        let (store, _dir, build) = testing::store_with_build().await;
        // More lines than the largest INSERT takes, and a remainder of every chunk size.
        let lines = two_step_lines(LOG_INSERT_CHUNKS[0] as i64 * 2 + 128 + 16 * 3 + 5);
        let mut tx = store.begin().await.unwrap();
        insert_lines(&mut tx, build.id, &lines).await.unwrap();
        tx.commit().await.unwrap();

        let all = store.build_lines_after(build.id, 0, u32::MAX).await.unwrap();
        assert_eq!(all, lines);
        let after = store.build_lines_after(build.id, 100, 10).await.unwrap();
        assert_eq!(after.iter().map(|l| l.seq).collect::<Vec<_>>(), (101..=110).collect::<Vec<_>>());

        let odd: Vec<&LogLine> = lines.iter().filter(|l| l.step_idx == 1).collect();
        let window = store.step_lines(build.id, 1, 7, 3).await.unwrap();
        assert_eq!(window.iter().map(|l| l.line).collect::<Vec<_>>(), [7, 8, 9]);
        assert_eq!(&window[0], odd[6]);
        let past_the_end = store.step_lines(build.id, 1, odd.len() as i64 + 1, 10).await.unwrap();
        assert!(past_the_end.is_empty());
    }

    #[tokio::test]
    async fn line_counts_are_per_step_and_skip_silent_steps() {
        let (store, _dir, build) = testing::store_with_build().await;
        let plan = [0, 1, 2].map(|i| gantry_event::StepId {
            kind: gantry_event::StepKind::Stage,
            name: format!("s{i}"),
            host: "web".into(),
        });
        let lines = two_step_lines(11);
        let mut tx = store.begin().await.unwrap();
        super::super::steps::insert_planned(&mut tx, build.id, &plan).await.unwrap();
        insert_lines(&mut tx, build.id, &lines).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(store.log_line_counts(build.id).await.unwrap(), [(0, 5), (1, 6)]);
    }
}
