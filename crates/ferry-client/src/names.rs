//! Names that come from the server are untrusted input (issue 12, item 5):
//! a server, or whoever holds its key, chooses every name in a listing.
//!
//! - [`local_child`] is the only way a listed name becomes a local path: it
//!   accepts exactly one normal path component, so `get -r` and `mget` can
//!   never write outside the folder they were given.
//! - [`escape_controls`] is how any such name (or a message quoting one)
//!   reaches a terminal: control characters are shown as escapes, so a name
//!   cannot move the cursor, recolour or retitle the terminal.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use crate::ClientError;

/// Why a name from the server cannot be used as a local file name, or
/// `None` when it is one plain component.
pub fn unsafe_name_reason(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("an empty name");
    }
    if name.contains('\0') {
        return Some("a name with a NUL byte");
    }
    if name.contains('/') {
        return Some("a name with a slash");
    }
    if name == "." || name == ".." {
        return Some("a name that is a directory reference");
    }
    // Belt and braces: what is left must be a single normal component.
    let mut parts = Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(_)), None) => None,
        _ => Some("a name that is not a single path component"),
    }
}

/// `dir/name`, where `name` came from the server: refused unless `name` is a
/// single plain component, so the result is always directly inside `dir`.
pub fn local_child(dir: &Path, name: &str) -> Result<PathBuf, ClientError> {
    match unsafe_name_reason(name) {
        None => Ok(dir.join(name)),
        Some(why) => Err(ClientError::UnsafeName { name: escape_controls(name).into_owned(), why }),
    }
}

/// Characters that change how text around them is shown without being
/// control characters: the Unicode bidirectional overrides and isolates.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with control characters (C0, DEL, C1) and bidirectional controls
/// written as escapes (`\x1b`, `\n`, `\u{202e}`); borrowed when there are none.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() || is_bidi_control(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if (c as u32) < 0x100 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() || is_bidi_control(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        let dir = Path::new("/target");
        for bad in ["", ".", "..", "../evil", "a/b", "/etc/x", "a\0b", "x/..", "/"] {
            assert!(local_child(dir, bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "a b", ".hidden", "..x", "x..", "\x1b[31mred", "é", "a\\b"] {
            assert_eq!(local_child(dir, good).unwrap(), dir.join(good));
        }
    }

    #[test]
    fn controls_are_escaped_and_plain_text_is_borrowed() {
        assert!(matches!(escape_controls("plain é name"), Cow::Borrowed(_)));
        assert_eq!(escape_controls("\x1b[31mred\x07"), "\\x1b[31mred\\x07");
        assert_eq!(escape_controls("a\nb\tc\r\0"), "a\\nb\\tc\\r\\0");
        assert_eq!(escape_controls("\u{9b}x\u{7f}"), "\\x9bx\\x7f");
        assert_eq!(escape_controls("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        for c in (0u32..0x100).filter_map(char::from_u32) {
            let shown = escape_controls(&c.to_string()).into_owned();
            assert!(!shown.chars().any(char::is_control), "{c:?} shown as {shown:?}");
        }
    }
}
