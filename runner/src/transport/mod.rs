//! How commands and files reach a host. A transport is handed out by a provider for one host and
//! is the only way the executor touches that host.
//!
//! Paths given to a transport are relative to the host's home directory (`~`); a transport never
//! lets them escape it. Output is delivered line by line through [`LineSplitter`], so every
//! transport caps and decodes output the same way.

pub mod local;
pub mod ssh;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::event::Stream;
use crate::mask::Masker;

/// After a script exits, the forwarding of what its pipes still hold: it stops when they fall
/// silent for `idle` or when `limit` has passed. The time spent waiting for the listener to take a
/// line (the server still storing a backlog of output) does not count against `limit`: the limit
/// is for output that keeps arriving (a chatty background process), not for output the script
/// already wrote, which is all forwarded however slowly it is stored.
pub(crate) struct Drain {
    deadline: tokio::time::Instant,
    idle: Duration,
}

impl Drain {
    pub fn new(limit: Duration, idle: Duration) -> Drain {
        Drain { deadline: tokio::time::Instant::now() + limit, idle }
    }

    /// When to stop waiting for the next output.
    pub fn idle_until(&self) -> tokio::time::Instant {
        (tokio::time::Instant::now() + self.idle).min(self.deadline)
    }

    /// Whether the limit has passed (waits for the listener not counted).
    pub fn past_limit(&self) -> bool {
        tokio::time::Instant::now() >= self.deadline
    }

    /// Hand `line` on; the wait for the listener moves the deadline on by as long.
    pub async fn forward(&mut self, output: &mpsc::Sender<OutputLine>, line: OutputLine) {
        let started = tokio::time::Instant::now();
        // A closed output only means nobody listens.
        let _ = output.send(line).await;
        self.deadline += started.elapsed();
    }
}

/// Longest line kept whole; longer lines are cut into several.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("i/o error during {op}: {source}")]
    Io { op: String, source: std::io::Error },
    #[error("connection to host lost: {0}")]
    ConnectionLost(String),
    #[error("path {0:?} leaves the host's home directory")]
    PathEscapes(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("host key refused: {0}")]
    HostKeyMismatch(String),
    #[error("authentication refused: {0}")]
    Auth(String),
    #[error("{0}")]
    Other(String),
}

/// One command to run on a host.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// A shell script, run as `sh -e -c SCRIPT`.
    pub script: String,
    /// Working directory relative to the host's home (`""` is the home itself).
    pub cwd: String,
    /// Added to the host's base environment (HOME, PATH, USER, LANG, ...).
    pub env: BTreeMap<String, String>,
    /// The secrets this step names, added to its environment after `env`. Kept apart from `env`
    /// so that printing a request never prints them.
    pub secrets: BTreeMap<String, SecretString>,
    /// Masks the build's secrets in the output before a line leaves the transport.
    pub mask: Masker,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecOutcome {
    /// The script ended with this exit code (128 + signal number when killed by a signal).
    Exited(i32),
    /// The timeout elapsed; everything the script started in its process group was killed.
    TimedOut,
    /// The cancellation token fired; same clean-up as a timeout.
    Cancelled,
}

/// One decoded output line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    pub stream: Stream,
    pub text: String,
}

#[async_trait]
pub trait Transport: Send + Sync {
    /// Run a script, sending each output line to `output` as it is produced, until it exits, its
    /// timeout elapses or `cancel` fires.
    async fn exec(
        &self,
        request: &ExecRequest,
        output: &mpsc::Sender<OutputLine>,
        cancel: &CancellationToken,
    ) -> Result<ExecOutcome, TransportError>;

    /// Unpack a tar archive into `dest` (relative to home; created if missing).
    async fn upload_tar(&self, dest: &str, archive: Vec<u8>) -> Result<(), TransportError>;

    /// Write one file (parents created), replacing any previous one.
    async fn write_file(&self, path: &str, contents: Vec<u8>) -> Result<(), TransportError>;

    /// Read a file if it exists, at most `max_bytes` of it.
    async fn read_file(&self, path: &str, max_bytes: usize) -> Result<Option<Vec<u8>>, TransportError>;
}

/// `path` as a relative path that stays inside a host's home: no root, no `..`. Every transport
/// checks paths it is given through this one function.
pub(crate) fn relative(path: &str) -> Result<PathBuf, TransportError> {
    let mut rel = PathBuf::new();
    for part in Path::new(path).components() {
        match part {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(TransportError::PathEscapes(path.to_string()));
            }
        }
    }
    Ok(rel)
}

/// Cuts a byte stream into lines: splits on `\n`, drops a trailing `\r`, cuts lines longer than
/// [`MAX_LINE_BYTES`], masks the build's secrets, and replaces invalid UTF-8 and control
/// characters other than tab and escape so binary output is stored safely. Escape stays: the
/// dashboard shows colour sequences as colours and drops every other escape sequence.
///
/// Masking happens on the bytes before a line is cut: when an overlong line is cut, the last
/// [`Masker::longest`]` - 1` bytes stay for the next line, so a secret that straddles the cut (or
/// arrives in two writes) is still seen whole.
pub struct LineSplitter {
    stream: Stream,
    pending: Vec<u8>,
    mask: Masker,
}

