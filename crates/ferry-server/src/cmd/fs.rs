//! Navigation and file management: pwd, cd, ls, stat, mkdir, rm, rmdir, mv, df.

use ferry_proto::msg::ok_header;
use ferry_proto::resp;
use ferry_proto::{Entry, WireError};

use super::Reply;
use crate::home::Remove;
use crate::session::{Conn, Session, write_within};
use crate::vfs::{self, VirtualPath};

/// Bytes of entries per `ls` response frame: large directories stream in
/// pages well under the 64 KiB header cap (a name counts twice: JSON may
/// escape it).
const LS_PAGE_BYTES: usize = 24 * 1024;
/// Generous JSON size of one entry without its name.
const ENTRY_OVERHEAD: usize = 96;
/// Queued `ls` pages are written out past this (or the session's unsent cap,
/// if lower), under the idle timeout.
const LS_FLUSH_BYTES: usize = 256 * 1024;

pub fn wire_entry(e: &vfs::Entry) -> Entry {
    Entry { name: e.name.clone(), kind: e.kind.as_str().to_string(), size: e.size, mtime: e.mtime, mode: e.mode }
}

/// Resolves a path a client sent. Paths are also held to what an answer
/// naming them can carry under the configured header cap (`pwd` of a path
/// must fit in one frame: issue 13, every operation at the minimum cap).
pub fn resolve(session: &Session, path: &str) -> Result<VirtualPath, WireError> {
    let vp = session.cwd.join_user_input(path)?;
    // The path as JSON (quotes escaped) beside the few fields of an answer.
    let limit = session.core.config.limits.max_header_bytes.saturating_sub(96);
    let len = serde_json::to_string(&vp.to_string()).map_or(usize::MAX, |j| j.len());
    if len > limit {
        return Err(vfs::VfsError::InvalidName(format!(
            "path of {len} encoded bytes is longer than this server's {limit} (limits.max_header_bytes)"
        ))
        .into());
    }
    Ok(vp)
}

pub fn pwd(session: &mut Session, conn: &mut Conn, id: u64) -> Result<(), Reply> {
    conn.queue_header(&ok_header(id, &resp::PathAnswer { path: session.cwd.to_string() }, 0))?;
    Ok(())
}

pub async fn cd(session: &mut Session, conn: &mut Conn, id: u64, path: String) -> Result<(), Reply> {
    let target = resolve(session, &path)?;
    session.home.enter(&target).await?;
    session.cwd = target;
    conn.queue_header(&ok_header(id, &resp::PathAnswer { path: session.cwd.to_string() }, 0))?;
    Ok(())
}

pub async fn ls(session: &mut Session, conn: &mut Conn, id: u64, path: Option<String>) -> Result<(), Reply> {
    let (target, is_cwd) = match path {
        Some(p) => (resolve(session, &p)?, false),
        None => (session.cwd.clone(), true),
    };
    // The cwd is always listed as a directory: it may have been reached
    // through a link inside the home (`cd alias`), and if it has become
    // anything else meanwhile, that is the answer.
    let entries = if is_cwd { session.home.list_dir(&target).await? } else { session.home.list(&target).await? };
    // Pages are cut by encoded size, not by count: names may be up to 255
    // bytes, and every page must fit the header cap (configurable down to
    // 1 KiB: half of it, so that one long name still fits alone).
    let page_limit = LS_PAGE_BYTES.min(session.core.config.limits.max_header_bytes / 2);
    let flush_at = LS_FLUSH_BYTES.min(session.core.config.limits.max_unsent_bytes);
    let idle = session.core.config.idle_timeout();
    let mut page: Vec<Entry> = Vec::new();
    let mut page_bytes = 0;
    let last = entries.len();
    for (i, e) in entries.iter().enumerate() {
        let wire = wire_entry(e);
        let cost = wire.name.len() * 2 + ENTRY_OVERHEAD;
        // The page is full before this entry: it goes out, more follow.
        if !page.is_empty() && page_bytes + cost > page_limit {
            conn.queue_header(&ok_header(id, &resp::LsPage { entries: std::mem::take(&mut page), more: true }, 0))?;
            page_bytes = 0;
            if conn.queued() >= flush_at {
                write_within(idle, conn.flush()).await?;
            }
        }
        page_bytes += cost;
        page.push(wire);
        if i + 1 == last {
            conn.queue_header(&ok_header(id, &resp::LsPage { entries: std::mem::take(&mut page), more: false }, 0))?;
        }
    }
    if last == 0 {
        conn.queue_header(&ok_header(id, &resp::LsPage { entries: vec![], more: false }, 0))?;
    }
    Ok(())
}

pub async fn stat(session: &mut Session, conn: &mut Conn, id: u64, path: String) -> Result<(), Reply> {
    let target = resolve(session, &path)?;
    let entry = session.home.stat(&target).await?;
    conn.queue_header(&ok_header(id, &resp::StatAnswer { entry: wire_entry(&entry) }, 0))?;
    Ok(())
}

pub async fn mkdir(session: &mut Session, conn: &mut Conn, id: u64, path: String, parents: bool) -> Result<(), Reply> {
    let target = resolve(session, &path)?;
    session.home.mkdir(&target, parents).await?;
    conn.queue_header(&ok_header(id, &resp::Done {}, 0))?;
    Ok(())
}

pub async fn rm(session: &mut Session, conn: &mut Conn, id: u64, path: String, recursive: bool) -> Result<(), Reply> {
    let target = resolve(session, &path)?;
    let freed = session.home.remove(&target, if recursive { Remove::Tree } else { Remove::File }).await?;
    let (bytes, files) = (freed.bytes, freed.files);
    conn.queue_header(&ok_header(id, &resp::Removed { bytes, files }, 0))?;
    Ok(())
}

pub async fn rmdir(session: &mut Session, conn: &mut Conn, id: u64, path: String) -> Result<(), Reply> {
    let target = resolve(session, &path)?;
    session.home.remove(&target, Remove::EmptyDir).await?;
    conn.queue_header(&ok_header(id, &resp::Done {}, 0))?;
    Ok(())
}

pub async fn mv(
    session: &mut Session,
    conn: &mut Conn,
    id: u64,
    from: String,
    to: String,
    overwrite: bool,
) -> Result<(), Reply> {
    let src = resolve(session, &from)?;
    let dst = resolve(session, &to)?;
    session.home.move_to(&src, &dst, overwrite).await?;
    conn.queue_header(&ok_header(id, &resp::Done {}, 0))?;
    Ok(())
}

pub fn df(session: &mut Session, conn: &mut Conn, id: u64) -> Result<(), Reply> {
    let u = session.home.usage();
    let body = resp::DfAnswer {
        used: u.used,
        reserved: u.reserved,
        quota: u.limit,
        free: u.free(),
        files: u.files,
        max_files: u.max_files,
    };
    conn.queue_header(&ok_header(id, &body, 0))?;
    Ok(())
}
