//! The `servers` table: the Gantry servers sharing this database (contract section 8), and the
//! builds and hosts each one holds (`builds.server_id`).
//!
//! A server registers under its `server_id` at start, heartbeats while it runs and marks itself
//! stopped when it stops. A server whose heartbeat is older than `server_timeout` is taken over by
//! one live server: the conditional UPDATE that marks it stopped succeeds for exactly one of them,
//! in the same transaction as its running builds becoming `interrupted`.

use sqlx::Row;

use super::hosts::{host_from_row, HostRow};
use super::{now_ms, BuildId, BuildRow, Result, Store};

/// One run of a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerIdentity {
    /// The configured `server_id`, unique among the servers sharing the database.
    pub id: String,
    /// This run: chosen anew at each start, so a run never updates the row of the one before.
    pub instance: String,
    /// The machine's host name and the process id, for the refusal message and to recognise a
    /// previous run on the same machine that crashed.
    pub host: String,
    pub pid: i64,
}

/// What [`Store::register_server`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    Registered,
    /// Another live server holds the id.
    Refused {
        host: String,
        pid: i64,
        silent_ms: i64,
    },
}

/// A silent server this one took over, and the builds that it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenOver {
    pub server: String,
    pub builds: Vec<BuildId>,
}

impl Store {
    /// Register `me`, unless another live server holds its id: one that is not stopped, whose
    /// heartbeat is younger than `timeout_ms`, and that is not an earlier run on this machine (same
    /// host, and its process is this one or, as `alive` says, gone).
    pub async fn register_server(
        &self,
        me: &ServerIdentity,
        timeout_ms: i64,
        alive: impl Fn(i64) -> bool,
    ) -> Result<Registration> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let holder = sqlx::query("SELECT instance, host, pid, heartbeat_at, stopped_at FROM servers WHERE id = $1")
            .bind(&me.id)
            .fetch_optional(&mut *tx)
            .await?;
        let registered = match holder {
            Some(row) => {
                let (instance, host, pid): (String, String, i64) =
                    (row.try_get("instance")?, row.try_get("host")?, row.try_get("pid")?);
                let heartbeat_at: i64 = row.try_get("heartbeat_at")?;
                let stopped: Option<i64> = row.try_get("stopped_at")?;
                let live = stopped.is_none() && heartbeat_at > now - timeout_ms;
                let earlier_run_here = host == me.host && (pid == me.pid || !alive(pid));
                if live && !earlier_run_here {
                    return Ok(Registration::Refused { host, pid, silent_ms: now - heartbeat_at });
                }
                sqlx::query(
                    "UPDATE servers SET instance = $1, host = $2, pid = $3, started_at = $4, heartbeat_at = $4, \
                     stopped_at = NULL, taken_over_by = NULL WHERE id = $5 AND instance = $6",
                )
                .bind(&me.instance)
                .bind(&me.host)
                .bind(me.pid)
                .bind(now)
                .bind(&me.id)
                .bind(&instance)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1
            }
            None => {
                sqlx::query(
                    "INSERT INTO servers (id, instance, host, pid, started_at, heartbeat_at) \
                     VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (id) DO NOTHING",
                )
                .bind(&me.id)
                .bind(&me.instance)
                .bind(&me.host)
                .bind(me.pid)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1
            }
        };
        if !registered {
            // Another server registered the id between the read and the write.
            return Ok(Registration::Refused { host: "another machine".into(), pid: 0, silent_ms: 0 });
        }
        tx.commit().await?;
        Ok(Registration::Registered)
    }

    /// Record that `me` is alive. False when its row is no longer this run's: another server
    /// took it over after it was silent too long, or a later run took its id.
    pub async fn heartbeat(&self, me: &ServerIdentity) -> Result<bool> {
        let done =
            sqlx::query("UPDATE servers SET heartbeat_at = $1 WHERE id = $2 AND instance = $3 AND stopped_at IS NULL")
                .bind(now_ms())
                .bind(&me.id)
                .bind(&me.instance)
                .execute(self.writer())
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// `me` stopped cleanly: its id is free at once.
    pub async fn stop_server(&self, me: &ServerIdentity) -> Result<()> {
        sqlx::query("UPDATE servers SET stopped_at = $1 WHERE id = $2 AND instance = $3 AND stopped_at IS NULL")
            .bind(now_ms())
            .bind(&me.id)
            .bind(&me.instance)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    /// Take over every other server silent for longer than `timeout_ms`: mark it stopped, taken
    /// over by `me`, and end its running builds as `interrupted` with `reason` (their unfinished
    /// steps cancelled), each server in one transaction. A server that another live server took
    /// over first is not returned: each is taken over once.
    pub async fn take_over_silent_servers(
        &self,
        me: &ServerIdentity,
        timeout_ms: i64,
        reason: impl Fn(&str) -> String,
    ) -> Result<Vec<TakenOver>> {
        let cutoff = now_ms() - timeout_ms;
        let silent = sqlx::query(
            "SELECT id, instance FROM servers WHERE stopped_at IS NULL AND heartbeat_at < $1 AND id <> $2 ORDER BY id",
        )
        .bind(cutoff)
        .bind(&me.id)
        .fetch_all(self.reader())
        .await?;
        let mut taken = Vec::new();
        for row in silent {
            let (server, instance): (String, String) = (row.try_get("id")?, row.try_get("instance")?);
            let now = now_ms();
            let mut tx = self.begin().await?;
            let won = sqlx::query(
                "UPDATE servers SET stopped_at = $1, taken_over_by = $2 \
                 WHERE id = $3 AND instance = $4 AND stopped_at IS NULL AND heartbeat_at < $5",
            )
            .bind(now)
            .bind(&me.id)
            .bind(&server)
            .bind(&instance)
            .bind(cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !won {
                continue;
            }
            let rows = sqlx::query(
                "UPDATE builds SET status = 'interrupted', finished_at = $1, error = COALESCE(error, $2) \
                 WHERE server_id = $3 AND status IN ('provisioning', 'running') RETURNING id",
            )
            .bind(now)
            .bind(reason(&server))
            .bind(&server)
            .fetch_all(&mut *tx)
            .await?;
            let builds = rows.iter().map(|r| Ok(BuildId(r.try_get("id")?))).collect::<Result<Vec<_>>>()?;
            for build in &builds {
                super::steps::cancel_unfinished(&mut tx, *build, now).await?;
            }
            tx.commit().await?;
            taken.push(TakenOver { server, builds });
        }
        Ok(taken)
    }

    /// The hosts not known to be gone of the builds `server` claimed, and of builds claimed
    /// before servers were recorded: what `server` tears down when it starts again.
    pub async fn hosts_not_torn_down_of(&self, server: &str) -> Result<Vec<HostRow>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            super::hosts::host_columns!(),
            " FROM hosts WHERE state <> 'torn_down' AND build_id IN \
             (SELECT id FROM builds WHERE server_id = $1 OR server_id IS NULL) ORDER BY id"
        ))
        .bind(server)
        .fetch_all(self.reader())
        .await?;
        rows.iter().map(host_from_row).collect()
    }

    /// The hosts not known to be gone of the servers `me` took over: what it tears down for them
    /// (those of providers it can reach).
    pub async fn hosts_of_servers_taken_over_by(&self, me: &str) -> Result<Vec<HostRow>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            super::hosts::host_columns!(),
            " FROM hosts WHERE state <> 'torn_down' AND build_id IN (SELECT b.id FROM builds b \
             JOIN servers s ON s.id = b.server_id WHERE s.taken_over_by = $1) ORDER BY id"
        ))
        .bind(me)
        .fetch_all(self.reader())
        .await?;
        rows.iter().map(host_from_row).collect()
    }

    /// The builds other servers than `me` run that `newer` supersedes: older, of the same repo
    /// and ref (and pull request), provisioning or running.
    pub async fn running_elsewhere_superseded_by(&self, newer: &BuildRow, me: &str) -> Result<Vec<BuildId>> {
        let rows = sqlx::query(
            "SELECT id FROM builds WHERE repo = $1 AND branch = $2 AND ref_kind = $3 \
             AND pr_number IS NOT DISTINCT FROM $4 AND id < $5 AND status IN ('provisioning', 'running') \
             AND server_id IS DISTINCT FROM $6",
        )
        .bind(&newer.repo)
        .bind(&newer.branch)
        .bind(newer.ref_kind.as_str())
        .bind(newer.pull_request.as_ref().map(|pr| pr.number))
        .bind(newer.id.0)
        .bind(me)
        .fetch_all(self.reader())
        .await?;
        rows.iter().map(|r| Ok(BuildId(r.try_get("id")?))).collect()
    }

    /// Ask for `build` to stop (for a push that superseded it, or at a user's word), durably: the
    /// server running it reads the request at its next heartbeat even when the notice that also
    /// tells it was lost. Nothing when the build no longer runs.
    pub async fn request_cancel(&self, build: BuildId, superseded: bool) -> Result<()> {
        sqlx::query(
            "UPDATE builds SET cancel_requested = $1 WHERE id = $2 AND status IN ('provisioning', 'running') \
             AND cancel_requested IS NULL",
        )
        .bind(if superseded { "superseded" } else { "user" })
        .bind(build.0)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// The builds `server` runs that another server asked it to stop, with whether a push
    /// superseded them.
    pub async fn cancel_requests(&self, server: &str) -> Result<Vec<(BuildId, bool)>> {
        let rows = sqlx::query(
            "SELECT id, cancel_requested FROM builds WHERE server_id = $1 \
             AND status IN ('provisioning', 'running') AND cancel_requested IS NOT NULL ORDER BY id",
        )
        .bind(server)
        .fetch_all(self.reader())
        .await?;
        rows.iter()
            .map(|row| {
                let reason: String = row.try_get("cancel_requested")?;
                Ok((BuildId(row.try_get("id")?), reason == "superseded"))
            })
            .collect()
    }

    /// The server that claimed `build`, if one did.
    pub async fn build_server(&self, build: BuildId) -> Result<Option<String>> {
        let server: Option<Option<String>> = sqlx::query_scalar("SELECT server_id FROM builds WHERE id = $1")
            .bind(build.0)
            .fetch_optional(self.reader())
            .await?;
        Ok(server.flatten())
    }
}

