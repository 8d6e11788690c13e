//! The jail: every file operation of a session is done relative to one
//! directory handle, opened once at login and never widened. cap-std resolves
//! paths beneath it with `openat2(RESOLVE_BENEATH)` on Linux, so a symlink that
//! points out (whoever made it) or a directory swapped for a symlink between
//! check and use is refused by the kernel, not by string checks.
//!
//! Calls are blocking: run them through `spawn_blocking`. The `_cached`
//! ones are not: they answer only what the kernel has in memory, for the
//! small lookups and reads that a thread hand-off would cost more than.

use std::io;
use std::path::Path;

use cap_std::ambient_authority;
use cap_std::fs::{Dir, Metadata, OpenOptions};
use rustix::fs::{Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::io::ReadWriteFlags;

use super::path::{RESERVED_PREFIX, VirtualPath, check_name, escape_name};
use super::{Entry, EntryKind, VfsError};

#[derive(Debug)]
pub struct Jail {
    root: Dir,
    /// The server's reserved directory, opened once per session.
    internal: std::sync::OnceLock<(String, Dir)>,
    /// Held from the stat to the unlink or rename that frees what the stat
    /// measured. Sessions of one user share this jail, so two of them never
    /// both count the same replaced or removed file against the quota.
    accounting: std::sync::Mutex<()>,
}

fn entry_from(name: String, m: &Metadata) -> Entry {
    use cap_std::fs::MetadataExt;
    let ft = m.file_type();
    let kind = if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File
    } else {
        EntryKind::Other
    };
    Entry {
        name,
        kind,
        size: if kind == EntryKind::Dir { 0 } else { m.len() },
        mtime: m.mtime(),
        mode: m.mode() & 0o7777,
    }
}

/// Whether `file` lives on a filesystem kept in memory (tmpfs, ramfs), whose
/// reads never wait for a device.
fn in_memory(file: &std::fs::File) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    // `f_type` is an i64 here and narrower on some architectures.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::fstatfs(file).is_ok_and(|s| matches!(s.f_type as i64, TMPFS_MAGIC | RAMFS_MAGIC))
}

/// The entry of an open regular file.
fn file_entry(vp: &VirtualPath, m: &std::fs::Metadata) -> Entry {
    Entry {
        name: vp.file_name().unwrap_or("/").to_string(),
        kind: EntryKind::File,
        size: m.len(),
        mtime: std::os::unix::fs::MetadataExt::mtime(m),
        mode: std::os::unix::fs::MetadataExt::mode(m) & 0o7777,
    }
}

fn err_at(vp: &VirtualPath) -> impl Fn(io::Error) -> VfsError + '_ {
    move |e| VfsError::from_io(e, vp)
}

impl Jail {
    /// Opens the home once; everything afterwards is relative to it.
    pub fn open(home: &Path) -> Result<Jail, VfsError> {
        let root =
            Dir::open_ambient_dir(home, ambient_authority()).map_err(|e| VfsError::from_io(e, &VirtualPath::root()))?;
        Ok(Jail { root, internal: std::sync::OnceLock::new(), accounting: std::sync::Mutex::new(()) })
    }

    /// The directory handle for `vp` (the root itself for `/`).
    fn dir(&self, vp: &VirtualPath) -> Result<Dir, VfsError> {
        if vp.is_root() { self.root.try_clone() } else { self.root.open_dir(vp.to_relative_path()) }.map_err(err_at(vp))
    }

    /// The parent directory's handle and the final name.
    fn parent_and_name(&self, vp: &VirtualPath) -> Result<(Dir, std::path::PathBuf), VfsError> {
        let name =
            vp.file_name_bytes().ok_or_else(|| VfsError::PermissionDenied("/: the home directory itself".into()))?;
        let parent = vp.parent().unwrap_or_default();
        Ok((self.dir(&parent)?, name))
    }

    pub fn stat(&self, vp: &VirtualPath) -> Result<Entry, VfsError> {
        if vp.is_root() {
            let m = self.root.dir_metadata().map_err(err_at(vp))?;
            return Ok(entry_from("/".into(), &m));
        }
        let m = self.root.symlink_metadata(vp.to_relative_path()).map_err(err_at(vp))?;
        Ok(entry_from(vp.file_name().unwrap_or("/").to_string(), &m))
    }

