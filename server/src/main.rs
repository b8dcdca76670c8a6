//! The `gantry` binary: fixes glibc's mmap threshold, parses the command line, starts logging,
//! raises the limit on open files for `serve`, and hands over to the library.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gantry::auth::admin::{TokenCommand, UserCommand};
use gantry::config::{Config, Overrides};
use gantry_runner::pipeline::{self, LoadError, PipelineFile, SecretNames, PIPELINE_FILE};
use gantry_runner::source::{SourceError, WorkDirSource};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "gantry", version, about = "A self-hosted CI server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the dashboard, the API and webhooks, and run builds.
    Serve(Overrides),
    /// Check a pipeline file; prints every problem and exits non-zero when there is one.
    Validate {
        /// The pipeline file.
        #[arg(default_value = PIPELINE_FILE)]
        path: PathBuf,
    },
    /// Run a working tree's pipeline on the local provider, without a server.
    Run {
        /// The working tree (its `.gantry.yml` is run).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Where the build's hosts are created.
        #[arg(long, env = "GANTRY_DATA_DIR", default_value = gantry::config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// Add or remove users (works while the server runs).
    #[command(subcommand)]
    User(UserCommand),
    /// Create API tokens (works while the server runs).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Write a consistent copy of the database (works while the server runs).
    Backup(gantry::backup::BackupArgs),
    /// Put a copy written by `gantry backup` in place of a missing database (server stopped).
    Restore(gantry::backup::RestoreArgs),
}

/// Blocks of at least this many bytes get a mapping of their own from glibc's malloc, returned
/// to the system when they are freed: glibc's own default, fixed (see [`fix_mmap_threshold`]).
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// At most this many glibc malloc arenas (by default eight per core). Each arena keeps the
/// pages its live blocks share with freed ones: after a 2,000,000-line build the server stayed
/// 9.3 MiB above its start with two arenas against 9.6 MiB without the cap (logs bench, medians
/// of three).
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
const MAX_ARENAS: i32 = 2;

/// Keep glibc's malloc from raising its mmap threshold. By default it raises the threshold to
/// the size of the largest mapped block freed (up to 32 MiB), after which blocks like a webhook's
/// 8 MiB body come from its heaps, whose free memory it keeps: after 128 forged 8 MiB webhooks
/// at once the server held 45 MiB more than before (332 MiB before the body budget), with the
/// threshold fixed 6 MiB more, and its peak fell from 100 to 57 MiB (README, Benchmarks).
/// Allocators that return memory by themselves (jemalloc) did as well after but not at the peak;
/// the one setting needs no second allocator. Called first, before any thread exists.
fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator; no other thread is running yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, MAX_ARENAS);
    }
}

fn main() -> ExitCode {
    fix_mmap_threshold();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(log_in_colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR")))
        .init();
    let result = match cli.command {
        Command::Validate { path } => validate(&path),
        Command::Serve(overrides) => runtime().and_then(|rt| rt.block_on(serve(overrides))).map(|()| ExitCode::SUCCESS),
        Command::Run { dir, data_dir } => runtime()
            .and_then(|rt| rt.block_on(gantry::local_run::run_local(&dir, &data_dir)))
            .map(|code| ExitCode::from(u8::try_from(code).unwrap_or(1))),
        Command::User(command) => {
            runtime().and_then(|rt| rt.block_on(gantry::auth::admin::run_user(command))).map(|()| ExitCode::SUCCESS)
        }
        Command::Token(command) => {
            runtime().and_then(|rt| rt.block_on(gantry::auth::admin::run_token(command))).map(|()| ExitCode::SUCCESS)
        }
        Command::Backup(args) => {
            runtime().and_then(|rt| rt.block_on(gantry::backup::backup(args))).map(|()| ExitCode::SUCCESS)
        }
        Command::Restore(args) => {
            runtime().and_then(|rt| rt.block_on(gantry::backup::restore(args))).map(|()| ExitCode::SUCCESS)
        }
    };
    result.unwrap_or_else(|error| {
        eprintln!("gantry: {}", describe(&error));
        ExitCode::FAILURE
    })
}

/// An error and its causes on one line, as `{:#}` writes them, but a cause whose text the line
/// already holds is left out: many errors (sqlx's, the store's) quote their source in their own
/// message and also return it as `source()`, which `{:#}` would repeat.
fn describe(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Whether the log may carry terminal colour codes: only when it goes to a terminal, and not when
/// `NO_COLOR` is set to anything (<https://no-color.org>). A log file or a journal gets plain text.
fn log_in_colour(stderr_is_terminal: bool, no_color: Option<OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|value| value.is_empty())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("failed to start the async runtime")
}

async fn serve(overrides: Overrides) -> anyhow::Result<()> {
    let config = Config::load(&overrides)?;
    raise_open_files_limit();
    let app = gantry::Application::build(config).await?;
    let handle = app.shutdown_handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: stopping running builds");
        handle.shutdown();
    });
    app.run_until_stopped().await
}

/// Raise the soft limit on open files to the hard limit: every connection is a file descriptor,
/// and the usual soft limit of 1,024 is reached by a few hundred idle clients. Both limits are
/// logged; the server caps its connections below the result (`http::serve::connection_cap`).
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-files limit");
            return;
        }
    };
    if soft >= hard {
        tracing::info!(soft, hard, "open-files limit");
        return;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => tracing::info!(was = soft, soft = hard, hard, "open-files limit raised to the hard limit"),
        Err(error) => tracing::warn!(%error, soft, hard, "cannot raise the open-files limit"),
    }
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `gantry validate PATH`: every diagnostic on stderr, exit code 1 when there is one.
fn validate(path: &Path) -> anyhow::Result<ExitCode> {
    let root = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let source = WorkDirSource { root: root.to_path_buf() };
    match pipeline::load_file(&path.display().to_string(), PipelineFile::Path(path), &source, SecretNames::Any) {
        Ok(pipeline) => {
            println!("{}: valid ({} hosts, {} stages)", path.display(), pipeline.hosts.len(), pipeline.stages.len());
            Ok(ExitCode::SUCCESS)
        }
        Err(LoadError::Invalid(diagnostics)) => {
            eprintln!("{diagnostics}");
            eprintln!("{}: {} error(s)", path.display(), diagnostics.0.len());
            Ok(ExitCode::FAILURE)
        }
        // The file system's own words, as `std::fs::read` would give them.
        Err(LoadError::Read(SourceError::Io { source, .. })) => {
            Err(source).with_context(|| format!("cannot read {}", path.display()))
        }
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(log_in_colour(true, None));
        assert!(log_in_colour(true, Some(OsString::new())), "an empty NO_COLOR does not count");
        assert!(!log_in_colour(true, Some(OsString::from("1"))));
        assert!(!log_in_colour(false, None));
    }

    /// An error that quotes its source in its message, as sqlx's do.
    #[derive(Debug, thiserror::Error)]
    #[error("error communicating with database: {0}")]
    struct Quoting(#[source] std::io::Error);

    #[test]
    fn an_error_line_says_each_cause_once() {
        let refused = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let error = anyhow::Error::new(Quoting(refused())).context("failed to open the database");
        assert_eq!(
            describe(&error),
            "failed to open the database: error communicating with database: Connection refused"
        );
        // Causes that do not quote each other are all kept, in order.
        let error = anyhow::Error::new(refused()).context("reading gantry.toml").context("bad configuration");
        assert_eq!(describe(&error), "bad configuration: reading gantry.toml: Connection refused");
    }
}
