//! Virtual paths: what a client names, parsed into components that cannot
//! express an escape. `..` beyond the root, NUL bytes, overlong names and
//! the server's reserved `.ferry*` names are refused here; the kernel then
//! enforces the home again below (see `jail`).
//!
//! Names on the wire are text, but a file name on disk is bytes: a tab, a
//! newline or bytes that are not UTF-8 (made by a remote command or the
//! server's owner) are written in an escaped form that round-trips
//! (PROTOCOL.md, "Names"): `\\` is a backslash, `\xHH` one byte; control
//! characters and bytes that are not UTF-8 are always escaped. Components
//! are kept in the canonical escaped form, so equal names compare equal;
//! [`VirtualPath::to_relative_path`] gives the bytes for the kernel.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::VfsError;

/// Longest single name, in bytes (the usual filesystem limit).
pub const MAX_NAME: usize = 255;
/// Longest whole path, in bytes.
pub const MAX_PATH: usize = 4096;
/// Names starting with this are the server's own (partial uploads).
pub const RESERVED_PREFIX: &str = ".ferry";
/// The hidden directory of partial uploads at the root of each home.
pub const PARTIAL_DIR: &str = ".ferry-partial";

/// A normalized path beneath a user's home; shown to users as `/a/b`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct VirtualPath {
    parts: Vec<String>,
}

impl VirtualPath {
    pub fn root() -> Self {
        VirtualPath::default()
    }

    /// Parses input relative to the root.
    pub fn parse(input: &str) -> Result<VirtualPath, VfsError> {
        VirtualPath::root().join_user_input(input)
    }

    /// Appends one plain name (no separators, no `..`).
    pub fn join_name(&self, name: &str) -> Result<VirtualPath, VfsError> {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(VfsError::InvalidName(format!("{name:?} is not a plain name")));
        }
        let name = canonical_name(name)?;
        let mut parts = self.parts.clone();
        parts.push(name);
        Ok(VirtualPath { parts })
    }

    pub fn is_root(&self) -> bool {
        self.parts.is_empty()
    }

    /// Resolves user input against `self` (the current directory): absolute
    /// input (`/x`) starts at the home, anything else at `self`.
    pub fn join_user_input(&self, input: &str) -> Result<VirtualPath, VfsError> {
        if input.len() > MAX_PATH {
            return Err(VfsError::InvalidName(format!("path longer than {MAX_PATH} bytes")));
        }
        if input.contains('\0') {
            return Err(VfsError::InvalidName("path contains a NUL byte".into()));
        }
        let mut parts = if input.starts_with('/') { Vec::new() } else { self.parts.clone() };
        for part in input.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(VfsError::OutsideHome(format!("{input}: goes above the home directory")));
                    }
                }
                name => parts.push(canonical_name(name)?),
            }
        }
        let vp = VirtualPath { parts };
        if vp.to_string().len() > MAX_PATH {
            return Err(VfsError::InvalidName(format!("path longer than {MAX_PATH} bytes")));
        }
        Ok(vp)
    }

    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().map(String::as_str)
    }

    pub fn parent(&self) -> Option<VirtualPath> {
        let (_, rest) = self.parts.split_last()?;
        Some(VirtualPath { parts: rest.to_vec() })
    }

    pub fn file_name(&self) -> Option<&str> {
        self.parts.last().map(String::as_str)
    }

    /// The path relative to the home, as the bytes on disk, for the `Dir`
    /// of the jail (`.` for the root).
    pub fn to_relative_path(&self) -> PathBuf {
        if self.parts.is_empty() {
            return PathBuf::from(".");
        }
        self.parts.iter().map(|p| OsStr::from_bytes(&unescape(p)).to_os_string()).collect()
    }

    /// The final component as the bytes on disk.
    pub fn file_name_bytes(&self) -> Option<PathBuf> {
        self.parts.last().map(|p| PathBuf::from(OsStr::from_bytes(&unescape(p))))
    }

    pub fn starts_with(&self, other: &VirtualPath) -> bool {
        self.parts.len() >= other.parts.len() && self.parts[..other.parts.len()] == other.parts[..]
    }

    /// The rest of `self` below `prefix`, if it is beneath it.
    pub fn strip_prefix(&self, prefix: &VirtualPath) -> Option<VirtualPath> {
        self.starts_with(prefix).then(|| VirtualPath { parts: self.parts[prefix.parts.len()..].to_vec() })
    }

    /// `self` followed by the components of `rest` (both already checked).
    pub fn join_relative(&self, rest: &VirtualPath) -> VirtualPath {
        VirtualPath { parts: self.parts.iter().chain(&rest.parts).cloned().collect() }
    }
}

/// Checks one name a user may create or address (in its escaped form).
pub fn check_name(name: &str) -> Result<(), VfsError> {
    canonical_name(name).map(drop)
}

