//! Where a build's files come from: the tree of one git commit (the server) or a working
//! directory (`gantry run`). The executor reads the pipeline's templates through it and packs the
//! code and data it pushes into tar archives.
//!
//! Sources are synchronous (git2 is); callers run them on a blocking thread. A source only ever
//! reads: it never writes into the repository or the directory it serves, and it never lets a
//! path (`..`, an absolute path, `.git`) reach outside the tree it describes. A file that must be
//! small (the pipeline file) is read with [`Source::read_file_at_most`], which learns the size
//! before it reads: from the blob's header in git's object database, from the metadata of a file.

use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of an executable file in an archive (git's `100755`).
const EXECUTABLE_MODE: u32 = 0o755;
/// Mode of a regular file in an archive (git's `100644`).
const REGULAR_MODE: u32 = 0o644;
/// Mode of a directory in an archive.
const DIR_MODE: u32 = 0o755;
/// Mode of a symlink entry (ignored on unpacking, but tar wants one).
const SYMLINK_MODE: u32 = 0o777;
/// Git's file mode for executable blobs.
const GIT_EXECUTABLE_FILEMODE: i32 = 0o100755;
/// Git's file mode for symlinks.
const GIT_SYMLINK_FILEMODE: i32 = 0o120000;
/// The directory a work tree's git metadata lives in; never part of a source.
const GIT_DIR_NAME: &str = ".git";

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

/// A file read under a size limit: its contents, or only its size when it is over the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limited {
    /// The whole file, at most the limit long.
    Read(Vec<u8>),
    /// The file holds `size` bytes, more than the limit; its contents were not read.
    TooLarge { size: u64 },
}

impl Limited {
    /// `bytes`, already in memory, judged against `limit`.
    fn of(bytes: Vec<u8>, limit: u64) -> Limited {
        let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if size > limit {
            Limited::TooLarge { size }
        } else {
            Limited::Read(bytes)
        }
    }
}

pub trait Source: Send + Sync {
    /// For messages: `acme@1a2b3c4` or `/home/me/shop`.
    fn describe(&self) -> String;

    /// What `path` (repository-relative, `/`-separated, no leading `./`) is, if it exists.
    fn kind(&self, path: &str) -> Result<Option<EntryKind>, SourceError>;

    /// The contents of the file at `path`, `None` when there is none.
    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, SourceError>;

    /// [`Source::read_file`] for a file that must hold at most `limit` bytes: a larger file is
    /// [`Limited::TooLarge`]. Both sources here learn the size before reading, so a huge file costs
    /// no memory; this default, for sources that hold their files in memory anyway, reads first.
    fn read_file_at_most(&self, path: &str, limit: u64) -> Result<Option<Limited>, SourceError> {
        Ok(self.read_file(path)?.map(|bytes| Limited::of(bytes, limit)))
    }

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

/// Split a repository-relative path into its components, refusing anything that could leave the
/// tree (absolute paths, `..`) or enter git's own metadata. `""`, `"."` and a trailing `/` all
/// mean the root. Returns `None` for a refused path, which callers report as "not found".
fn components(path: &str) -> Option<Vec<&str>> {
    if path.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => continue,
            ".." | GIT_DIR_NAME => return None,
            other => parts.push(other),
        }
    }
    Some(parts)
}

/// The archive name of `path`'s entries: `prefix` joined with the path's last component.
fn entry_root(prefix: &str, parts: &[&str]) -> PathBuf {
    let mut root = PathBuf::from(prefix.trim_matches('/'));
    if let Some(last) = parts.last() {
        root.push(last);
    }
    root
}

fn tar_io(what: &str, source: std::io::Error) -> SourceError {
    SourceError::Io { path: PathBuf::from(what), source }
}

fn dir_header(mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(DIR_MODE);
    header.set_size(0);
    header.set_mtime(mtime);
    header
}

fn append_dir(builder: &mut tar::Builder<&mut dyn Write>, name: &Path, mtime: u64) -> Result<(), SourceError> {
    if name.as_os_str().is_empty() {
        return Ok(());
    }
    let mut header = dir_header(mtime);
    builder.append_data(&mut header, name, std::io::empty()).map_err(|e| tar_io(&name.to_string_lossy(), e))
}

fn append_file(
    builder: &mut tar::Builder<&mut dyn Write>,
    name: &Path,
    mode: u32,
    mtime: u64,
    data: &[u8],
) -> Result<(), SourceError> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(mode);
    header.set_size(data.len() as u64);
    header.set_mtime(mtime);
    builder.append_data(&mut header, name, data).map_err(|e| tar_io(&name.to_string_lossy(), e))
}

