//! How the dashboard spells times, durations, commits and log text for people.
//!
//! Pure functions from numbers and strings to display strings; they know nothing of builds or
//! templates, and they never produce markup (the templates escape whatever these return).

use std::time::{Duration, UNIX_EPOCH};

/// How many characters of a commit sha the lists show, as `git log --oneline` does.
pub const SHORT_SHA_LEN: usize = 7;

const MS_PER_SECOND: i64 = 1_000;
const MS_PER_MINUTE: i64 = 60 * MS_PER_SECOND;
const MS_PER_HOUR: i64 = 60 * MS_PER_MINUTE;
const MS_PER_DAY: i64 = 24 * MS_PER_HOUR;

/// Ages below this read "just now": clocks of a server and its pages differ by that much anyway.
const JUST_NOW_MS: i64 = 5 * MS_PER_SECOND;

/// A duration in milliseconds, as short as stays useful: `350ms`, `1.2s`, `3m 04s`, `2h 05m`.
/// Negative durations (clock steps) read as `0ms`.
pub fn format_duration_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < MS_PER_SECOND {
        format!("{ms}ms")
    } else if ms < MS_PER_MINUTE {
        // Tenths are truncated, not rounded, so 59.99s never reads as "60.0s".
        let tenths = ms / 100;
        format!("{}.{}s", tenths / 10, tenths % 10)
    } else if ms < MS_PER_HOUR {
        format!("{}m {:02}s", ms / MS_PER_MINUTE, (ms % MS_PER_MINUTE) / MS_PER_SECOND)
    } else {
        format!("{}h {:02}m", ms / MS_PER_HOUR, (ms % MS_PER_HOUR) / MS_PER_MINUTE)
    }
}

/// How long ago `at_ms` was at `now_ms`: `just now`, `42s ago`, `5m ago`, `3h ago`, `12d ago`.
pub fn format_age(at_ms: i64, now_ms: i64) -> String {
    let age = now_ms.saturating_sub(at_ms);
    if age < JUST_NOW_MS {
        "just now".to_string()
    } else if age < MS_PER_MINUTE {
        format!("{}s ago", age / MS_PER_SECOND)
    } else if age < MS_PER_HOUR {
        format!("{}m ago", age / MS_PER_MINUTE)
    } else if age < MS_PER_DAY {
        format!("{}h ago", age / MS_PER_HOUR)
    } else {
        format!("{}d ago", age / MS_PER_DAY)
    }
}

/// A unix-milliseconds instant in UTC to the second: `2024-05-02 09:43:20 UTC`.
pub fn format_timestamp(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    let rfc3339 = humantime::format_rfc3339_seconds(at).to_string();
    // `2024-05-02T09:43:20Z` → `2024-05-02 09:43:20 UTC`.
    format!("{} UTC", rfc3339.trim_end_matches('Z').replacen('T', " ", 1))
}

/// The first [`SHORT_SHA_LEN`] characters of a sha (all of it when shorter).
pub fn short_sha(sha: &str) -> &str {
    match sha.char_indices().nth(SHORT_SHA_LEN) {
        Some((end, _)) => &sha[..end],
        None => sha,
    }
}

/// A stored log line made fit for a `<pre>`: ANSI escape sequences (colours, cursor moves) are
/// dropped and other control characters are shown as their Unicode control pictures (`␛`, `␀`),
/// so binary output stays visible and harmless. Tabs are kept. HTML escaping is the template's.
pub fn display_log_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' if chars.peek() == Some(&'[') => {
                // A CSI sequence: ESC [ parameters and intermediates, then one final byte in
                // 0x40..=0x7E.
                chars.next();
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            }
            '\t' => out.push(c),
            '\u{0}'..='\u{1f}' => out.push(char::from_u32(0x2400 + c as u32).unwrap_or('\u{fffd}')),
            '\u{7f}' => out.push('\u{2421}'),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_would_write_them() {
        assert_eq!(format_duration_ms(0), "0ms");
        assert_eq!(format_duration_ms(350), "350ms");
        assert_eq!(format_duration_ms(1_200), "1.2s");
        assert_eq!(format_duration_ms(1_299), "1.2s");
        assert_eq!(format_duration_ms(59_990), "59.9s");
        assert_eq!(format_duration_ms(60_000), "1m 00s");
        assert_eq!(format_duration_ms(184_000), "3m 04s");
        assert_eq!(format_duration_ms(3_599_999), "59m 59s");
        assert_eq!(format_duration_ms(7_500_000), "2h 05m");
        assert_eq!(format_duration_ms(-5), "0ms");
    }

    #[test]
    fn ages_count_back_from_now() {
        let now = 1_714_643_000_000;
        assert_eq!(format_age(now, now), "just now");
        assert_eq!(format_age(now + 1_000, now), "just now");
        assert_eq!(format_age(now - 42_000, now), "42s ago");
        assert_eq!(format_age(now - 5 * 60_000, now), "5m ago");
        assert_eq!(format_age(now - 3 * 3_600_000, now), "3h ago");
        assert_eq!(format_age(now - 12 * 86_400_000, now), "12d ago");
    }

    #[test]
    fn timestamps_are_utc_to_the_second() {
        assert_eq!(format_timestamp(1_714_643_000_123), "2024-05-02 09:43:20 UTC");
        assert_eq!(format_timestamp(-1), "1970-01-01 00:00:00 UTC");
    }

    #[test]
    fn short_shas_are_seven_characters() {
        assert_eq!(short_sha("6b1f53303a732ccc8c6aae6640399827c15250e3"), "6b1f533");
        assert_eq!(short_sha("abc"), "abc");
        assert_eq!(short_sha("ééééééééé"), "ééééééé");
    }

    #[test]
    fn log_text_loses_colours_and_shows_control_characters() {
        assert_eq!(display_log_text("\u{1b}[1;31merror\u{1b}[0m: x"), "error: x");
        assert_eq!(display_log_text("a\u{0}b\u{7}c\td\u{7f}"), "a\u{2400}b\u{2407}c\td\u{2421}");
        assert_eq!(display_log_text("lone \u{1b} escape"), "lone \u{241b} escape");
        assert_eq!(display_log_text("<b>kept</b> \u{fffd}"), "<b>kept</b> \u{fffd}");
    }
}
