//! The `hosts` table: every host a build asked for, from before the provider creates it until it
//! is torn down.
//!
//! A row is written in state `requested` *before* the provider is asked for the host; it becomes
//! `provisioned` with its address, then `torn_down` or `teardown_failed`. Any row not `torn_down`
//! after a crash is a host to reap.

use std::net::IpAddr;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::sql::Builder;
use super::{Backend, Connection};

use super::{now_ms, parse_column, parse_from_str, BuildId, Result, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostState {
    Requested,
    Provisioned,
    TornDown,
    TeardownFailed,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Requested => "requested",
            HostState::Provisioned => "provisioned",
            HostState::TornDown => "torn_down",
            HostState::TeardownFailed => "teardown_failed",
        }
    }

    pub fn parse(s: &str) -> Option<HostState> {
        Some(match s {
            "requested" => HostState::Requested,
            "provisioned" => HostState::Provisioned,
            "torn_down" => HostState::TornDown,
            "teardown_failed" => HostState::TeardownFailed,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRow {
    pub build_id: BuildId,
    pub role: String,
    /// The durable identity handed to the provider, e.g. `b42-web`.
    pub host_id: String,
    pub provider: String,
    pub provider_id: Option<String>,
    pub address: Option<IpAddr>,
    pub state: HostState,
    pub requested_at: i64,
    pub provisioned_at: Option<i64>,
    pub torn_down_at: Option<i64>,
    pub provision_ms: Option<i64>,
    pub teardown_ms: Option<i64>,
    pub error: Option<String>,
    /// What kept the host apart from other builds' hosts, as its provider described it.
    pub isolation: Option<String>,
}

macro_rules! host_columns {
    () => {
        "build_id, role, host_id, provider, provider_id, address, state, requested_at, provisioned_at, \
         torn_down_at, provision_ms, teardown_ms, error, isolation"
    };
}

pub(super) use host_columns;

pub(super) fn host_from_row(row: &AnyRow) -> Result<HostRow> {
    let address: Option<String> = row.try_get("address")?;
    Ok(HostRow {
        build_id: BuildId(row.try_get("build_id")?),
        role: row.try_get("role")?,
        host_id: row.try_get("host_id")?,
        provider: row.try_get("provider")?,
        provider_id: row.try_get("provider_id")?,
        address: address.map(|a| parse_from_str("hosts.address", a)).transpose()?,
        state: parse_column("hosts.state", row.try_get("state")?, HostState::parse)?,
        requested_at: row.try_get("requested_at")?,
        provisioned_at: row.try_get("provisioned_at")?,
        torn_down_at: row.try_get("torn_down_at")?,
        provision_ms: row.try_get("provision_ms")?,
        teardown_ms: row.try_get("teardown_ms")?,
        error: row.try_get("error")?,
        isolation: row.try_get("isolation")?,
    })
}

/// Record the hosts (role, host id) about to be requested from `provider`, in one statement
/// (one round trip on PostgreSQL, and all or none without a transaction around it).
pub async fn insert_requested(
    conn: &mut Connection,
    build: BuildId,
    hosts: &[(&str, &str)],
    provider: &str,
) -> Result<()> {
    if hosts.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let mut insert =
        Builder::new(Backend::of(conn), "INSERT INTO hosts (build_id, role, host_id, provider, state, requested_at) ");
    insert.push_values(hosts, |row, (role, host_id)| {
        row.push_bind(build.0)
            .push_bind(role.to_string())
            .push_bind(host_id.to_string())
            .push_bind(provider.to_string())
            .push_bind("requested")
            .push_bind(now);
    });
    insert.build()?.execute(conn).await?;
    Ok(())
}

/// What the provider made of a host: its address, its own id and what isolates it.
#[derive(Debug, Clone, Copy)]
pub struct Provisioned<'a> {
    pub address: IpAddr,
    pub provider_id: &'a str,
    pub isolation: &'a str,
}

/// The provider created the host, its provision step ending as `times` says when that is known
/// already; otherwise [`record_step_times`] records the step's times when its end arrives.
/// Returns the host's row.
pub async fn mark_provisioned(
    conn: &mut Connection,
    build: BuildId,
    role: &str,
    host: Provisioned<'_>,
    times: Option<StepTimes>,
) -> Result<Option<HostRow>> {
    let row = sqlx::query(concat!(
        "UPDATE hosts SET state = 'provisioned', address = $1, provider_id = $2, isolation = $3, \
         provisioned_at = COALESCE($4, provisioned_at, $5), provision_ms = COALESCE($6, provision_ms) \
         WHERE build_id = $7 AND role = $8 RETURNING ",
        host_columns!()
    ))
    .bind(host.address.to_string())
    .bind(host.provider_id)
    .bind(host.isolation)
    .bind(times.map(|t| t.finished_at))
    .bind(now_ms())
    .bind(times.map(|t| t.took_ms))
    .bind(build.0)
    .bind(role)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(host_from_row).transpose()
}

/// A host's provision or teardown step's end and how long it took, as the executor timed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepTimes {
    pub finished_at: i64,
    pub took_ms: i64,
}

/// Which of a host's lifecycle steps [`record_step_times`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPhase {
    Provision,
    Teardown,
}

