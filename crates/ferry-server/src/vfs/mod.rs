//! The home-directory jail: virtual paths and file operations beneath a
//! directory handle. No wire types: SFTP or FTP front ends can reuse it.

mod jail;
mod path;

use std::io;

pub use jail::Jail;
pub use path::{MAX_NAME, MAX_PATH, PARTIAL_DIR, RESERVED_PREFIX, VirtualPath, check_name, fuzz_virtual_path};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
            EntryKind::Other => "other",
        }
    }
}

/// A directory entry: name, kind, size, modification time (Unix seconds), mode bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
    pub mtime: i64,
    pub mode: u32,
}

/// What went wrong, named by outcome. Messages carry virtual paths only,
/// never the host's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VfsError {
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("{0}: not a directory")]
    NotADirectory(String),
    #[error("{0}: is a directory")]
    IsADirectory(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}: directory not empty")]
    DirectoryNotEmpty(String),
    #[error("invalid name: {0}")]
    InvalidName(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("outside the home directory: {0}")]
    OutsideHome(String),
    #[error("invalid move: {0}")]
    InvalidMove(String),
    #[error("i/o error: {0}")]
    Io(io::Error),
}

impl VfsError {
    /// The one mapping from OS errors, with the virtual path for the message.
    pub fn from_io(e: io::Error, vp: &VirtualPath) -> VfsError {
        let p = vp.to_string();
        use rustix::io::Errno;
        match Errno::from_io_error(&e) {
            Some(Errno::NOENT) => return VfsError::NotFound(p),
            Some(Errno::NOTDIR) => return VfsError::NotADirectory(p),
            Some(Errno::ISDIR) => return VfsError::IsADirectory(p),
            Some(Errno::EXIST) => return VfsError::AlreadyExists(format!("{p} already exists")),
            Some(Errno::NOTEMPTY) => return VfsError::DirectoryNotEmpty(p),
            // openat2(RESOLVE_BENEATH) answers EXDEV for an escape; ELOOP for a symlink it will not follow.
            Some(Errno::XDEV) | Some(Errno::LOOP) => return VfsError::OutsideHome(p),
            Some(Errno::NAMETOOLONG) => return VfsError::InvalidName(format!("{p}: name too long")),
            Some(Errno::ACCESS) | Some(Errno::PERM) => return VfsError::PermissionDenied(p),
            _ => {}
        }
        match e.kind() {
            io::ErrorKind::NotFound => VfsError::NotFound(p),
            io::ErrorKind::AlreadyExists => VfsError::AlreadyExists(format!("{p} already exists")),
            io::ErrorKind::NotADirectory => VfsError::NotADirectory(p),
            io::ErrorKind::IsADirectory => VfsError::IsADirectory(p),
            io::ErrorKind::DirectoryNotEmpty => VfsError::DirectoryNotEmpty(p),
            // cap-std's "a path led outside of the filesystem".
            io::ErrorKind::PermissionDenied if e.to_string().contains("outside") => VfsError::OutsideHome(p),
            io::ErrorKind::PermissionDenied => VfsError::PermissionDenied(p),
            _ => VfsError::Io(e),
        }
    }

    /// The stable code of this error on the wire.
    pub fn code(&self) -> &'static str {
        match self {
            VfsError::NotFound(_) => "not_found",
            VfsError::NotADirectory(_) => "not_a_directory",
            VfsError::IsADirectory(_) => "is_a_directory",
            VfsError::AlreadyExists(_) => "already_exists",
            VfsError::DirectoryNotEmpty(_) => "directory_not_empty",
            VfsError::InvalidName(_) => "invalid_name",
            VfsError::PermissionDenied(_) => "permission_denied",
            VfsError::OutsideHome(_) => "outside_home",
            VfsError::InvalidMove(_) => "invalid_move",
            VfsError::Io(_) => "io_error",
        }
    }
}

impl From<io::Error> for VfsError {
    fn from(e: io::Error) -> Self {
        VfsError::from_io(e, &VirtualPath::root())
    }
}