/// The name's bytes written in the canonical escaped form: `\\` for a
/// backslash, `\xHH` for a control character's bytes and for bytes that
/// are not UTF-8, everything else as is.
pub fn escape_name(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\x{b:02x}"));
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The bytes of a name in escaped form, already checked by [`canonical_name`].
fn unescape(name: &str) -> Vec<u8> {
    try_unescape(name).unwrap_or_else(|| name.as_bytes().to_vec())
}

fn try_unescape(name: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(name.len());
    let mut bytes = name.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next()? {
            b'\\' => out.push(b'\\'),
            b'x' => {
                let hex = [bytes.next()?, bytes.next()?];
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Parses a name a user sent into its canonical escaped form, refusing
/// what no name may be once unescaped: empty, `.`, `..`, holding `/` or
/// NUL, longer than [`MAX_NAME`] bytes, or one of the server's reserved
/// `.ferry*` names; and a backslash that starts no escape.
pub fn canonical_name(name: &str) -> Result<String, VfsError> {
    let shown: String = name.chars().take(64).collect();
    if name.chars().any(char::is_control) {
        // Raw, they would reach terminals; escaped (`\\x0a`), they address a name.
        return Err(VfsError::InvalidName(format!(
            "{shown:?}: control characters in names must be written escaped (\\xHH)"
        )));
    }
    let bytes = try_unescape(name).ok_or_else(|| {
        VfsError::InvalidName(format!("{shown:?}: a backslash must start \\\\ or \\xHH (PROTOCOL.md, Names)"))
    })?;
    if bytes.len() > MAX_NAME {
        return Err(VfsError::InvalidName(format!("name longer than {MAX_NAME} bytes")));
    }
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') || bytes.contains(&0) {
        return Err(VfsError::InvalidName(format!("{shown:?} is not a plain name")));
    }
    if bytes.starts_with(RESERVED_PREFIX.as_bytes()) {
        let shown = escape_name(&bytes);
        return Err(VfsError::InvalidName(format!("{shown}: names starting with {RESERVED_PREFIX} are reserved")));
    }
    Ok(escape_name(&bytes))
}

impl fmt::Display for VirtualPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.parts.is_empty() {
            return f.write_str("/");
        }
        for p in &self.parts {
            write!(f, "/{p}")?;
        }
        Ok(())
    }
}

/// Fuzzing entry point: any bytes as a user path, from the root and from a
/// subdirectory; a parsed path never holds `.`, `..`, `/` or NUL in a
/// component's bytes, nor a raw control character in its escaped form.
pub fn fuzz_virtual_path(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else { return };
    for base in [VirtualPath::root(), VirtualPath { parts: vec!["a".into(), "b".into()] }] {
        if let Ok(vp) = base.join_user_input(input) {
            for c in vp.components() {
                let bytes = unescape(c);
                assert!(!bytes.is_empty() && bytes != b"." && bytes != b".." && !bytes.contains(&b'/'));
                assert!(!bytes.contains(&0) && !c.chars().any(char::is_control));
            }
            assert!(!vp.to_relative_path().is_absolute());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<String, VfsError> {
        VirtualPath::root().join_user_input(s).map(|v| v.to_string())
    }

    #[test]
    fn normalizes() {
        assert_eq!(p("a//b/./c/").unwrap(), "/a/b/c");
        assert_eq!(p("a/b/../c").unwrap(), "/a/c");
        assert_eq!(p("/").unwrap(), "/");
        assert_eq!(p("").unwrap(), "/");
        let cwd = VirtualPath::root().join_user_input("x/y").unwrap();
        assert_eq!(cwd.join_user_input("../z").unwrap().to_string(), "/x/z");
        assert_eq!(cwd.join_user_input("/z").unwrap().to_string(), "/z");
        assert_eq!(cwd.to_relative_path(), PathBuf::from("x/y"));
    }

    #[test]
    fn refuses() {
        assert!(matches!(p(".."), Err(VfsError::OutsideHome(_))));
        assert!(matches!(p("a/../.."), Err(VfsError::OutsideHome(_))));
        assert!(matches!(p("a\\b"), Err(VfsError::InvalidName(_))), "a lone backslash starts no escape");
        assert!(matches!(p("a\0b"), Err(VfsError::InvalidName(_))));
        assert!(matches!(p(".ferry-partial/x"), Err(VfsError::InvalidName(_))));
        assert!(matches!(p(&"n".repeat(256)), Err(VfsError::InvalidName(_))));
        // Escapes cannot smuggle what plain text may not say.
        for sneaky in ["\\x2e\\x2e", "a\\x2fb", "a\\x00", "\\x2eferry-partial", "\\x2e", "\\xZZ", "a\\"] {
            assert!(matches!(p(sneaky), Err(VfsError::InvalidName(_))), "{sneaky}");
        }
    }

    #[test]
    fn names_round_trip_through_the_escaped_form() {
        for bytes in [&b"tab\there"[..], b"new\nline", b"\xff\xferaw", b"back\\slash", b"caf\xc3\xa9", b"\x1b[31m"] {
            let escaped = escape_name(bytes);
            assert!(!escaped.chars().any(char::is_control), "{escaped:?}");
            assert_eq!(canonical_name(&escaped).unwrap(), escaped);
            let vp = VirtualPath::parse(&escaped).unwrap();
            assert_eq!(vp.to_relative_path().as_os_str().as_bytes(), bytes);
        }
        assert_eq!(escape_name(b"tab\there"), "tab\\x09here");
        assert_eq!(escape_name("back\\slash".as_bytes()), "back\\\\slash");
        // Any spelling of a byte is one name.
        assert_eq!(p("\\x61b").unwrap(), "/ab");
        assert_eq!(p("a\\x4A").unwrap(), "/aJ");
        assert!(p("a\\x+f").is_err(), "two hex digits, nothing else");
    }
}