fn append_symlink(
    builder: &mut tar::Builder<&mut dyn Write>,
    name: &Path,
    target: &Path,
    mtime: u64,
) -> Result<(), SourceError> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_mode(SYMLINK_MODE);
    header.set_size(0);
    header.set_mtime(mtime);
    builder.append_link(&mut header, name, target).map_err(|e| tar_io(&name.to_string_lossy(), e))
}

impl GitCommitSource {
    fn git_err(&self, what: impl Into<String>) -> impl FnOnce(git2::Error) -> SourceError {
        let what = what.into();
        move |source| SourceError::Git { what, source }
    }

    /// Opens the repository afresh: `git2::Repository` is not `Sync`, and opening is cheap next to
    /// what a caller does with the tree.
    fn open(&self) -> Result<git2::Repository, SourceError> {
        git2::Repository::open(&self.repo_path).map_err(self.git_err(self.repo_path.display().to_string()))
    }

    fn commit_tree<'r>(&self, repo: &'r git2::Repository) -> Result<(git2::Tree<'r>, u64), SourceError> {
        let what = format!("commit {} of {}", self.commit, self.label);
        let commit = repo.find_commit(self.commit).map_err(self.git_err(what.clone()))?;
        let mtime = u64::try_from(commit.time().seconds()).unwrap_or(0);
        Ok((commit.tree().map_err(self.git_err(what))?, mtime))
    }

    /// The tree entry at `parts`, `None` when there is none. The root itself has no entry.
    fn entry(&self, tree: &git2::Tree<'_>, parts: &[&str]) -> Result<Option<git2::TreeEntry<'static>>, SourceError> {
        let path: PathBuf = parts.iter().collect();
        match tree.get_path(&path) {
            Ok(entry) => Ok(Some(entry)),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
            Err(e) => Err(SourceError::Git { what: format!("{} in {}", path.display(), self.describe()), source: e }),
        }
    }

    /// The blob at `path` of the commit's tree, `None` when there is no file there.
    fn blob_id(&self, repo: &git2::Repository, path: &str) -> Result<Option<git2::Oid>, SourceError> {
        let Some(parts) = components(path) else { return Ok(None) };
        if parts.is_empty() {
            return Ok(None);
        }
        let (tree, _) = self.commit_tree(repo)?;
        let Some(entry) = self.entry(&tree, &parts)? else { return Ok(None) };
        Ok((entry.kind() == Some(git2::ObjectType::Blob)).then(|| entry.id()))
    }

    /// The size of blob `id` from its header in the object database, without inflating the blob.
    fn blob_size(&self, repo: &git2::Repository, id: git2::Oid, path: &str) -> Result<u64, SourceError> {
        let what = || format!("{path} in {}", self.describe());
        let odb = repo.odb().map_err(self.git_err(what()))?;
        let (size, _) = odb.read_header(id).map_err(self.git_err(what()))?;
        Ok(u64::try_from(size).unwrap_or(u64::MAX))
    }

    fn append_tree(
        &self,
        repo: &git2::Repository,
        tree: &git2::Tree<'_>,
        name: &Path,
        mtime: u64,
        builder: &mut tar::Builder<&mut dyn Write>,
    ) -> Result<(), SourceError> {
        append_dir(builder, name, mtime)?;
        for entry in tree.iter() {
            let child = name.join(std::ffi::OsStr::from_bytes(entry.name_bytes()));
            self.append_entry(repo, &entry, &child, mtime, builder)?;
        }
        Ok(())
    }

    fn append_entry(
        &self,
        repo: &git2::Repository,
        entry: &git2::TreeEntry<'_>,
        name: &Path,
        mtime: u64,
        builder: &mut tar::Builder<&mut dyn Write>,
    ) -> Result<(), SourceError> {
        let what = || format!("{} in {}", name.display(), self.describe());
        match entry.kind() {
            Some(git2::ObjectType::Tree) => {
                let tree = repo.find_tree(entry.id()).map_err(self.git_err(what()))?;
                self.append_tree(repo, &tree, name, mtime, builder)
            }
            Some(git2::ObjectType::Blob) => {
                let blob = repo.find_blob(entry.id()).map_err(self.git_err(what()))?;
                match entry.filemode() {
                    GIT_SYMLINK_FILEMODE => {
                        let target = Path::new(std::ffi::OsStr::from_bytes(blob.content()));
                        append_symlink(builder, name, target, mtime)
                    }
                    GIT_EXECUTABLE_FILEMODE => append_file(builder, name, EXECUTABLE_MODE, mtime, blob.content()),
                    _ => append_file(builder, name, REGULAR_MODE, mtime, blob.content()),
                }
            }
            // A submodule: like a checkout without `git submodule update`, an empty directory.
            Some(git2::ObjectType::Commit) => append_dir(builder, name, mtime),
            _ => Ok(()),
        }
    }
}