/// The end and duration of a host's provision or teardown step, as the executor timed it.
pub async fn record_step_times(
    conn: &mut Connection,
    build: BuildId,
    role: &str,
    phase: HostPhase,
    finished_at: i64,
    took_ms: Option<i64>,
) -> Result<Option<HostRow>> {
    let sql = match phase {
        HostPhase::Provision => concat!(
            "UPDATE hosts SET provisioned_at = $1, provision_ms = $2 WHERE build_id = $3 AND role = $4 RETURNING ",
            host_columns!()
        ),
        HostPhase::Teardown => concat!(
            "UPDATE hosts SET torn_down_at = $1, teardown_ms = $2 WHERE build_id = $3 AND role = $4 RETURNING ",
            host_columns!()
        ),
    };
    let row = sqlx::query(sql).bind(finished_at).bind(took_ms).bind(build.0).bind(role).fetch_optional(conn).await?;
    row.as_ref().map(host_from_row).transpose()
}

/// The host is gone (`error` is `None`) or its teardown failed and it must be reaped later, at
/// `at` after `teardown_ms` (its teardown step's times, when known). Times already recorded from
/// the teardown step are kept.
pub async fn mark_torn_down(
    conn: &mut Connection,
    host_id: &str,
    error: Option<&str>,
    at: i64,
    teardown_ms: Option<i64>,
) -> Result<Option<HostRow>> {
    let state = if error.is_some() { HostState::TeardownFailed } else { HostState::TornDown };
    let row = sqlx::query(concat!(
        "UPDATE hosts SET state = $1, error = $2, torn_down_at = COALESCE(torn_down_at, $3), \
         teardown_ms = COALESCE(teardown_ms, $4) WHERE host_id = $5 RETURNING ",
        host_columns!()
    ))
    .bind(state.as_str())
    .bind(error)
    .bind(at)
    .bind(teardown_ms)
    .bind(host_id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(host_from_row).transpose()
}

impl Store {
    pub async fn hosts_of_build(&self, build: BuildId) -> Result<Vec<HostRow>> {
        let rows = sqlx::query(concat!("SELECT ", host_columns!(), " FROM hosts WHERE build_id = $1 ORDER BY id"))
            .bind(build.0)
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(host_from_row).collect()
    }

    /// Every host not known to be gone: what a restarted server must reap.
    pub async fn hosts_not_torn_down(&self) -> Result<Vec<HostRow>> {
        let rows =
            sqlx::query(concat!("SELECT ", host_columns!(), " FROM hosts WHERE state <> 'torn_down' ORDER BY id"))
                .fetch_all(self.reader())
                .await?;
        rows.iter().map(host_from_row).collect()
    }

    /// See [`mark_torn_down`].
    pub async fn set_host_torn_down(&self, host_id: &str, error: Option<&str>, teardown_ms: Option<i64>) -> Result<()> {
        let mut conn = self.writer().acquire().await?;
        mark_torn_down(&mut conn, host_id, error, now_ms(), teardown_ms).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;

    #[tokio::test]
    async fn a_host_provisioned_with_its_steps_times_records_them_in_the_same_update() {
        let (store, _dir, build) = testing::store_with_build().await;
        let mut conn = store.writer().acquire().await.unwrap();
        insert_requested(&mut conn, build.id, &[("web", &format!("b{}-web", build.id))], "local").await.unwrap();
        let provisioned = Provisioned { address: "127.0.10.8".parse().unwrap(), provider_id: "p", isolation: "i" };
        let times = StepTimes { finished_at: 9, took_ms: 4 };
        let row = mark_provisioned(&mut conn, build.id, "web", provisioned, Some(times)).await.unwrap().unwrap();
        assert_eq!((row.state, row.provisioned_at, row.provision_ms), (HostState::Provisioned, Some(9), Some(4)));
    }

    #[tokio::test]
    async fn a_host_is_recorded_before_it_exists_and_reaped_until_gone() {
        let (store, _dir, build) = testing::store_with_build().await;
        let host_id = format!("b{}-web", build.id);
        let mut conn = store.writer().acquire().await.unwrap();
        let db_id = format!("b{}-db", build.id);
        insert_requested(&mut conn, build.id, &[("web", &host_id), ("db", &db_id)], "local").await.unwrap();
        drop(conn);
        assert_eq!(store.hosts_not_torn_down().await.unwrap().len(), 2);

        let mut conn = store.writer().acquire().await.unwrap();
        let address: IpAddr = "127.0.10.7".parse().unwrap();
        let isolation = "user gantry-host-3, network namespace of b1";
        let provisioned = Provisioned { address, provider_id: "/data/hosts/b1-web", isolation };
        mark_provisioned(&mut conn, build.id, "web", provisioned, None).await.unwrap();
        record_step_times(&mut conn, build.id, "web", HostPhase::Provision, 5, Some(3)).await.unwrap();
        drop(conn);
        store.set_host_torn_down(&format!("b{}-db", build.id), Some("kill failed"), None).await.unwrap();

        let hosts = store.hosts_of_build(build.id).await.unwrap();
        assert_eq!(hosts[0].state, HostState::Provisioned);
        assert_eq!(hosts[0].address, Some(address));
        assert_eq!(hosts[0].isolation.as_deref(), Some(isolation));
        assert_eq!(hosts[1].isolation, None, "a host never provisioned was never isolated");
        assert_eq!((hosts[0].provisioned_at, hosts[0].provision_ms), (Some(5), Some(3)));
        assert_eq!(hosts[1].state, HostState::TeardownFailed);
        assert_eq!(store.hosts_not_torn_down().await.unwrap().len(), 2);

        store.set_host_torn_down(&host_id, None, Some(12)).await.unwrap();
        let left = store.hosts_not_torn_down().await.unwrap();
        assert_eq!(left.iter().map(|h| h.role.as_str()).collect::<Vec<_>>(), ["db"]);
        let mut conn = store.writer().acquire().await.unwrap();
        // A role is requested once per build.
        assert!(insert_requested(&mut conn, build.id, &[("web", "b-other")], "local").await.is_err());
    }
}