    /// The entries of a directory, sorted by name.
    pub fn list(&self, vp: &VirtualPath) -> Result<Vec<Entry>, VfsError> {
        let dir = self.dir(vp)?;
        let mut out = Vec::new();
        for entry in dir.entries().map_err(err_at(vp))? {
            let entry = entry.map_err(err_at(vp))?;
            // Every name is listed, in the escaped form that addresses it
            // (a tab, a newline, bytes that are not UTF-8); only the
            // server's reserved names are not.
            let name = escape_name(std::os::unix::ffi::OsStrExt::as_bytes(entry.file_name().as_os_str()));
            if check_name(&name).is_err() {
                continue;
            }
            // An entry removed meanwhile is simply not listed.
            let Ok(m) = entry.metadata() else { continue };
            out.push(entry_from(name, &m));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Succeeds when `vp` is a directory one can `cd` into.
    pub fn ensure_dir(&self, vp: &VirtualPath) -> Result<(), VfsError> {
        self.dir(vp).map(drop)
    }

    pub fn mkdir(&self, vp: &VirtualPath, parents: bool) -> Result<(), VfsError> {
        if vp.is_root() {
            return if parents { Ok(()) } else { Err(VfsError::AlreadyExists("/".into())) };
        }
        if parents {
            self.root.create_dir_all(vp.to_relative_path()).map_err(err_at(vp))?;
            // create_dir_all succeeds on an existing symlink to a directory; make sure it is one.
            return self.ensure_dir(vp);
        }
        let (parent, name) = self.parent_and_name(vp)?;
        let name = name.as_path();
        parent.create_dir(name).map_err(err_at(vp))
    }

    /// Removes a file (or a symlink, never its target). Returns the bytes freed.
    pub fn remove_file(&self, vp: &VirtualPath) -> Result<u64, VfsError> {
        let (parent, name) = self.parent_and_name(vp)?;
        let name = name.as_path();
        let _counting = self.lock_accounting();
        let m = parent.symlink_metadata(name).map_err(err_at(vp))?;
        if m.is_dir() {
            return Err(VfsError::IsADirectory(vp.to_string()));
        }
        parent.remove_file(name).map_err(err_at(vp))?;
        Ok(if m.is_file() { m.len() } else { 0 })
    }

    pub fn remove_dir(&self, vp: &VirtualPath) -> Result<(), VfsError> {
        let (parent, name) = self.parent_and_name(vp)?;
        let name = name.as_path();
        let m = parent.symlink_metadata(name).map_err(err_at(vp))?;
        if !m.is_dir() {
            return Err(VfsError::NotADirectory(vp.to_string()));
        }
        parent.remove_dir(name).map_err(err_at(vp))
    }

    /// Removes a file or a whole tree (never following symlinks: a link is
    /// removed, its target is not). Returns (bytes, files) freed.
    pub fn remove_tree(&self, vp: &VirtualPath) -> Result<(u64, u64), VfsError> {
        self.remove_tree_counted(vp).map(|(bytes, files, _)| (bytes, files))
    }

    /// [`Self::remove_tree`], also counting the directories removed (the
    /// tree's own root included).
    pub fn remove_tree_counted(&self, vp: &VirtualPath) -> Result<(u64, u64, u64), VfsError> {
        let (parent, name) = self.parent_and_name(vp)?;
        let name = name.as_path();
        let _counting = self.lock_accounting();
        let m = parent.symlink_metadata(name).map_err(err_at(vp))?;
        if !m.is_dir() {
            parent.remove_file(name).map_err(err_at(vp))?;
            return Ok((if m.is_file() { m.len() } else { 0 }, 1, 0));
        }
        let dir = parent.open_dir(name).map_err(err_at(vp))?;
        let (bytes, files, dirs) = usage_of(&dir).map_err(err_at(vp))?;
        parent.remove_dir_all(name).map_err(err_at(vp))?;
        Ok((bytes, files, dirs + 1))
    }

    /// Renames within the home. Refuses to replace an existing entry unless
    /// `overwrite` (then only a file by a file). Returns the size of a file
    /// that was replaced, for the quota.
    pub fn rename(&self, from: &VirtualPath, to: &VirtualPath, overwrite: bool) -> Result<Option<u64>, VfsError> {
        if from.is_root() || to.is_root() {
            return Err(VfsError::PermissionDenied("the home directory itself cannot be moved or replaced".into()));
        }
        let (from_parent, from_name) = self.parent_and_name(from)?;
        let from_name = from_name.as_path();
        let src = from_parent.symlink_metadata(from_name).map_err(err_at(from))?;
        if from == to {
            // As mv(1): "are the same file". Never a no-op reported as a replacement.
            return Err(VfsError::InvalidMove(format!("cannot move {from} onto itself")));
        }
        if src.is_dir() && to.starts_with(from) {
            return Err(VfsError::InvalidMove(format!("cannot move {from} into itself ({to})")));
        }
        let (to_parent, to_name) = self.parent_and_name(to)?;
        let to_name = to_name.as_path();
        let _counting = self.lock_accounting();
        rename_at(&from_parent, from_name, &to_parent, to_name, overwrite, src.is_dir(), to)
    }

    /// Opens a file for reading; refuses anything but a regular file.
    pub fn open_read(&self, vp: &VirtualPath) -> Result<(std::fs::File, Entry), VfsError> {
        let file = self.open_regular(vp, OpenOptions::new().read(true))?;
        let m = file.metadata().map_err(err_at(vp))?;
        Ok((file, file_entry(vp, &m)))
    }

    /// Opens `vp` beneath the root only if the kernel can resolve the whole
    /// path from its caches (`RESOLVE_CACHED`, Linux 5.12): such a lookup
    /// never waits for a disk or a network filesystem, so it may run on an
    /// async worker. `None` on any failure (it would wait, an older kernel,
    /// or a real error such as a missing file or a symlink out of the home):
    /// the blocking call then does it again and reports. The jail is the
    /// kernel's, as in cap-std: `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`.
    fn open_cached(&self, vp: &VirtualPath, flags: OFlags) -> Option<std::fs::File> {
        if vp.is_root() {
            return None;
        }
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | ResolveFlags::CACHED;
        let fd =
            rustix::fs::openat2(&self.root, vp.to_relative_path(), flags | OFlags::CLOEXEC, Mode::empty(), resolve)
                .ok()?;
        Some(std::fs::File::from(fd))
    }

    /// [`Jail::stat`] when the kernel can answer from its caches; `None`
    /// when it cannot (see `open_cached`). Never blocks on I/O.
    pub fn stat_cached(&self, vp: &VirtualPath) -> Option<Entry> {
        // O_PATH | O_NOFOLLOW: the entry itself, a symlink not followed.
        let file = self.open_cached(vp, OFlags::PATH | OFlags::NOFOLLOW)?;
        let m = Metadata::from_just_metadata(file.metadata().ok()?);
        Some(entry_from(vp.file_name().unwrap_or("/").to_string(), &m))
    }

    /// A regular file's entry and, if it holds at most `max` bytes, its
    /// contents, when the kernel has all of it in memory: the lookup from
    /// its caches (see `open_cached`) and the reads with `RWF_NOWAIT`
    /// (pages already cached, else `EAGAIN`). `None` when it cannot be
    /// done that way; [`Jail::open_read`] then can. Never blocks on I/O.
    pub fn read_cached(&self, vp: &VirtualPath, max: u64) -> Option<(Entry, Option<Vec<u8>>)> {
        // O_NONBLOCK: a FIFO is not waited for (as in `open_regular`).
        let file = self.open_cached(vp, OFlags::RDONLY | OFlags::NONBLOCK)?;
        let m = file.metadata().ok()?;
        if !m.is_file() {
            return None;
        }
        let entry = file_entry(vp, &m);
        if entry.size > max {
            return Some((entry, None));
        }
        let mut data = vec![0u8; entry.size as usize];
        let mut flags = ReadWriteFlags::NOWAIT;
        let mut filled = 0;
        while filled < data.len() {
            let buf = &mut [io::IoSliceMut::new(&mut data[filled..])];
            match rustix::io::preadv2(&file, buf, filled as u64, flags) {
                // Shorter than its size a moment ago: what is there, as a
                // blocking read would have returned.
                Ok(0) => break,
                Ok(n) => filled += n,
                // tmpfs has no `RWF_NOWAIT` (Linux 6.18), and needs none:
                // its pages are memory.
                Err(rustix::io::Errno::OPNOTSUPP) if flags == ReadWriteFlags::NOWAIT && in_memory(&file) => {
                    flags = ReadWriteFlags::empty();
                }
                Err(_) => return None,
            }
        }
        data.truncate(filled);
        Some((entry, Some(data)))
    }

    /// Creates a new file; fails if anything exists under that name.
    pub fn create_new_file(&self, vp: &VirtualPath) -> Result<std::fs::File, VfsError> {
        self.open_regular(vp, OpenOptions::new().write(true).create_new(true))
    }

    /// Opens a file for writing, creating it if missing, never truncating.
    pub fn open_write(&self, vp: &VirtualPath) -> Result<std::fs::File, VfsError> {
        self.open_regular(vp, OpenOptions::new().write(true).create(true))
    }

    /// Opens an existing file for appending.
    pub fn open_append(&self, vp: &VirtualPath) -> Result<std::fs::File, VfsError> {
        self.open_regular(vp, OpenOptions::new().append(true))
    }

    /// Opens a regular file beneath the home. `O_NONBLOCK` keeps a FIFO
    /// planted by the server's owner from blocking the thread; it is cleared
    /// once the file is known to be regular.
    fn open_regular(&self, vp: &VirtualPath, opts: &mut OpenOptions) -> Result<std::fs::File, VfsError> {
        use cap_std::fs::OpenOptionsExt;
        if vp.is_root() {
            return Err(VfsError::IsADirectory("/".into()));
        }
        opts.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
        let file = self.root.open_with(vp.to_relative_path(), opts).map_err(err_at(vp))?;
        let m = file.metadata().map_err(err_at(vp))?;
        if m.is_dir() {
            return Err(VfsError::IsADirectory(vp.to_string()));
        }
        if !m.is_file() {
            return Err(VfsError::PermissionDenied(format!("{vp}: not a regular file")));
        }
        let file = file.into_std();
        let flags = rustix::fs::fcntl_getfl(&file).map_err(|e| VfsError::from_io(e.into(), vp))?;
        rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)
            .map_err(|e| VfsError::from_io(e.into(), vp))?;
        Ok(file)
    }

    /// The server's reserved directory at the root of the home (created on
    /// first use), which users can never name. One per jail, opened once.
    pub fn internal_dir(&self, name: &str) -> Result<&Dir, VfsError> {
        if !name.starts_with(RESERVED_PREFIX) || name.contains(['/', '\\', '\0']) || name.contains("..") {
            return Err(VfsError::InvalidName(format!("{name}: not an internal directory name")));
        }
        if let Some((cached, dir)) = self.internal.get() {
            return if cached == name {
                Ok(dir)
            } else {
                Err(VfsError::PermissionDenied(format!("{name}: only one internal directory per home")))
            };
        }
        let vp = VirtualPath::root();
        let mut builder = cap_std::fs::DirBuilder::new();
        cap_std::fs::DirBuilderExt::mode(&mut builder, 0o700);
        match self.root.create_dir_with(name, &builder) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(VfsError::from_io(e, &vp)),
        }
        let dir = self.root.open_dir(name).map_err(err_at(&vp))?;
        let (_, dir) = self.internal.get_or_init(|| (name.to_string(), dir));
        Ok(dir)
    }

