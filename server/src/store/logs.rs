//! The `log_lines` table: every output line of every step, with its stream and the time it was
//! produced. This is the store's hot path: lines arrive in batches and are written with
//! multi-row inserts inside the caller's transaction.

use gantry_event::Stream;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::{parse_column, BuildId, Result, Store};

/// Rows per `INSERT` statement (6 parameters each, well under SQLite's parameter limit).
pub const LOG_INSERT_CHUNK: usize = 256;

/// One stored output line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub step_idx: i64,
    /// Counts the build's lines in arrival order.
    pub seq: i64,
    /// Unix milliseconds.
    pub at: i64,
    pub stream: Stream,
    pub text: String,
}

fn parse_stream(s: &str) -> Option<Stream> {
    [Stream::Stdout, Stream::Stderr, Stream::System].into_iter().find(|stream| stream.as_str() == s)
}

fn line_from_row(row: &SqliteRow) -> Result<LogLine> {
    Ok(LogLine {
        step_idx: row.try_get("step_idx")?,
        seq: row.try_get("seq")?,
        at: row.try_get("at")?,
        stream: parse_column("log_lines.stream", row.try_get("stream")?, parse_stream)?,
        text: row.try_get("text")?,
    })
}

/// Append lines to a build's log.
pub async fn insert_lines(conn: &mut SqliteConnection, build: BuildId, lines: &[LogLine]) -> Result<()> {
    for chunk in lines.chunks(LOG_INSERT_CHUNK) {
        let mut insert =
            QueryBuilder::<Sqlite>::new("INSERT INTO log_lines (build_id, step_idx, seq, at, stream, text) ");
        insert.push_values(chunk, |mut row, line| {
            row.push_bind(build.0)
                .push_bind(line.step_idx)
                .push_bind(line.seq)
                .push_bind(line.at)
                .push_bind(line.stream.as_str())
                .push_bind(line.text.as_str());
        });
        insert.build().execute(&mut *conn).await?;
    }
    Ok(())
}

impl Store {
    /// A build's log in the order it was produced, or one step's. `limit` keeps the *last*
    /// lines; `None` returns everything.
    pub async fn log_lines(&self, build: BuildId, step_idx: Option<i64>, limit: Option<u32>) -> Result<Vec<LogLine>> {
        // A negative LIMIT means no limit in SQLite.
        let limit = limit.map_or(-1, i64::from);
        let rows = match step_idx {
            Some(idx) => {
                sqlx::query(
                    "SELECT * FROM (SELECT step_idx, seq, at, stream, text FROM log_lines \
                     WHERE build_id = ? AND step_idx = ? ORDER BY seq DESC LIMIT ?) ORDER BY seq",
                )
                .bind(build.0)
                .bind(idx)
                .bind(limit)
                .fetch_all(self.reader())
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT * FROM (SELECT step_idx, seq, at, stream, text FROM log_lines \
                     WHERE build_id = ? ORDER BY seq DESC LIMIT ?) ORDER BY seq",
                )
                .bind(build.0)
                .bind(limit)
                .fetch_all(self.reader())
                .await?
            }
        };
        rows.iter().map(line_from_row).collect()
    }

    /// How many lines each step of a build has, indexed by step.
    pub async fn log_line_counts(&self, build: BuildId) -> Result<Vec<(i64, i64)>> {
        let rows = sqlx::query("SELECT step_idx, COUNT(*) AS n FROM log_lines WHERE build_id = ? GROUP BY step_idx")
            .bind(build.0)
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(|r| Ok((r.try_get("step_idx")?, r.try_get("n")?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;

    #[tokio::test]
    async fn lines_come_back_in_order_per_build_and_per_step() {
        let (store, _dir, build) = testing::store_with_build().await;
        // More lines than one INSERT takes, alternating between two steps, one with binary-ish text.
        let lines: Vec<LogLine> = (0..(LOG_INSERT_CHUNK as i64 * 2 + 7))
            .map(|seq| LogLine {
                step_idx: seq % 2,
                seq,
                at: 1_000 + seq,
                stream: if seq % 3 == 0 { Stream::Stderr } else { Stream::Stdout },
                text: format!("line {seq} \u{FFFD}\t'\"<b>"),
            })
            .collect();
        let mut tx = store.begin().await.unwrap();
        insert_lines(&mut tx, build.id, &lines).await.unwrap();
        tx.commit().await.unwrap();

        let all = store.log_lines(build.id, None, None).await.unwrap();
        assert_eq!(all, lines);
        let odd = store.log_lines(build.id, Some(1), None).await.unwrap();
        assert!(odd.iter().all(|l| l.step_idx == 1));
        assert_eq!(odd.len(), lines.len() / 2);
        let tail = store.log_lines(build.id, Some(0), Some(3)).await.unwrap();
        let even: Vec<i64> = lines.iter().filter(|l| l.step_idx == 0).map(|l| l.seq).collect();
        let last_even = &even[even.len() - 3..];
        assert_eq!(tail.iter().map(|l| l.seq).collect::<Vec<_>>(), last_even);
        let counts = store.log_line_counts(build.id).await.unwrap();
        assert_eq!(counts.iter().map(|(_, n)| n).sum::<i64>(), lines.len() as i64);
    }
}