impl LineSplitter {
    pub fn new(stream: Stream, mask: Masker) -> LineSplitter {
        LineSplitter { stream, pending: Vec::new(), mask }
    }

    /// Feed bytes; returns the complete lines they finish.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<OutputLine> {
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                lines.push(self.take());
            } else {
                self.pending.push(b);
                if self.pending.len() >= MAX_LINE_BYTES {
                    lines.extend(self.cut());
                }
            }
        }
        lines
    }

    /// The unterminated rest, if any, at end of stream.
    pub fn finish(&mut self) -> Option<OutputLine> {
        (!self.pending.is_empty()).then(|| self.take())
    }

    /// Cut an overlong pending line, keeping back the bytes a secret could still be running
    /// through; nothing when masking made it short again.
    fn cut(&mut self) -> Option<OutputLine> {
        self.mask.mask_bytes(&mut self.pending);
        if self.pending.len() < MAX_LINE_BYTES {
            return None;
        }
        let keep = self.mask.longest().saturating_sub(1).min(MAX_LINE_BYTES / 2);
        let rest = self.pending.split_off(self.pending.len() - keep);
        let line = self.take();
        self.pending = rest;
        Some(line)
    }

    fn take(&mut self) -> OutputLine {
        let mut bytes = std::mem::take(&mut self.pending);
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        self.mask.mask_bytes(&mut bytes);
        let text = String::from_utf8_lossy(&bytes)
            .chars()
            .map(|c| if c.is_control() && c != '\t' && c != '\u{1b}' { '\u{FFFD}' } else { c })
            .collect();
        OutputLine { stream: self.stream, text }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_for_a_slow_listener_does_not_use_up_the_drain_limit() {
        let line = |text: &str| OutputLine { stream: Stream::Stdout, text: text.into() };
        let limit = Duration::from_millis(100);
        let mut drain = Drain::new(limit, Duration::from_secs(3600));
        let deadline = tokio::time::Instant::now() + limit;
        let (output, mut listener) = mpsc::channel(1);
        output.send(line("backlog")).await.unwrap();
        // The listener takes the backlog only after the limit has passed.
        let slow = tokio::spawn(async move {
            tokio::time::sleep_until(deadline + limit).await;
            let first = listener.recv().await.unwrap();
            (first, listener)
        });
        drain.forward(&output, line("still to store")).await;
        let (first, mut listener) = slow.await.unwrap();
        assert_eq!(first.text, "backlog");
        assert_eq!(listener.recv().await.unwrap().text, "still to store");
        // The wait moved the deadline on: the drain goes on for what arrives next.
        assert!(drain.idle_until() > tokio::time::Instant::now(), "the limit was used up by the wait");
        assert!(drain.idle_until() >= deadline + limit);
    }

    #[test]
    fn splits_lines_and_keeps_the_unterminated_rest() {
        let mut s = LineSplitter::new(Stream::Stdout, Masker::default());
        let lines = s.push(b"one\r\ntw");
        assert_eq!(lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(), ["one"]);
        assert!(s.push(b"o").is_empty());
        assert_eq!(s.finish().unwrap().text, "two");
        assert!(s.finish().is_none());
    }

    #[test]
    fn binary_output_becomes_replacement_characters_but_escapes_stay() {
        let mut s = LineSplitter::new(Stream::Stderr, Masker::default());
        let lines = s.push(b"a\x00b\xff\x07\x1b[0m\tc\xc2\x9b\n");
        assert_eq!(lines[0].text, "a\u{FFFD}b\u{FFFD}\u{FFFD}\u{1b}[0m\tc\u{FFFD}");
    }

    #[test]
    fn overlong_lines_are_cut() {
        let mut s = LineSplitter::new(Stream::Stdout, Masker::default());
        let lines = s.push(&vec![b'x'; MAX_LINE_BYTES * 2 + 5]);
        assert_eq!(lines.len(), 2);
        assert_eq!(s.finish().unwrap().text.len(), 5);
    }

    #[test]
    fn a_secret_is_masked_when_it_arrives_in_pieces() {
        let mut s = LineSplitter::new(Stream::Stdout, Masker::new(["hunter2"]));
        assert!(s.push(b"pw=hun").is_empty());
        let lines = s.push(b"ter2 done\n");
        assert_eq!(lines[0].text, format!("pw={} done", crate::mask::MASK));
    }

    #[test]
    fn a_secret_across_the_cut_of_an_overlong_line_is_masked() {
        let secret = "s3cr3t-value-0123456789";
        let mut s = LineSplitter::new(Stream::Stdout, Masker::new([secret]));
        // The secret starts 5 bytes before the line limit, so a plain cut would split it.
        let mut bytes = vec![b'x'; MAX_LINE_BYTES - 5];
        bytes.extend_from_slice(secret.as_bytes());
        bytes.extend_from_slice(b" tail\n");
        let lines = s.push(&bytes);
        let all: String = lines.iter().map(|l| l.text.as_str()).collect();
        assert!(!all.contains("s3cr3t") && !all.contains("0123456789"), "a piece of the secret leaked");
        assert!(all.contains(crate::mask::MASK) && all.ends_with(" tail"), "{}", &all[all.len() - 40..]);
        assert!(lines.iter().all(|l| l.text.len() <= MAX_LINE_BYTES + crate::mask::MASK.len()));
    }
}
