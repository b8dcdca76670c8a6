//! A consistent copy of the database while the server runs, and the check a copy passes before
//! it is restored.
//!
//! The copy is SQLite's `VACUUM INTO`: it reads one snapshot in a read transaction, so builds
//! keep writing (WAL readers never block the writer) and the copy holds exactly the committed
//! state at one instant, compacted, with no WAL file of its own. Nothing here decides where
//! copies go or when a restore is allowed; that is the `gantry backup` / `gantry restore`
//! commands' job.

use std::path::Path;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Row};

use super::{Result, Store, StoreError};

/// What a checked copy holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    pub builds: i64,
    pub repos: i64,
    /// The newest migration the copy has applied; a newer Gantry applies the rest at start.
    pub schema_version: i64,
}

impl Store {
    /// Write a consistent copy of the whole database to `dest`, which must not exist yet.
    pub async fn backup_into(&self, dest: &Path) -> Result<()> {
        if self.backend() != super::Backend::Sqlite {
            return Err(StoreError::Unsupported("a PostgreSQL database is backed up with pg_dump, not gantry backup"));
        }
        let dest = dest
            .to_str()
            .ok_or_else(|| StoreError::Corrupt { column: "backup path", value: dest.to_string_lossy().into_owned() })?;
        sqlx::query("VACUUM INTO ?1").bind(dest).execute(self.reader()).await?;
        // No server runs on the copy: its registrations must not hold their server_ids against
        // the server that is restored from it.
        let mut copy = SqliteConnectOptions::new().filename(dest).connect().await?;
        sqlx::query("UPDATE servers SET stopped_at = ?1 WHERE stopped_at IS NULL")
            .bind(super::now_ms())
            .execute(&mut copy)
            .await?;
        copy.close().await?;
        Ok(())
    }
}

/// Open the copy at `path` read-only, check every page of it and that it is a Gantry database,
/// and say what it holds.
pub async fn check_backup(path: &Path) -> Result<BackupSummary> {
    let mut connection = SqliteConnectOptions::new().filename(path).read_only(true).connect().await?;
    let integrity: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&mut connection).await?;
    if integrity != "ok" {
        return Err(StoreError::Corrupt { column: "integrity_check", value: integrity });
    }
    let schema_version: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut connection)
        .await?;
    let counts = sqlx::query("SELECT (SELECT COUNT(*) FROM builds), (SELECT COUNT(*) FROM repos)")
        .fetch_one(&mut connection)
        .await?;
    Ok(BackupSummary {
        builds: counts.get(0),
        repos: counts.get(1),
        schema_version: schema_version.unwrap_or_default(),
    })
}
