//! The pipeline fixtures of `tests/fixtures/pipelines/`, read as files to commit: the runner's
//! tests and the e2e suite build the same trees. Included by path from both.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// One file of a fixture: its path in the repo, its text, and whether it is executable.
pub struct FixtureFile {
    pub path: String,
    pub text: String,
    pub executable: bool,
}

/// Every file of the pipeline fixture `tests/fixtures/pipelines/NAME`.
pub fn fixture_tree(name: &str) -> Vec<FixtureFile> {
    fn walk(root: &Path, dir: &Path, files: &mut Vec<FixtureFile>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, files);
            } else {
                files.push(FixtureFile {
                    path: path.strip_prefix(root).unwrap().to_str().unwrap().to_string(),
                    text: std::fs::read_to_string(&path).unwrap(),
                    executable: path.metadata().unwrap().permissions().mode() & 0o111 != 0,
                });
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/pipelines").join(name);
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    assert!(!files.is_empty(), "no fixture at {}", root.display());
    files
}