impl Source for GitCommitSource {
    fn describe(&self) -> String {
        let sha = self.commit.to_string();
        format!("{}@{}", self.label, &sha[..sha.len().min(7)])
    }

    fn kind(&self, path: &str) -> Result<Option<EntryKind>, SourceError> {
        let Some(parts) = components(path) else { return Ok(None) };
        if parts.is_empty() {
            return Ok(Some(EntryKind::Dir));
        }
        let repo = self.open()?;
        let (tree, _) = self.commit_tree(&repo)?;
        Ok(self.entry(&tree, &parts)?.and_then(|entry| match entry.kind() {
            Some(git2::ObjectType::Tree | git2::ObjectType::Commit) => Some(EntryKind::Dir),
            Some(git2::ObjectType::Blob) => Some(EntryKind::File),
            _ => None,
        }))
    }

    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, SourceError> {
        let repo = self.open()?;
        let Some(id) = self.blob_id(&repo, path)? else { return Ok(None) };
        let blob = repo.find_blob(id).map_err(self.git_err(format!("{path} in {}", self.describe())))?;
        Ok(Some(blob.content().to_vec()))
    }

    fn read_file_at_most(&self, path: &str, limit: u64) -> Result<Option<Limited>, SourceError> {
        let repo = self.open()?;
        let Some(id) = self.blob_id(&repo, path)? else { return Ok(None) };
        let size = self.blob_size(&repo, id, path)?;
        if size > limit {
            return Ok(Some(Limited::TooLarge { size }));
        }
        let blob = repo.find_blob(id).map_err(self.git_err(format!("{path} in {}", self.describe())))?;
        Ok(Some(Limited::of(blob.content().to_vec(), limit)))
    }

    fn archive(&self, path: &str, prefix: &str, out: &mut dyn Write) -> Result<(), SourceError> {
        let parts = components(path).ok_or_else(|| SourceError::NotFound(path.to_string()))?;
        let repo = self.open()?;
        let (tree, mtime) = self.commit_tree(&repo)?;
        let mut builder = tar::Builder::new(out);
        let root = entry_root(prefix, &parts);
        if parts.is_empty() {
            self.append_tree(&repo, &tree, &root, mtime, &mut builder)?;
        } else {
            let entry = self.entry(&tree, &parts)?.ok_or_else(|| SourceError::NotFound(path.to_string()))?;
            self.append_entry(&repo, &entry, &root, mtime, &mut builder)?;
        }
        builder.finish().map_err(|e| tar_io(path, e))
    }
}

impl WorkDirSource {
    fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
        move |source| SourceError::Io { path: path.to_path_buf(), source }
    }

    /// The metadata of `path` without following a final symlink, `None` when it does not exist.
    fn metadata(path: &Path) -> Result<Option<std::fs::Metadata>, SourceError> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) => Ok(Some(meta)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io_err(path)(e)),
        }
    }

    fn append_path(
        &self,
        path: &Path,
        meta: &std::fs::Metadata,
        name: &Path,
        builder: &mut tar::Builder<&mut dyn Write>,
    ) -> Result<(), SourceError> {
        let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
        let file_type = meta.file_type();
        if file_type.is_symlink() {
            let target = std::fs::read_link(path).map_err(Self::io_err(path))?;
            append_symlink(builder, name, &target, mtime)
        } else if file_type.is_dir() {
            append_dir(builder, name, mtime)?;
            let mut children = Vec::new();
            for child in std::fs::read_dir(path).map_err(Self::io_err(path))? {
                let child = child.map_err(Self::io_err(path))?;
                if child.file_name() != GIT_DIR_NAME {
                    children.push(child.file_name());
                }
            }
            children.sort();
            for child in children {
                let child_path = path.join(&child);
                if let Some(child_meta) = Self::metadata(&child_path)? {
                    self.append_path(&child_path, &child_meta, &name.join(&child), builder)?;
                }
            }
            Ok(())
        } else if file_type.is_file() {
            let data = std::fs::read(path).map_err(Self::io_err(path))?;
            append_file(builder, name, meta.permissions().mode() & 0o777, mtime, &data)
        } else {
            // Sockets, fifos and devices have no place in a build's sources.
            Ok(())
        }
    }
}

