//! Where a build's files come from: the tree of one git commit (the server) or a working
//! directory (`gantry run`). The executor reads the pipeline's templates through it and packs the
//! code and data it pushes into tar archives.
//!
//! Sources are synchronous (git2 is); callers run them on a blocking thread.

use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("git error reading {what}: {source}")]
    Git { what: String, source: git2::Error },
    #[error("i/o error reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}: no such file or directory in the source")]
    NotFound(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
}

pub trait Source: Send + Sync {
    /// For messages: `acme@1a2b3c4` or `/home/me/shop`.
    fn describe(&self) -> String;

    /// What `path` (repository-relative, `/`-separated, no leading `./`) is, if it exists.
    fn kind(&self, path: &str) -> Result<Option<EntryKind>, SourceError>;

    /// The contents of the file at `path`, `None` when there is none.
    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, SourceError>;

    /// Write a tar archive of `path` (a file or a directory; `""` for the whole tree) to `out`.
    /// Entry names start with `prefix` followed by the path's last component (or, for `""`,
    /// the tree's own entries), so `archive("ci/seed.sql", "data", …)` holds `data/seed.sql`.
    /// File modes (executable bits) and symlinks are kept.
    fn archive(&self, path: &str, prefix: &str, out: &mut dyn Write) -> Result<(), SourceError>;
}

/// The tree of one commit in a git repository (bare or not).
pub struct GitCommitSource {
    pub repo_path: PathBuf,
    pub commit: git2::Oid,
    /// Shown in messages, e.g. the repo's name.
    pub label: String,
}

/// A directory on this machine, as `gantry run` uses it. `.git` is never archived.
pub struct WorkDirSource {
    pub root: PathBuf,
}