    /// Moves `name` from an internal directory to `target`, atomically: the
    /// target appears whole or not at all.
    pub fn rename_from_internal(
        &self,
        internal: &Dir,
        name: &str,
        target: &VirtualPath,
        overwrite: bool,
    ) -> Result<Option<u64>, VfsError> {
        // renameat resolves `..` and `/` in a name relative to the directory
        // handle, outside any beneath-check: allow one plain name only.
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(VfsError::InvalidName(format!("{name:?} is not a plain name")));
        }
        let (to_parent, to_name) = self.parent_and_name(target)?;
        let to_name = to_name.as_path();
        check_name(target.file_name().unwrap_or_default())?;
        let _counting = self.lock_accounting();
        rename_at(internal, Path::new(name), &to_parent, to_name, overwrite, false, target)
    }

    fn lock_accounting(&self) -> std::sync::MutexGuard<'_, ()> {
        self.accounting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes and files in the whole home (partials included), for the quota.
    pub fn disk_usage(&self) -> Result<(u64, u64), VfsError> {
        self.disk_usage_counted().map(|(bytes, files, _)| (bytes, files))
    }

    /// Bytes, files and directories in the whole home (partials included).
    pub fn disk_usage_counted(&self) -> Result<(u64, u64, u64), VfsError> {
        usage_of(&self.root).map_err(err_at(&VirtualPath::root()))
    }
}

