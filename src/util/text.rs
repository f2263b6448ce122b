//! Text from untrusted sources (image.json, a guest's console) made safe for a terminal:
//! control characters (terminal escapes, carriage returns, C1 codes) shown escaped.

use std::borrow::Cow;

fn is_unsafe(c: char, keep_newlines: bool) -> bool {
    c.is_control() && c != '\t' && !(keep_newlines && c == '\n')
}

fn escape(s: &str, keep_newlines: bool) -> Cow<'_, str> {
    if !s.chars().any(|c| is_unsafe(c, keep_newlines)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c, keep_newlines) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` with every control character but newline and tab escaped (`\u{1b}`): for multi-line
/// human output.
pub fn for_terminal(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

/// `s` with every control character, newlines included, escaped: for one value on a line.
pub fn one_line(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_reach_the_screen_only_escaped() {
        assert_eq!(
            for_terminal("a\x1b[2Jb\nc\r\u{9b}"),
            "a\\u{1b}[2Jb\nc\\r\\u{9b}"
        );
        assert_eq!(one_line("a\nb\tc"), "a\\nb\tc");
        assert!(matches!(for_terminal("plain\n"), Cow::Borrowed(_)));
    }
}
