//! `gantry backup FILE` and `gantry restore FILE`: a copy of the SQLite database taken while the
//! server runs, and putting one back.
//!
//! A backup is written beside its destination under a temporary name, checked, and only then
//! renamed over `FILE`, so a failed or interrupted backup never replaces a good one. A restore
//! checks the copy first and refuses to overwrite a database that exists: the server must be
//! stopped and the old database moved away, so a restore can never corrupt a database in use.
//! The restored server applies any newer migrations at start and marks builds the copy caught
//! running as interrupted, as after a crash. The store does the copying and checking; this
//! module only decides paths and refusals.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::auth::admin::StoreArgs;
use crate::config::{Config, Overrides};
use crate::store::backup::{check_backup, BackupSummary};
use crate::store::Store;

/// The files SQLite keeps beside a database in WAL mode; a restore refuses when any exists.
const SIDE_FILE_SUFFIXES: [&str; 2] = ["-wal", "-shm"];

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Where the copy goes; an existing file is replaced once the new copy is complete.
    pub file: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// A copy written by `gantry backup`.
    pub file: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `gantry backup FILE`.
pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let database = database_path(&args.store)?;
    if !database.exists() {
        bail!("there is no database at {} to back up", database.display());
    }
    let temp = temporary_beside(&args.file)?;
    let store = Store::open(&database).await.with_context(|| format!("cannot open {}", database.display()))?;
    let copied = store.backup_into(&temp).await;
    store.close().await;
    let summary = async {
        copied.with_context(|| format!("cannot write a copy of {} to {}", database.display(), temp.display()))?;
        check_backup(&temp).await.with_context(|| format!("the copy at {} does not check out", temp.display()))
    }
    .await;
    let summary = match summary {
        Ok(summary) => summary,
        Err(error) => {
            let _ = std::fs::remove_file(&temp);
            return Err(error);
        }
    };
    std::fs::rename(&temp, &args.file)
        .with_context(|| format!("cannot move the copy {} to {}", temp.display(), args.file.display()))?;
    eprintln!("gantry: backed up {} to {}: {}", database.display(), args.file.display(), describe(&summary));
    Ok(())
}

/// `gantry restore FILE`.
pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let database = database_path(&args.store)?;
    let summary = check_backup(&args.file)
        .await
        .with_context(|| format!("{} is not a usable Gantry backup", args.file.display()))?;
    let mut existing = vec![database.clone()];
    existing.extend(SIDE_FILE_SUFFIXES.iter().map(|suffix| with_suffix(&database, suffix)));
    if let Some(found) = existing.iter().find(|path| path.exists()) {
        bail!(
            "{} exists: stop the server and move the old database (and its -wal and -shm files) away before restoring",
            found.display()
        );
    }
    if let Some(dir) = database.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let temp = temporary_beside(&database)?;
    std::fs::copy(&args.file, &temp)
        .with_context(|| format!("cannot copy {} to {}", args.file.display(), temp.display()))?;
    std::fs::rename(&temp, &database)
        .with_context(|| format!("cannot move {} to {}", temp.display(), database.display()))?;
    eprintln!("gantry: restored {} from {}: {}", database.display(), args.file.display(), describe(&summary));
    Ok(())
}

fn database_path(args: &StoreArgs) -> anyhow::Result<PathBuf> {
    let overrides = Overrides { config: args.config.clone(), data_dir: args.data_dir.clone(), ..Overrides::default() };
    let config = Config::load(&overrides)?;
    if config.database_url.is_some() {
        anyhow::bail!("this server's database is PostgreSQL (database_url): back it up with pg_dump and restore it with pg_restore");
    }
    Ok(config.database_path())
}

/// A name beside `path` that no other process picks, for a file renamed into place when done.
fn temporary_beside(path: &Path) -> anyhow::Result<PathBuf> {
    let name = path.file_name().with_context(|| format!("{} names no file", path.display()))?;
    let mut temp = std::ffi::OsString::from(".");
    temp.push(name);
    temp.push(format!(".partial-{}", std::process::id()));
    let temp = path.with_file_name(temp);
    // VACUUM INTO refuses an existing file; one left by a killed run of this same pid is stale.
    let _ = std::fs::remove_file(&temp);
    Ok(temp)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

fn describe(summary: &BackupSummary) -> String {
    format!("{} builds of {} repos, schema {}", summary.builds, summary.repos, summary.schema_version)
}
