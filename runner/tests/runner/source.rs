//! Sources: the tree of a git commit and a working directory, read and archived.

use std::collections::BTreeMap;
use std::path::PathBuf;

use gantry_runner::source::{read_at_most, EntryKind, GitCommitSource, Limited, Source, SourceError, WorkDirSource};

use crate::helpers::*;

/// What an archive holds: name → (kind, mode, contents or link target).
fn entries(archive: &[u8]) -> BTreeMap<String, (tar::EntryType, u32, String)> {
    let mut out = BTreeMap::new();
    for entry in tar::Archive::new(archive).entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().trim_end_matches('/').to_string();
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap();
        let body = if kind == tar::EntryType::Symlink {
            entry.link_name().unwrap().unwrap().to_string_lossy().into_owned()
        } else {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
            text
        };
        out.insert(name, (kind, mode, body));
    }
    out
}

fn archive(source: &dyn Source, path: &str, prefix: &str) -> Vec<u8> {
    let mut out = Vec::new();
    source.archive(path, prefix, &mut out).unwrap();
    out
}

fn sample_repo() -> (TestRepo, git2::Oid) {
    let repo = TestRepo::new();
    let commit = repo.commit(&[
        ("README.md", Entry::File("hello\n")),
        ("ci/build.sh", Entry::Executable("#!/bin/sh\necho built\n")),
        ("ci/seed.sql", Entry::File("INSERT 1;\n")),
        ("deep/a/b/c.txt", Entry::File("nested\n")),
        ("link-to-readme", Entry::Symlink("README.md")),
    ]);
    (repo, commit)
}