#[cfg(test)]
mod tests {
    use gantry_event::BuildStatus;

    use super::super::testing;
    use super::*;

    fn identity(id: &str, instance: &str, pid: i64) -> ServerIdentity {
        ServerIdentity { id: id.into(), instance: instance.into(), host: "ci-1".into(), pid }
    }

    const MINUTE: i64 = 60_000;

    /// Register `one`, `two` and `others`; `one` claims two builds and `two` one, and a fourth
    /// stays queued. Returns the claimed builds' ids and the queued build.
    async fn two_on_one_and_one_on_two(
        store: &Store,
        one: &ServerIdentity,
        two: &ServerIdentity,
        others: &[ServerIdentity],
    ) -> (Vec<BuildId>, BuildRow) {
        for server in [one, two].into_iter().chain(others) {
            store.register_server(server, MINUTE, |_| true).await.unwrap();
        }
        let mut claimed = Vec::new();
        for server in [one, one, two] {
            store.insert_build(&testing::main_push()).await.unwrap();
            claimed.push(store.claim_next_build(&server.id).await.unwrap().unwrap().id);
        }
        (claimed, store.insert_build(&testing::main_push()).await.unwrap())
    }

    #[tokio::test]
    async fn a_live_id_is_refused_to_another_process_and_free_again_once_stopped() {
        let (store, _dir) = testing::store().await;
        let first = identity("gantry-1", "run-a", 100);
        assert_eq!(store.register_server(&first, MINUTE, |_| true).await.unwrap(), Registration::Registered);
        // Another process on another machine.
        let mut other = identity("gantry-1", "run-b", 200);
        other.host = "ci-2".into();
        assert!(matches!(
            store.register_server(&other, MINUTE, |_| true).await.unwrap(),
            Registration::Refused { ref host, pid: 100, .. } if host == "ci-1"
        ));
        // Another process on the same machine while the first still runs.
        let same_host = identity("gantry-1", "run-c", 300);
        assert!(matches!(
            store.register_server(&same_host, MINUTE, |_| true).await.unwrap(),
            Registration::Refused { .. }
        ));
        // A restart on the same machine after a crash (the old process is gone) takes it back.
        assert_eq!(
            store.register_server(&same_host, MINUTE, |pid| pid != 100).await.unwrap(),
            Registration::Registered
        );
        assert!(!store.heartbeat(&first).await.unwrap(), "the crashed run's row is not its own any more");
        assert!(store.heartbeat(&same_host).await.unwrap());
        store.stop_server(&same_host).await.unwrap();
        assert_eq!(store.register_server(&other, MINUTE, |_| true).await.unwrap(), Registration::Registered);
        // A different id is never in the way.
        assert_eq!(
            store.register_server(&identity("gantry-2", "run-d", 400), MINUTE, |_| true).await.unwrap(),
            Registration::Registered
        );
    }

