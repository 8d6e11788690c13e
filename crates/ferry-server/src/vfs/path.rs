//! Virtual paths: what a client names, parsed into components that cannot
//! express an escape. `..` beyond the root, NUL bytes, backslashes, control
//! characters, overlong names and the server's reserved `.ferry*` names are
//! refused here; the kernel then enforces the home again below (see `jail`).

use std::fmt;
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
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
            return Err(VfsError::InvalidName(format!("{name:?} is not a plain name")));
        }
        check_name(name)?;
        let mut parts = self.parts.clone();
        parts.push(name.to_string());
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
        if input.contains('\\') {
            return Err(VfsError::InvalidName("path contains a backslash".into()));
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
                name => {
                    check_name(name)?;
                    parts.push(name.to_string());
                }
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

    /// The path relative to the home, for the `Dir` of the jail (`.` for the root).
    pub fn to_relative_path(&self) -> PathBuf {
        if self.parts.is_empty() { PathBuf::from(".") } else { self.parts.iter().collect() }
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

/// Checks one name a user may create or address.
pub fn check_name(name: &str) -> Result<(), VfsError> {
    if name.len() > MAX_NAME {
        return Err(VfsError::InvalidName(format!("name longer than {MAX_NAME} bytes")));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(VfsError::InvalidName(format!("{name:?}: control characters are not allowed in names")));
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(VfsError::InvalidName(format!("{name}: names starting with {RESERVED_PREFIX} are reserved")));
    }
    Ok(())
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
/// subdirectory; a parsed path never holds `.`, `..`, `/` or NUL in a component.
pub fn fuzz_virtual_path(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else { return };
    for base in [VirtualPath::root(), VirtualPath { parts: vec!["a".into(), "b".into()] }] {
        if let Ok(vp) = base.join_user_input(input) {
            for c in vp.components() {
                assert!(!c.is_empty() && c != "." && c != ".." && !c.contains(['/', '\0', '\\']));
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
        assert!(matches!(p("a\\b"), Err(VfsError::InvalidName(_))));
        assert!(matches!(p("a\0b"), Err(VfsError::InvalidName(_))));
        assert!(matches!(p(".ferry-partial/x"), Err(VfsError::InvalidName(_))));
        assert!(matches!(p(&"n".repeat(256)), Err(VfsError::InvalidName(_))));
        assert!(matches!(p("tab\there"), Err(VfsError::InvalidName(_))));
    }
}