#[test]
fn a_git_commit_archives_with_modes_symlinks_and_nested_directories() {
    let (repo, commit) = sample_repo();
    // Later work in the repository must not leak into the commit's tree.
    std::fs::write(repo.path().join("README.md"), "changed, uncommitted\n").unwrap();
    repo.commit(&[("added-later.txt", Entry::File("later\n"))]);
    let source = GitCommitSource { repo_path: repo.path().to_path_buf(), commit, label: "shop".into() };

    let all = entries(&archive(&source, "", "src"));
    assert_eq!(all["src"].0, tar::EntryType::Directory);
    assert_eq!(all["src/README.md"], (tar::EntryType::Regular, 0o644, "hello\n".to_string()));
    assert_eq!(all["src/ci/build.sh"].1, 0o755);
    assert_eq!(all["src/ci"].0, tar::EntryType::Directory);
    assert_eq!(all["src/deep/a/b/c.txt"].2, "nested\n");
    assert_eq!(all["src/deep/a/b"].0, tar::EntryType::Directory);
    assert_eq!(all["src/link-to-readme"], (tar::EntryType::Symlink, 0o777, "README.md".to_string()));
    assert!(!all.contains_key("src/added-later.txt"), "only the commit's own tree");
    assert!(!all.keys().any(|k| k.contains(".git")), "{all:?}");

    let one_file = entries(&archive(&source, "ci/seed.sql", "data"));
    assert_eq!(one_file.keys().collect::<Vec<_>>(), ["data/seed.sql"]);
    let one_dir = entries(&archive(&source, "deep/a", "data"));
    assert_eq!(one_dir.keys().collect::<Vec<_>>(), ["data/a", "data/a/b", "data/a/b/c.txt"]);
    let bare = entries(&archive(&source, "ci", ""));
    assert!(bare.contains_key("ci/build.sh"), "{bare:?}");

    // The archive unpacks to the same tree, modes and symlink included.
    let out = tempfile::tempdir().unwrap();
    tar::Archive::new(&archive(&source, "", "src")[..]).unpack(out.path()).unwrap();
    let unpacked = out.path().join("src");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(unpacked.join("ci/build.sh")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(std::fs::read_link(unpacked.join("link-to-readme")).unwrap(), PathBuf::from("README.md"));
    assert_eq!(std::fs::read_to_string(unpacked.join("deep/a/b/c.txt")).unwrap(), "nested\n");
}

#[test]
fn a_git_commit_answers_kind_and_read_file() {
    let (repo, commit) = sample_repo();
    let source = GitCommitSource { repo_path: repo.path().to_path_buf(), commit, label: "shop".into() };
    assert!(source.describe().starts_with("shop@"), "{}", source.describe());
    assert_eq!(source.kind("").unwrap(), Some(EntryKind::Dir));
    assert_eq!(source.kind("ci").unwrap(), Some(EntryKind::Dir));
    assert_eq!(source.kind("ci/").unwrap(), Some(EntryKind::Dir));
    assert_eq!(source.kind("ci/seed.sql").unwrap(), Some(EntryKind::File));
    assert_eq!(source.kind("missing").unwrap(), None);
    assert_eq!(source.kind("../etc/passwd").unwrap(), None);
    assert_eq!(source.read_file("ci/seed.sql").unwrap().unwrap(), b"INSERT 1;\n");
    assert_eq!(source.read_file("ci").unwrap(), None);
    assert_eq!(source.read_file("nope.txt").unwrap(), None);
    assert!(matches!(source.archive("nope", "data", &mut Vec::new()), Err(SourceError::NotFound(p)) if p == "nope"));
}

#[test]
fn a_bare_mirror_serves_the_same_tree() {
    let (repo, commit) = sample_repo();
    let bare = tempfile::tempdir().unwrap();
    let mirror = git2::Repository::init_bare(bare.path()).unwrap();
    let mut remote = mirror.remote_anonymous(repo.path().to_str().unwrap()).unwrap();
    remote.fetch(&["+refs/heads/*:refs/heads/*"], None, None).unwrap();
    let source = GitCommitSource { repo_path: bare.path().to_path_buf(), commit, label: "mirror".into() };
    assert_eq!(source.read_file("README.md").unwrap().unwrap(), b"hello\n");
    assert!(entries(&archive(&source, "", "src")).contains_key("src/ci/build.sh"));
}

#[test]
fn a_working_directory_archives_without_git_and_keeps_modes_and_symlinks() {
    let (repo, _) = sample_repo();
    let source = WorkDirSource { root: repo.path().to_path_buf() };
    let all = entries(&archive(&source, "", "src"));
    assert!(!all.keys().any(|k| k.starts_with("src/.git")), "{all:?}");
    assert_eq!(all["src/ci/build.sh"].1, 0o755);
    assert_eq!(all["src/README.md"].2, "hello\n");
    assert_eq!(all["src/link-to-readme"].0, tar::EntryType::Symlink);
    assert_eq!(all["src/link-to-readme"].2, "README.md");
    assert_eq!(all["src/deep/a/b/c.txt"].2, "nested\n");

    assert_eq!(source.kind("ci").unwrap(), Some(EntryKind::Dir));
    assert_eq!(source.kind("ci/seed.sql").unwrap(), Some(EntryKind::File));
    assert_eq!(source.kind(".git").unwrap(), None);
    assert_eq!(source.kind("../").unwrap(), None);
    assert_eq!(source.read_file("ci/seed.sql").unwrap().unwrap(), b"INSERT 1;\n");
    assert_eq!(source.read_file(".git/HEAD").unwrap(), None);
    assert_eq!(entries(&archive(&source, "ci/seed.sql", "data")).keys().collect::<Vec<_>>(), ["data/seed.sql"]);
}

#[test]
fn a_git_commit_reads_under_a_limit_from_the_blob_size() {
    let (repo, commit) = sample_repo();
    let source = GitCommitSource { repo_path: repo.path().to_path_buf(), commit, label: "shop".into() };
    // `ci/seed.sql` is 10 bytes.
    assert_eq!(source.read_file_at_most("ci/seed.sql", 10).unwrap(), Some(Limited::Read(b"INSERT 1;\n".to_vec())));
    assert_eq!(source.read_file_at_most("ci/seed.sql", 9).unwrap(), Some(Limited::TooLarge { size: 10 }));
    assert_eq!(source.read_file_at_most("link-to-readme", 100).unwrap(), Some(Limited::Read(b"README.md".to_vec())));
    assert_eq!(source.read_file_at_most("ci", 100).unwrap(), None);
    assert_eq!(source.read_file_at_most("missing", 100).unwrap(), None);
    assert_eq!(source.read_file_at_most("../etc/passwd", 100).unwrap(), None);
}

#[test]
fn a_working_directory_reads_under_a_limit_from_the_file_size() {
    let (repo, _) = sample_repo();
    let source = WorkDirSource { root: repo.path().to_path_buf() };
    assert_eq!(source.read_file_at_most("ci/seed.sql", 10).unwrap(), Some(Limited::Read(b"INSERT 1;\n".to_vec())));
    assert_eq!(source.read_file_at_most("ci/seed.sql", 9).unwrap(), Some(Limited::TooLarge { size: 10 }));
    // A symlink reads as its target, as it does in a commit.
    assert_eq!(source.read_file_at_most("link-to-readme", 100).unwrap(), Some(Limited::Read(b"README.md".to_vec())));
    assert_eq!(source.read_file_at_most("link-to-readme", 5).unwrap(), Some(Limited::TooLarge { size: 9 }));
    assert_eq!(source.read_file_at_most("ci", 100).unwrap(), None);
    assert_eq!(source.read_file_at_most("missing", 100).unwrap(), None);
    assert_eq!(source.read_file_at_most(".git/HEAD", 100).unwrap(), None);

    // A file named by its path follows symlinks, and a missing one is an error that names it.
    let path = repo.path().join("link-to-readme");
    assert_eq!(read_at_most(&path, 6).unwrap(), Limited::Read(b"hello\n".to_vec()));
    assert_eq!(read_at_most(&path, 5).unwrap(), Limited::TooLarge { size: 6 });
    let missing = repo.path().join("missing");
    assert!(matches!(read_at_most(&missing, 5), Err(SourceError::Io { path, .. }) if path == missing));
}