    #[tokio::test]
    async fn a_cancel_request_is_read_by_the_server_running_the_build_until_it_ends() {
        let (store, _dir) = testing::store_with_repo().await;
        let (one, two) = (identity("one", "1", 1), identity("two", "2", 2));
        let (claimed, queued) = two_on_one_and_one_on_two(&store, &one, &two, &[]).await;
        store.request_cancel(claimed[0], false).await.unwrap();
        store.request_cancel(claimed[1], true).await.unwrap();
        store.request_cancel(claimed[2], false).await.unwrap();
        // A queued build is dequeued where it is asked, never requested.
        store.request_cancel(queued.id, false).await.unwrap();
        // The first reason stays.
        store.request_cancel(claimed[1], false).await.unwrap();
        assert_eq!(store.cancel_requests("one").await.unwrap(), [(claimed[0], false), (claimed[1], true)]);
        assert_eq!(store.cancel_requests("two").await.unwrap(), [(claimed[2], false)]);
        store.finish_build(claimed[0], BuildStatus::Cancelled, None).await.unwrap();
        assert_eq!(store.cancel_requests("one").await.unwrap(), [(claimed[1], true)]);
    }

    #[tokio::test]
    async fn a_silent_server_is_taken_over_once_and_only_its_running_builds_end() {
        let (store, _dir) = testing::store_with_repo().await;
        let (one, two, three) = (identity("one", "1", 1), identity("two", "2", 2), identity("three", "3", 3));
        let (claimed, queued) = two_on_one_and_one_on_two(&store, &one, &two, std::slice::from_ref(&three)).await;
        let mut conn = store.writer().acquire().await.unwrap();
        super::super::builds::finish(&mut conn, claimed[1], BuildStatus::Passed, None).await.unwrap();
        drop(conn);
        // "one" goes silent: nobody has heard from it for two minutes.
        sqlx::query("UPDATE servers SET heartbeat_at = heartbeat_at - $1 WHERE id = 'one'")
            .bind(2 * MINUTE)
            .execute(store.writer())
            .await
            .unwrap();
        let reason = |server: &str| format!("server {server} stopped answering");
        let (by_two, by_three) = tokio::join!(
            store.take_over_silent_servers(&two, MINUTE, reason),
            store.take_over_silent_servers(&three, MINUTE, reason)
        );
        let mut taken: Vec<TakenOver> = by_two.unwrap().into_iter().chain(by_three.unwrap()).collect();
        assert_eq!(taken.len(), 1, "one take-over of one silent server: {taken:?}");
        let taken = taken.pop().unwrap();
        assert_eq!(taken, TakenOver { server: "one".into(), builds: vec![claimed[0]] });
        let status = |id| {
            let store = store.clone();
            async move { store.build(id).await.unwrap().unwrap() }
        };
        let interrupted = status(claimed[0]).await;
        assert_eq!(interrupted.status, BuildStatus::Interrupted);
        assert_eq!(interrupted.error.as_deref(), Some("server one stopped answering"));
        assert_eq!(status(claimed[1]).await.status, BuildStatus::Passed, "a finished build stays as it was");
        assert!(!status(claimed[2]).await.status.is_final(), "another server's build runs on");
        assert_eq!(status(queued.id).await.status, BuildStatus::Queued, "the queue is everybody's");
        // Taken over: not again, and its id is free for its next start.
        assert!(store.take_over_silent_servers(&two, MINUTE, reason).await.unwrap().is_empty());
        let restarted = identity("one", "1b", 11);
        assert_eq!(store.register_server(&restarted, MINUTE, |_| true).await.unwrap(), Registration::Registered);
        assert_eq!(store.build_server(claimed[2]).await.unwrap().as_deref(), Some("two"));
    }
}
