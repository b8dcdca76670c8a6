//! The one way a pipeline file becomes a [`Pipeline`]: the server, `gantry run` and
//! `gantry validate` all call [`load_file`].
//!
//! It reads the file from where it lives — a path of a [`Source`] (a commit's tree, a working
//! tree) or a file named on the command line — under [`MAX_PIPELINE_BYTES`], learning the size
//! before reading (a git blob's header, a file's metadata), so an oversized file costs no memory.
//! It then decodes the bytes as UTF-8, locating the first invalid byte at its line and column, and
//! hands the text to validation. Every problem of the file's contents is a [`Diagnostic`]; only a
//! missing file and a failed read are errors of their own. It never touches a host.

use std::path::Path;

use super::diagnostic::{Diagnostic, Diagnostics};
use super::{validate, Pipeline, SecretNames, MAX_PIPELINE_BYTES};
use crate::source::{read_at_most, Limited, Source, SourceError};

/// Where a pipeline file is read from.
#[derive(Debug, Clone, Copy)]
pub enum PipelineFile<'a> {
    /// A path of the source the pipeline is checked against, read as that source reads its files:
    /// `.gantry.yml` of a commit (the server) or of a working tree (`gantry run`).
    InSource(&'a str),
    /// A file on this machine that the user named (`gantry validate PATH`); symlinks are followed.
    Path(&'a Path),
}

/// Why [`load_file`] returned no pipeline.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The source has no file at that path.
    #[error("no {file} in {place}")]
    Missing { file: String, place: String },
    /// The file could not be read.
    #[error(transparent)]
    Read(#[from] SourceError),
    /// The file was read and is not a valid pipeline: too large, not UTF-8 text, or not valid.
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// Read, decode and validate a pipeline file. `file_name` names the file in diagnostics; `source`
/// is the tree the pipeline runs on, against which pushed paths and templates are checked.
pub fn load_file(
    file_name: &str,
    file: PipelineFile<'_>,
    source: &dyn Source,
    secrets: SecretNames<'_>,
) -> Result<Pipeline, LoadError> {
    let bytes = match read_limited(file, source)? {
        Limited::Read(bytes) => bytes,
        Limited::TooLarge { size } => return Err(LoadError::Invalid(validate::too_large(file_name, size))),
    };
    let text = decode(file_name, &bytes).map_err(LoadError::Invalid)?;
    validate::load(file_name, text, source, secrets).map_err(LoadError::Invalid)
}

/// The size step: the file's bytes when it holds at most [`MAX_PIPELINE_BYTES`], else only its
/// size, learnt before any of it is read.
fn read_limited(file: PipelineFile<'_>, source: &dyn Source) -> Result<Limited, LoadError> {
    let limit = u64::try_from(MAX_PIPELINE_BYTES).unwrap_or(u64::MAX);
    match file {
        PipelineFile::InSource(path) => source
            .read_file_at_most(path, limit)?
            .ok_or_else(|| LoadError::Missing { file: path.to_owned(), place: source.describe() }),
        PipelineFile::Path(path) => Ok(read_at_most(path, limit)?),
    }
}

/// The decoding step: the bytes as text, or one diagnostic at the line and column of the first
/// byte that is not UTF-8.
fn decode<'a>(file_name: &str, bytes: &'a [u8]) -> Result<&'a str, Diagnostics> {
    std::str::from_utf8(bytes).map_err(|error| {
        // The prefix is valid UTF-8 by definition of `valid_up_to`.
        let valid = std::str::from_utf8(&bytes[..error.valid_up_to()]).unwrap_or_default();
        let line = valid.matches('\n').count() + 1;
        let column = valid.rsplit('\n').next().map_or(0, |last| last.chars().count()) + 1;
        Diagnostics(vec![Diagnostic {
            file: file_name.to_owned(),
            line,
            column,
            message: "the file is not valid UTF-8".to_owned(),
            hint: Some("save the file as UTF-8 text".to_owned()),
        }])
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use super::*;
    use crate::pipeline::PIPELINE_FILE;
    use crate::source::{GitCommitSource, WorkDirSource};

    /// A valid pipeline whose third line holds a byte that is not UTF-8, after `  w`.
    fn not_utf8() -> Vec<u8> {
        let mut bytes = b"version: 1\nhosts:\n  w".to_vec();
        bytes.extend([0xff, b'\n']);
        bytes.extend(b"stages: [{name: a, host: w, run: x}]\n");
        bytes
    }

    /// A git repository in a temporary directory with one commit of `files` (path → contents),
    /// and the source of that commit.
    fn git_commit(files: &[(&str, &[u8])]) -> (tempfile::TempDir, GitCommitSource) {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init(dir.path()).unwrap();
        let mut tree = repo.treebuilder(None).unwrap();
        for (path, contents) in files {
            let blob = repo.blob(contents).unwrap();
            tree.insert(path, blob, git2::FileMode::Blob.into()).unwrap();
        }
        let tree = repo.find_tree(tree.write().unwrap()).unwrap();
        let signature = git2::Signature::now("Gantry Tests", "tests@gantry.invalid").unwrap();
        let commit = repo.commit(Some("HEAD"), &signature, &signature, "test commit", &tree, &[]).unwrap();
        let source = GitCommitSource { repo_path: dir.path().to_path_buf(), commit, label: "test".to_owned() };
        (dir, source)
    }

    /// A working directory holding `files` (path → contents).
    fn work_dir(files: &[(&str, &[u8])]) -> (tempfile::TempDir, WorkDirSource) {
        let dir = tempfile::tempdir().unwrap();
        for (path, contents) in files {
            std::fs::write(dir.path().join(path), contents).unwrap();
        }
        let source = WorkDirSource { root: dir.path().to_path_buf() };
        (dir, source)
    }

    fn diagnostics(result: Result<Pipeline, LoadError>) -> String {
        match result {
            Err(LoadError::Invalid(diagnostics)) => diagnostics.to_string(),
            other => panic!("expected diagnostics, got {other:?}"),
        }
    }

    const NOT_UTF8: &str = "ci.yml:3:4: error: the file is not valid UTF-8\n  hint: save the file as UTF-8 text";

    #[test]
    fn invalid_utf8_is_located_in_a_commit_a_working_tree_and_a_named_file() {
        let bytes = not_utf8();
        let (_repo, commit) = git_commit(&[(PIPELINE_FILE, &bytes)]);
        assert_eq!(
            diagnostics(load_file("ci.yml", PipelineFile::InSource(PIPELINE_FILE), &commit, SecretNames::Any)),
            NOT_UTF8
        );

        let (dir, tree) = work_dir(&[(PIPELINE_FILE, &bytes)]);
        assert_eq!(
            diagnostics(load_file("ci.yml", PipelineFile::InSource(PIPELINE_FILE), &tree, SecretNames::Any)),
            NOT_UTF8
        );
        let named = dir.path().join(PIPELINE_FILE);
        assert_eq!(diagnostics(load_file("ci.yml", PipelineFile::Path(&named), &tree, SecretNames::Any)), NOT_UTF8);
    }

    #[test]
    fn a_valid_file_loads_from_each_place() {
        let text = b"version: 1\nhosts: {web: }\nstages: [{name: a, host: web, run: x}]\n";
        let (_repo, commit) = git_commit(&[(PIPELINE_FILE, text)]);
        let (dir, tree) = work_dir(&[(PIPELINE_FILE, text)]);
        let named = dir.path().join(PIPELINE_FILE);
        for (file, source) in [
            (PipelineFile::InSource(PIPELINE_FILE), &commit as &dyn Source),
            (PipelineFile::InSource(PIPELINE_FILE), &tree),
            (PipelineFile::Path(&named), &tree),
        ] {
            let pipeline = load_file(PIPELINE_FILE, file, source, SecretNames::Any).unwrap();
            assert_eq!(pipeline.stages[0].name, "a", "{file:?}");
        }
    }

    #[test]
    fn a_missing_file_is_not_a_diagnostic() {
        let (_repo, commit) = git_commit(&[("README", b"no pipeline here")]);
        let error =
            load_file(PIPELINE_FILE, PipelineFile::InSource(PIPELINE_FILE), &commit, SecretNames::Any).unwrap_err();
        assert!(matches!(&error, LoadError::Missing { file, .. } if file == PIPELINE_FILE), "{error:?}");
        assert!(error.to_string().starts_with("no .gantry.yml in test@"), "{error}");

        let (dir, tree) = work_dir(&[]);
        let error =
            load_file(PIPELINE_FILE, PipelineFile::InSource(PIPELINE_FILE), &tree, SecretNames::Any).unwrap_err();
        assert!(matches!(error, LoadError::Missing { .. }), "{error:?}");
        let error =
            load_file("x.yml", PipelineFile::Path(&dir.path().join("x.yml")), &tree, SecretNames::Any).unwrap_err();
        assert!(matches!(error, LoadError::Read(SourceError::Io { .. })), "a named file that is not there: {error:?}");
    }

    fn too_large(size: usize) -> String {
        format!(
            "{PIPELINE_FILE}:1:1: error: the file is {size} bytes; pipeline files are limited to {MAX_PIPELINE_BYTES} \
             bytes\n  hint: move long scripts into files of the repository and run them from `run:`"
        )
    }

    #[test]
    fn a_file_over_the_limit_is_refused_from_each_place() {
        let size = MAX_PIPELINE_BYTES + 1;
        let bytes = vec![b'#'; size];
        let (_repo, commit) = git_commit(&[(PIPELINE_FILE, &bytes)]);
        let (dir, tree) = work_dir(&[(PIPELINE_FILE, &bytes)]);
        let named = dir.path().join(PIPELINE_FILE);
        for (file, source) in [
            (PipelineFile::InSource(PIPELINE_FILE), &commit as &dyn Source),
            (PipelineFile::InSource(PIPELINE_FILE), &tree),
            (PipelineFile::Path(&named), &tree),
        ] {
            assert_eq!(
                diagnostics(load_file(PIPELINE_FILE, file, source, SecretNames::Any)),
                too_large(size),
                "{file:?}"
            );
        }
        // At the limit exactly, the file is read (and then judged as YAML: one comment, no hosts).
        let bytes = vec![b'#'; MAX_PIPELINE_BYTES];
        let (_repo, commit) = git_commit(&[(PIPELINE_FILE, &bytes)]);
        let found =
            diagnostics(load_file(PIPELINE_FILE, PipelineFile::InSource(PIPELINE_FILE), &commit, SecretNames::Any));
        assert!(!found.contains("limited to"), "{found}");
    }

    /// The size step reads the blob's header only. The object stored under the blob's id is
    /// swapped for another blob of the same size, so its header is intact but reading its contents
    /// fails git's hash check: the loader still refuses the file for its size alone.
    #[test]
    fn a_blob_over_the_limit_is_refused_without_reading_it() {
        let size = MAX_PIPELINE_BYTES + 1;
        let (repo_dir, commit) = git_commit(&[(PIPELINE_FILE, &vec![b'#'; size])]);
        let repo = git2::Repository::open(repo_dir.path()).unwrap();
        let object = |id: git2::Oid| -> PathBuf {
            let hex = id.to_string();
            repo.path().join("objects").join(&hex[..2]).join(&hex[2..])
        };
        let blob = repo.head().unwrap().peel_to_tree().unwrap().get_name(PIPELINE_FILE).unwrap().id();
        let impostor = repo.blob(&vec![b'!'; size]).unwrap();
        std::fs::set_permissions(object(blob), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::copy(object(impostor), object(blob)).unwrap();
        let reopened = git2::Repository::open(repo_dir.path()).unwrap();
        assert_eq!(reopened.odb().unwrap().read_header(blob).unwrap(), (size, git2::ObjectType::Blob));
        assert!(reopened.find_blob(blob).is_err(), "the blob's contents cannot be read");

        let result = load_file(PIPELINE_FILE, PipelineFile::InSource(PIPELINE_FILE), &commit, SecretNames::Any);
        assert_eq!(diagnostics(result), too_large(size));
    }
}
