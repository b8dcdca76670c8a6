//! The retention task (`[retention] builds`): right after start and then every `interval`, the
//! logs and reports of builds that finished longer ago than `builds` are pruned, batch after
//! batch, until none is left. Each batch is one short write transaction the store bounds
//! ([`BATCH`]); between batches the writer is free, so a running build's log lines never wait
//! longer than one batch. After a prune, a database made with `auto_vacuum = incremental` gives
//! the freed pages back to the file system; any other reuses them for new rows.
//!
//! What a pruned log shows is said here ([`notice`]); what is deleted and kept is the store's
//! business (`store::retention`). Nothing here runs unless `builds` is set.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::RetentionConfig;
use crate::store::{now_ms, PruneLimits, Pruned, Store, StoreError};

/// One batch: at most this many builds and this many deleted rows (log lines and test cases) in
/// one write transaction: a few milliseconds of the writer on this machine.
pub const BATCH: PruneLimits = PruneLimits { builds: 500, rows: 5_000 };

/// Pages an incremental vacuum frees in one step (4 MiB of 4 KiB pages), between which other
/// writers get the database.
pub const VACUUM_PAGES: u32 = 1024;

/// The line each pruned step's log keeps, in place of its output.
pub fn notice(keep: Duration) -> String {
    format!(
        "[gantry] log pruned: builds keep their logs and test reports for {} after they finish \
         ([retention] builds); this build's status and steps are kept",
        spelled(keep)
    )
}

/// A duration in whole days, hours, minutes and seconds, as people write it ("90 days").
fn spelled(duration: Duration) -> String {
    let mut rest = duration.as_secs();
    let mut parts = Vec::new();
    for (unit, secs) in [("day", 86_400), ("hour", 3_600), ("minute", 60), ("second", 1)] {
        let n = rest / secs;
        rest %= secs;
        if n > 0 {
            parts.push(format!("{n} {unit}{}", if n == 1 { "" } else { "s" }));
        }
    }
    if parts.is_empty() {
        format!("{} ms", duration.as_millis())
    } else {
        parts.join(" ")
    }
}

/// Start the task when `[retention] builds` is set.
pub fn start(store: Store, config: RetentionConfig, shutdown: CancellationToken, tasks: &TaskTracker) {
    if let Some(keep) = config.builds {
        tasks.spawn(run(store, keep, config.interval, shutdown));
    }
}

async fn run(store: Store, keep: Duration, interval: Duration, shutdown: CancellationToken) {
    loop {
        match prune(&store, keep, &shutdown).await {
            Ok(pruned) if pruned.builds > 0 => tracing::info!(
                builds = pruned.builds,
                log_lines = pruned.log_lines,
                reports = pruned.reports,
                test_cases = pruned.test_cases,
                "pruned the logs and reports of old builds"
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "pruning old builds' logs failed; trying again later"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Prune every build that finished more than `keep` ago, batch by batch, then vacuum what a
/// database made for it can give back. Stops early when the server shuts down.
pub async fn prune(store: &Store, keep: Duration, shutdown: &CancellationToken) -> Result<Pruned, StoreError> {
    let finished_before = now_ms().saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
    let notice = notice(keep);
    let mut total = Pruned::default();
    loop {
        let batch = store.prune_batch(finished_before, &notice, BATCH).await?;
        total += batch;
        if !batch.more || shutdown.is_cancelled() {
            break;
        }
        // Let the writers that queued meanwhile (a running build's persister) go first.
        tokio::task::yield_now().await;
    }
    if total.log_lines + total.reports + total.test_cases > 0 {
        while !shutdown.is_cancelled() && store.incremental_vacuum(VACUUM_PAGES).await? > 0 {
            tokio::task::yield_now().await;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_notice_says_how_long_logs_are_kept_in_words() {
        assert!(notice(Duration::from_secs(90 * 86_400)).contains(" for 90 days after they finish"));
        assert_eq!(spelled(Duration::from_secs(86_400 + 2 * 3_600 + 1)), "1 day 2 hours 1 second");
        assert_eq!(spelled(Duration::from_millis(1_500)), "1 second");
        assert_eq!(spelled(Duration::from_millis(500)), "500 ms");
    }

    /// The task prunes an old build right after it starts and stops with the server.
    #[tokio::test]
    async fn the_task_prunes_at_start_and_stops_with_the_server() {
        let (store, _dir, build) = crate::store::testing::store_with_build().await;
        store.finish_build(build.id, gantry_event::BuildStatus::Passed, None).await.unwrap();
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let config = RetentionConfig { builds: Some(Duration::from_millis(1)), interval: Duration::from_secs(3600) };
        // The build finished "more than 1 ms ago" only once a millisecond has passed.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while now_ms() <= store.build(build.id).await.unwrap().unwrap().finished_at.unwrap() + 1 {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        start(store.clone(), config, shutdown.clone(), &tasks);
        while store.logs_pruned_at(build.id).await.unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "the build was not pruned");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        tasks.close();
        tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await.expect("the task stopped");
    }
}