/// `renameat2` between two directory handles with single-component names, so
/// nothing is resolved outside them. NOREPLACE makes "refuse to overwrite"
/// race-free.
fn rename_at(
    from_dir: &Dir,
    from_name: &Path,
    to_dir: &Dir,
    to_name: &Path,
    overwrite: bool,
    src_is_dir: bool,
    to: &VirtualPath,
) -> Result<Option<u64>, VfsError> {
    use cap_std::fs::MetadataExt;
    let mut replaced = None;
    if let Ok(m) = to_dir.symlink_metadata(to_name) {
        // The same entry under another virtual path (through a link inside
        // the home, or a hard link): rename(2) does nothing and succeeds, so
        // nothing may be reported as replaced, or the quota would be
        // released for bytes still on disk.
        if let Ok(src) = from_dir.symlink_metadata(from_name)
            && (src.dev(), src.ino()) == (m.dev(), m.ino())
        {
            return Err(VfsError::InvalidMove(format!("{to} is the same file as the source")));
        }
        if !overwrite {
            return Err(VfsError::AlreadyExists(format!("{to} already exists")));
        }
        // The kernel's rules: a directory replaces only an empty directory,
        // a file never replaces a directory.
        if m.is_dir() && !src_is_dir {
            return Err(VfsError::IsADirectory(to.to_string()));
        }
        if src_is_dir && !m.is_dir() {
            return Err(VfsError::NotADirectory(to.to_string()));
        }
        replaced = Some(if m.is_file() { m.len() } else { 0 });
    }
    let flags = if overwrite { RenameFlags::empty() } else { RenameFlags::NOREPLACE };
    rustix::fs::renameat_with(from_dir, from_name, to_dir, to_name, flags).map_err(|e| match e {
        // The kernel's own refusal to move a directory beneath itself (seen
        // through a symlink inside the home).
        rustix::io::Errno::INVAL => VfsError::InvalidMove(format!("cannot move into itself ({to})")),
        e => VfsError::from_io(e.into(), to),
    })?;
    Ok(replaced)
}

/// (bytes, files) beneath a directory, without following symlinks, with an
/// explicit stack so that depth cannot overflow ours. The stack holds one
/// open listing per level being walked, never one handle per subdirectory
/// found: a directory with tens of thousands of subdirectories must not
/// exhaust the process's file descriptors.
fn usage_of(dir: &Dir) -> io::Result<(u64, u64, u64)> {
    let (mut bytes, mut files, mut dirs) = (0u64, 0u64, 0u64);
    let mut stack = vec![dir.entries()?];
    while let Some(listing) = stack.last_mut() {
        let Some(entry) = listing.next() else {
            stack.pop();
            continue;
        };
        let entry = entry?;
        let Ok(m) = entry.metadata() else { continue };
        if m.is_dir() {
            dirs += 1;
            // A subdirectory removed or unreadable meanwhile is skipped.
            if let Ok(sub) = entry.open_dir()
                && let Ok(listing) = sub.entries()
            {
                stack.push(listing);
            }
        } else {
            files += 1;
            if m.is_file() {
                bytes += m.len();
            }
        }
    }
    Ok((bytes, files, dirs))
}
