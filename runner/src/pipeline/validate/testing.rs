//! What the validation tests share: a [`Source`] held in memory, and helpers that load a file
//! written as lines and give its diagnostics as `line:column: message`. Test code only.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

pub(super) use crate::pipeline::load;
use crate::source::{EntryKind, Source, SourceError};

/// A source held in memory: repository-relative path → contents. Directories are implied by
/// the paths of their files.
pub(super) struct MemorySource(BTreeMap<String, Vec<u8>>);

impl MemorySource {
    pub(super) fn with_files(paths: &[&str]) -> MemorySource {
        MemorySource(paths.iter().map(|path| ((*path).to_owned(), b"content\n".to_vec())).collect())
    }
}

impl Source for MemorySource {
    fn describe(&self) -> String {
        "test@0123456".to_owned()
    }

    fn kind(&self, path: &str) -> Result<Option<EntryKind>, SourceError> {
        if self.0.contains_key(path) {
            return Ok(Some(EntryKind::File));
        }
        let prefix = format!("{path}/");
        Ok(self.0.keys().any(|key| key.starts_with(&prefix)).then_some(EntryKind::Dir))
    }

    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, SourceError> {
        Ok(self.0.get(path).cloned())
    }

    fn archive(&self, path: &str, prefix: &str, out: &mut dyn Write) -> Result<(), SourceError> {
        let io = |source| SourceError::Io { path: PathBuf::from(path), source };
        let base = path.rsplit('/').next().unwrap_or(path);
        let mut builder = tar::Builder::new(out);
        for (name, contents) in &self.0 {
            let entry = if path.is_empty() {
                name.clone()
            } else if name == path {
                base.to_owned()
            } else if let Some(rest) = name.strip_prefix(&format!("{path}/")) {
                format!("{base}/{rest}")
            } else {
                continue;
            };
            let mut header = tar::Header::new_gnu();
            header.set_size(contents.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, format!("{prefix}/{entry}"), contents.as_slice()).map_err(io)?;
        }
        builder.finish().map_err(io)
    }
}

/// The lines joined with `\n`: line `n` of the file is `lines[n - 1]`.
pub(super) fn file(lines: &[&str]) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// The diagnostics of `text` as `line:column: message`, in order.
pub(super) fn problems(text: &str, source: &MemorySource) -> Vec<String> {
    let diagnostics = load(".gantry.yml", text, source).expect_err("the file should be refused");
    diagnostics.0.iter().map(|d| format!("{}:{}: {}", d.line, d.column, d.message)).collect()
}

/// The hint of the only diagnostic of `text`.
pub(super) fn only_hint(text: &str, source: &MemorySource) -> String {
    let diagnostics = load(".gantry.yml", text, source).expect_err("the file should be refused");
    assert_eq!(diagnostics.0.len(), 1, "{diagnostics}");
    diagnostics.0[0].hint.clone().unwrap_or_default()
}

pub(super) fn no_files() -> MemorySource {
    MemorySource::with_files(&[])
}

/// A valid file of one host and one stage, to which a test appends its own lines.
pub(super) const MINIMAL: &[&str] =
    &["version: 1", "hosts:", "  web:", "stages:", "  - name: unit", "    host: web", "    run: make test"];
