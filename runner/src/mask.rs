//! Secret masking: every occurrence of a secret's value in a build's output becomes [`MASK`]
//! before the output leaves the runner.
//!
//! A [`Masker`] is built once per build from the values of the secrets the build received. It
//! looks for each value, each line of a multi-line value (a key file prints line by line), and
//! the base64 forms of the value (standard and URL-safe, with and without padding), all at once
//! with one Aho-Corasick automaton, longest match first. It works on bytes, so output that is not
//! UTF-8 is masked too. It never logs, prints or keeps anything but its automaton.
//!
//! Masking a stream that is cut into pieces (a line longer than the transport's line limit) is
//! the line splitter's job: it masks before it cuts and never cuts inside the last
//! [`Masker::longest`]` - 1` bytes, so no value can straddle a cut (see `transport::LineSplitter`).

use std::borrow::Cow;
use std::fmt;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;

/// What a secret's value is replaced with.
pub const MASK: &str = "••••••";

/// Finds and replaces the values of a build's secrets. Cheap to clone (the automaton is shared).
#[derive(Clone, Default)]
pub struct Masker {
    automaton: Option<std::sync::Arc<AhoCorasick>>,
    longest: usize,
}

impl fmt::Debug for Masker {
    /// Says how many patterns there are, never what they are.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let patterns = self.automaton.as_ref().map_or(0, |a| a.patterns_len());
        f.debug_struct("Masker").field("patterns", &patterns).finish()
    }
}

impl Masker {
    /// A masker for `values`. Empty values (and empty lines of multi-line values) are ignored:
    /// there is nothing in them to hide.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Masker {
        let mut patterns: Vec<String> = Vec::new();
        for value in values {
            if value.is_empty() {
                continue;
            }
            patterns.push(value.to_string());
            if value.contains('\n') {
                let lines = value.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.trim().is_empty());
                patterns.extend(lines.map(str::to_string));
            }
            for engine in [base64::engine::general_purpose::STANDARD, base64::engine::general_purpose::URL_SAFE] {
                let encoded = engine.encode(value);
                let unpadded = encoded.trim_end_matches('=').to_string();
                if unpadded != encoded {
                    patterns.push(unpadded);
                }
                patterns.push(encoded);
            }
        }
        patterns.sort();
        patterns.dedup();
        if patterns.is_empty() {
            return Masker::default();
        }
        let longest = patterns.iter().map(String::len).max().unwrap_or(0);
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .expect("secret patterns are plain strings, well under the automaton's size limits");
        Masker { automaton: Some(std::sync::Arc::new(automaton)), longest }
    }

    /// Whether there is anything to mask.
    pub fn is_empty(&self) -> bool {
        self.automaton.is_none()
    }

    /// The length in bytes of the longest pattern: a value can start no earlier than this many
    /// bytes minus one before the end of a buffer and still run past it.
    pub fn longest(&self) -> usize {
        self.longest
    }

    /// `text` with every secret replaced by [`MASK`].
    pub fn mask<'t>(&self, text: &'t str) -> Cow<'t, str> {
        match &self.automaton {
            Some(automaton) if automaton.is_match(text) => {
                Cow::Owned(automaton.replace_all(text, &vec![MASK; automaton.patterns_len()]))
            }
            _ => Cow::Borrowed(text),
        }
    }

    /// `bytes` with every secret replaced by [`MASK`], in place.
    pub fn mask_bytes(&self, bytes: &mut Vec<u8>) {
        if let Some(automaton) = &self.automaton {
            if automaton.is_match(bytes.as_slice()) {
                *bytes = automaton.replace_all_bytes(bytes, &vec![MASK.as_bytes(); automaton.patterns_len()]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_occurrence_of_every_value_is_masked() {
        let masker = Masker::new(["hunter2", "s3cr3t-token"]);
        assert_eq!(
            masker.mask("pw=hunter2 token=s3cr3t-token again hunter2"),
            format!("pw={MASK} token={MASK} again {MASK}")
        );
        assert_eq!(masker.mask("nothing here"), "nothing here");
        assert!(matches!(masker.mask("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn the_base64_forms_are_masked() {
        let masker = Masker::new(["secret???~~~"]);
        let standard = base64::engine::general_purpose::STANDARD.encode("secret???~~~");
        let url_safe = base64::engine::general_purpose::URL_SAFE.encode("secret???~~~");
        assert_ne!(standard, url_safe, "the value is chosen so the two encodings differ");
        assert_eq!(masker.mask(&format!("a {standard} b {url_safe}")), format!("a {MASK} b {MASK}"));
        let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode("pad me");
        assert_eq!(Masker::new(["pad me"]).mask(&format!("[{unpadded}]")), format!("[{MASK}]"));
    }

    #[test]
    fn each_line_of_a_multi_line_value_is_masked_on_its_own() {
        let key = "-----BEGIN KEY-----\nAAAAbbbbCCCC\r\nddddEEEE\n-----END KEY-----\n";
        let masker = Masker::new([key]);
        assert_eq!(masker.mask("  AAAAbbbbCCCC"), format!("  {MASK}"));
        assert_eq!(masker.mask("ddddEEEE"), MASK);
    }

    #[test]
    fn the_longest_overlapping_value_wins() {
        let masker = Masker::new(["abc", "abcdef"]);
        assert_eq!(masker.mask("xabcdefx abcx"), format!("x{MASK}x {MASK}x"));
    }

    #[test]
    fn bytes_that_are_not_utf8_are_masked_too() {
        let masker = Masker::new(["hunter2"]);
        let mut bytes = b"\xff\xfehunter2\xff".to_vec();
        masker.mask_bytes(&mut bytes);
        assert_eq!(bytes, [b"\xff\xfe".as_slice(), MASK.as_bytes(), b"\xff"].concat());
    }

    #[test]
    fn empty_values_mask_nothing_and_debug_shows_no_value() {
        let masker = Masker::new(["", ""]);
        assert!(masker.is_empty());
        assert_eq!(masker.mask("text"), "text");
        let debug = format!("{:?}", Masker::new(["hunter2"]));
        assert!(!debug.contains("hunter2") && !debug.contains("aHVudGVyMg"), "{debug}");
    }
}