/// What a path of a working directory holds for reading.
enum FileAt {
    /// A symlink, read like a git blob of mode 120000: the link's target, never what it points to,
    /// so a working tree reads exactly as its commit would.
    Link(Vec<u8>),
    /// A regular file, at this full path.
    File(PathBuf),
}

impl WorkDirSource {
    /// What `path` holds, `None` when it does not exist or is neither a file nor a symlink.
    fn file_at(&self, path: &str) -> Result<Option<FileAt>, SourceError> {
        let Some(parts) = components(path) else { return Ok(None) };
        let full: PathBuf = self.root.join(parts.iter().collect::<PathBuf>());
        let Some(meta) = Self::metadata(&full)? else { return Ok(None) };
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&full).map_err(Self::io_err(&full))?;
            return Ok(Some(FileAt::Link(target.into_os_string().into_encoded_bytes())));
        }
        Ok(meta.is_file().then_some(FileAt::File(full)))
    }
}

/// Read the file at `path` (a symlink is followed) when it holds at most `limit` bytes. The length
/// in its metadata is checked before reading, and the read stops at `limit + 1` bytes, so a file
/// that grows meanwhile is refused as well and never read whole.
pub fn read_at_most(path: &Path, limit: u64) -> Result<Limited, SourceError> {
    let io = |source| SourceError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > limit {
        return Ok(Limited::TooLarge { size });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(io)?;
    Ok(Limited::of(bytes, limit))
}

impl Source for WorkDirSource {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn kind(&self, path: &str) -> Result<Option<EntryKind>, SourceError> {
        let Some(parts) = components(path) else { return Ok(None) };
        let full: PathBuf = self.root.join(parts.iter().collect::<PathBuf>());
        Ok(Self::metadata(&full)?.and_then(|meta| {
            let file_type = meta.file_type();
            if file_type.is_dir() {
                Some(EntryKind::Dir)
            } else if file_type.is_file() || file_type.is_symlink() {
                // A symlink is a file, as it is in a git tree.
                Some(EntryKind::File)
            } else {
                None
            }
        }))
    }

    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, SourceError> {
        match self.file_at(path)? {
            Some(FileAt::Link(target)) => Ok(Some(target)),
            Some(FileAt::File(full)) => std::fs::read(&full).map(Some).map_err(Self::io_err(&full)),
            None => Ok(None),
        }
    }

    fn read_file_at_most(&self, path: &str, limit: u64) -> Result<Option<Limited>, SourceError> {
        match self.file_at(path)? {
            Some(FileAt::Link(target)) => Ok(Some(Limited::of(target, limit))),
            Some(FileAt::File(full)) => read_at_most(&full, limit).map(Some),
            None => Ok(None),
        }
    }

    fn archive(&self, path: &str, prefix: &str, out: &mut dyn Write) -> Result<(), SourceError> {
        let parts = components(path).ok_or_else(|| SourceError::NotFound(path.to_string()))?;
        let full: PathBuf = self.root.join(parts.iter().collect::<PathBuf>());
        let meta = Self::metadata(&full)?.ok_or_else(|| SourceError::NotFound(path.to_string()))?;
        let mut builder = tar::Builder::new(out);
        self.append_path(&full, &meta, &entry_root(prefix, &parts), &mut builder)?;
        builder.finish().map_err(|e| tar_io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_refuse_escapes_and_git_metadata() {
        assert_eq!(components("").unwrap(), Vec::<&str>::new());
        assert_eq!(components("./ci//seed.sql/").unwrap(), ["ci", "seed.sql"]);
        assert!(components("/etc/passwd").is_none());
        assert!(components("ci/../../etc").is_none());
        assert!(components(".git/config").is_none());
    }

    #[test]
    fn entry_root_joins_prefix_and_last_component() {
        assert_eq!(entry_root("data", &["ci", "seed.sql"]), PathBuf::from("data/seed.sql"));
        assert_eq!(entry_root("src", &[]), PathBuf::from("src"));
        assert_eq!(entry_root("", &[]), PathBuf::from(""));
    }
}
