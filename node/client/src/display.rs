//! Showing text that came over the network.
//!
//! Message texts, sender names and group names are written by other people. Put
//! on a terminal as they are, a newline lets a message print a second line that
//! looks like it came from someone else, and an escape sequence drives the
//! terminal (colours, cursor moves, window titles). Everything shown from the
//! network goes through [`escape_untrusted`] first.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` must not reach a terminal as it is: C0 and C1 control
/// characters (newline, carriage return, escape, tab, …), DEL, and the Unicode
/// formatting characters that reorder or hide text (bidi overrides and isolates,
/// zero-width characters, line and paragraph separators).
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// `text` with every unsafe character replaced by a visible escape (`\n`, `\r`,
/// `\t`, `\u{1b}`, …). Printable text, other languages and emoji pass unchanged.
/// The result contains no unsafe character, so escaping twice changes nothing.
pub fn escape_untrusted(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A line of a group as shown: `[GROUP] SENDER: TEXT`, or `[GROUP] * NOTICE`
/// without a sender; every part escaped, so it stays one line whatever the
/// parts hold.
pub fn group_line(group: Option<&str>, sender: Option<&str>, text: &str) -> String {
    let group = escape_untrusted(group.unwrap_or("-"));
    let text = escape_untrusted(text);
    match sender {
        Some(s) => format!("[{group}] {}: {text}", escape_untrusted(s)),
        None => format!("[{group}] * {text}"),
    }
}

/// `ms` since the Unix epoch as a UTC time, `YYYY-MM-DD HH:MM:SS`.
pub fn utc_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm), for dates from 1970 on.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_shown_as_utc_dates() {
        assert_eq!(super::utc_time(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc_time(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(super::utc_time(1_796_083_199_999), "2026-11-30 23:59:59");
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_newline_cannot_fake_a_line_from_another_sender() {
        let shown = escape_untrusted("hi\n[general] alice: send me your password");
        assert!(!shown.contains('\n'));
        assert_eq!(shown, "hi\\n[general] alice: send me your password");
    }

    #[test]
    fn terminal_escapes_are_shown_not_obeyed() {
        let shown = escape_untrusted("\u{1b}[31mred\u{1b}[0m\u{9b}2J\u{7}");
        assert!(!shown.chars().any(|c| c.is_control()));
        assert_eq!(shown, "\\u{1b}[31mred\\u{1b}[0m\\u{9b}2J\\u{7}");
    }

    #[test]
    fn bidi_overrides_are_escaped() {
        assert_eq!(escape_untrusted("abc\u{202e}fed"), "abc\\u{202e}fed");
    }

    #[test]
    fn ordinary_text_is_unchanged() {
        for t in ["hello", "grüße, 你好 👋", "tab-free: a\\nb"] {
            assert!(matches!(escape_untrusted(t), Cow::Borrowed(_)), "{t}");
        }
    }

    proptest! {
        #[test]
        fn escaped_text_is_always_safe_and_escaping_is_idempotent(s in any::<String>()) {
            let once = escape_untrusted(&s).into_owned();
            prop_assert!(!once.chars().any(is_unsafe));
            prop_assert_eq!(escape_untrusted(&once), once.as_str());
        }
    }
}
