//! `ferry put` and `ferry get`, in the habits of scp: files or (-r) trees,
//! into a directory or onto a name; -c resumes; --force overwrites.
//! The shell's put/get/mput/mget reuse [`upload`] and [`download`].

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use ferry_client::SMALL_FILE;
use ferry_client::{ClientError, ErrorCode, GetOptions, PutOptions, Session};

use crate::args::{GetArgs, PutArgs};
use crate::connect::open;
use crate::progress::Bar;
use crate::report::eprintln_clean;

/// Files per pipelined batch. Answers are read while requests go out, and
/// one file is in memory at a time, so a batch costs only its results; each
/// batch boundary drains the pipe once, so batches are large.
const BATCH: usize = 4096;

/// Joins a remote directory and a name.
pub fn remote_join(dir: &str, name: &str) -> String {
    if dir.is_empty() || dir == "." {
        name.to_string()
    } else if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

pub fn remote_basename(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or(path)
}

fn local_name(p: &Path) -> Result<String> {
    p.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("{}: no usable file name (names must be UTF-8)", p.display()))
}

/// What to upload: directories to create (parents first), then files.
#[derive(Default)]
struct PutPlan {
    dirs: Vec<String>,
    files: Vec<(PathBuf, String, u64)>,
}

fn plan_put(sources: &[PathBuf], target: &str, target_is_dir: bool, recursive: bool) -> Result<PutPlan> {
    let mut plan = PutPlan::default();
    if sources.len() > 1 && !target_is_dir {
        bail!("{target} is not a directory (needed for several sources)");
    }
    for src in sources {
        let meta = std::fs::metadata(src).map_err(|e| anyhow::anyhow!("{}: {e}", src.display()))?;
        let dest = if target_is_dir { remote_join(target, &local_name(src)?) } else { target.to_string() };
        if meta.is_file() {
            plan.files.push((src.clone(), dest, meta.len()));
        } else if meta.is_dir() {
            if !recursive {
                bail!("{} is a directory (use -r)", src.display());
            }
            plan.dirs.push(dest.clone());
            // Explicit stack: deep trees cannot overflow ours.
            let mut stack = vec![(src.clone(), dest)];
            while let Some((dir, rdir)) = stack.pop() {
                let mut entries: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
                entries.sort_by_key(|e| e.file_name());
                for e in entries {
                    let path = e.path();
                    let ft = e.file_type()?;
                    let rpath = remote_join(&rdir, &local_name(&path)?);
                    if ft.is_dir() {
                        plan.dirs.push(rpath.clone());
                        stack.push((path, rpath));
                    } else if ft.is_file() {
                        plan.files.push((path, rpath, e.metadata()?.len()));
                    } else if ft.is_symlink() && path.metadata().map(|m| m.is_file()).unwrap_or(false) {
                        let len = path.metadata()?.len();
                        plan.files.push((path, rpath, len));
                    }
                }
            }
        } else {
            bail!("{}: not a file or directory", src.display());
        }
    }
    Ok(plan)
}

async fn is_remote_dir(session: &mut Session, path: &str) -> Result<bool, ClientError> {
    match session.stat(path).await {
        Ok(e) => Ok(e.kind == "dir"),
        Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(false),
        Err(e) => Err(e),
    }
}

/// What to add to a failed transfer's error. Never advice to run the command
/// just run (issue 13): with `-c` given, only what became of the partial.
/// `busy` on a transfer means another session writes this upload (it took
/// the upload over); resuming now would take it back, so the advice is to
/// wait.
fn retry_hint(e: &ClientError, resumed: bool, what: &str) -> String {
    if e.code() == Some(ErrorCode::Busy) {
        return format!(" (another session is writing this {what}; wait for it to finish, or retry later)");
    }
    // The protocol names no CLI flag (issue 13): the hint is ours.
    if e.code() == Some(ErrorCode::AlreadyExists) && what == "upload" {
        return " (use --force to overwrite)".into();
    }
    match (ferry_client::is_resumable(e), resumed) {
        (false, _) => String::new(),
        (true, false) => " (run again with -c to resume)".into(),
        (true, true) => format!(" (the partial {what} is kept for a later resume)"),
    }
}

/// Uploads `sources` to `target`; returns the number of failures.
pub async fn upload(
    session: &mut Session,
    sources: &[PathBuf],
    target: &str,
    recursive: bool,
    opts: &PutOptions,
    quiet: bool,
) -> Result<usize> {
    let target_is_dir = target.ends_with('/') || target == "." || is_remote_dir(session, target).await?;
    let plan = plan_put(sources, target, target_is_dir, recursive)?;
    for d in &plan.dirs {
        session.mkdir(d, true).await?;
    }
    let mut failures = 0;
    let (small, large): (Vec<_>, Vec<_>) =
        plan.files.into_iter().partition(|(_, _, size)| *size <= SMALL_FILE && !opts.resume);
    if !small.is_empty() {
        let bar = Bar::files(quiet || small.len() == 1, small.len() as u64, "upload");
        for batch in small.chunks(BATCH) {
            let pairs: Vec<(PathBuf, String)> = batch.iter().map(|(l, r, _)| (l.clone(), r.clone())).collect();
            let results = session.put_many(&pairs, opts.overwrite, &bar).await?;
            for ((local, _), r) in pairs.iter().zip(results) {
                if let Err(e) = r {
                    let hint = retry_hint(&e, false, "upload");
                    eprintln_clean!("ferry: {}: {e}{hint}", local.display());
                    failures += 1;
                }
            }
        }
        bar.finish();
    }
    for (local, remote, _) in large {
        let bar = Bar::new(quiet);
        match session.put_file(&local, &remote, opts, &bar).await {
            Ok(_) => {}
            Err(e) if opts.resume && e.code() == Some(ErrorCode::AlreadyExists) => {
                // Already complete from an earlier run? Then there is nothing to resume.
                let algo = session.hash_algo();
                let (_, local_hash, _) = ferry_client::hash_local(&local, 0, algo, &ferry_client::NoProgress)?;
                if session.hash(&remote, None).await? != local_hash {
                    eprintln_clean!("ferry: {}: {e}", local.display());
                    failures += 1;
                }
            }
            Err(e) => {
                let hint = retry_hint(&e, opts.resume, "upload");
                eprintln_clean!("ferry: {}: {e}{hint}", local.display());
                failures += 1;
                if !matches!(e, ClientError::Server(_) | ClientError::Local(_) | ClientError::Checksum { .. }) {
                    return Ok(failures);
                }
            }
        }
        bar.finish();
    }
    Ok(failures)
}

pub async fn put(a: PutArgs) -> Result<u8> {
    let (target, sources) = a.paths.split_last().ok_or_else(|| anyhow::anyhow!("put: LOCAL... REMOTE"))?;
    let sources: Vec<PathBuf> = sources.iter().map(PathBuf::from).collect();
    let (remote, mut session) = open(target, &a.conn).await?;
    let target = remote.path.clone().unwrap_or_else(|| ".".into());
    let opts = PutOptions { overwrite: a.force, resume: a.resume, state_dir: None };
    let failures = upload(&mut session, &sources, &target, a.recursive, &opts, a.conn.quiet).await?;
    let _ = session.close().await;
    Ok(if failures > 0 { crate::EXIT_FAILURE } else { 0 })
}

/// What to download: local directories to create, then files with sizes.
#[derive(Default)]
struct GetPlan {
    dirs: Vec<PathBuf>,
    files: Vec<(String, PathBuf, u64)>,
}

/// Longest local path a download plans (Linux's PATH_MAX): a server that
/// lists an endless tree is stopped here instead of growing the plan forever.
const MAX_LOCAL_PATH: usize = 4096;

/// Where `src` (as the user typed it) lands in `target`.
fn local_dest(src: &str, target: &Path, target_is_dir: bool) -> Result<PathBuf> {
    if !target_is_dir {
        return Ok(target.to_path_buf());
    }
    match remote_basename(src) {
        // `get -r USER@HOST/ dir`: the home's contents go into `dir`.
        "" | "." => Ok(target.to_path_buf()),
        name => match ferry_client::names::unsafe_name_reason(name) {
            None => Ok(target.join(name)),
            Some(why) => bail!("cannot name the local copy of {src} after {name:?} ({why}): give the target's name"),
        },
    }
}

/// Lists the remote sources into a plan. Every name the server lists goes
/// through [`ferry_client::names::local_child`] before it becomes a local
/// path: a name with `/`, `..` or NUL is reported and skipped, so nothing
/// lands outside `target` (issue 12, item 5). Returns the plan and the
/// number of names refused.
async fn plan_get(
    session: &mut Session,
    sources: &[String],
    target: &Path,
    recursive: bool,
) -> Result<(GetPlan, usize)> {
    let target_is_dir = target.is_dir();
    if sources.len() > 1 && !target_is_dir {
        bail!("{} is not a directory (needed for several sources)", target.display());
    }
    let mut plan = GetPlan::default();
    let mut refused = 0;
    for src in sources {
        let entry = session.stat(src).await?;
        let dest = local_dest(src, target, target_is_dir)?;
        if entry.kind == "file" {
            plan.files.push((src.clone(), dest, entry.size));
            continue;
        }
        if entry.kind != "dir" {
            bail!("{src}: not a regular file or directory");
        }
        if !recursive {
            bail!("{src} is a directory (use -r)");
        }
        plan.dirs.push(dest.clone());
        let mut stack = vec![(src.clone(), dest)];
        while let Some((rdir, ldir)) = stack.pop() {
            for e in session.ls(Some(&rdir)).await? {
                let lpath = match ferry_client::names::local_child(&ldir, &e.name) {
                    Ok(p) => p,
                    Err(err) => {
                        eprintln_clean!("ferry: {rdir}: {err}");
                        refused += 1;
                        continue;
                    }
                };
                if lpath.as_os_str().len() > MAX_LOCAL_PATH {
                    bail!("{}: path too long (is the server listing an endless tree?)", lpath.display());
                }
                let rpath = remote_join(&rdir, &e.name);
                match e.kind.as_str() {
                    "dir" => {
                        plan.dirs.push(lpath.clone());
                        stack.push((rpath, lpath));
                    }
                    "file" => plan.files.push((rpath, lpath, e.size)),
                    _ => {}
                }
            }
        }
    }
    Ok((plan, refused))
}

/// Downloads `sources` to `target`; returns the number of failures.
pub async fn download(
    session: &mut Session,
    sources: &[String],
    target: &Path,
    recursive: bool,
    opts: &GetOptions,
    quiet: bool,
) -> Result<usize> {
    let (plan, refused) = plan_get(session, sources, target, recursive).await?;
    for d in &plan.dirs {
        std::fs::create_dir_all(d).map_err(|e| anyhow::anyhow!("{}: {e}", d.display()))?;
    }
    let mut failures = refused;
    let (small, large): (Vec<_>, Vec<_>) =
        plan.files.into_iter().partition(|(_, _, size)| *size <= SMALL_FILE && !opts.resume);
    if !small.is_empty() {
        let bar = Bar::files(quiet || small.len() == 1, small.len() as u64, "download");
        for batch in small.chunks(BATCH) {
            let pairs: Vec<(String, PathBuf)> = batch.iter().map(|(r, l, _)| (r.clone(), l.clone())).collect();
            let results = session.get_many(&pairs, opts.overwrite, &bar).await?;
            for ((remote, _), r) in pairs.iter().zip(results) {
                if let Err(e) = r {
                    eprintln_clean!("ferry: {remote}: {e}");
                    failures += 1;
                }
            }
        }
        bar.finish();
    }
    for (remote, local, _) in large {
        let bar = Bar::new(quiet);
        match session.get_file(&remote, &local, opts, &bar).await {
            Ok(_) => {}
            Err(e) if opts.resume && local.exists() && !ferry_client::part_path(&local).exists() => {
                let algo = session.hash_algo();
                let (_, local_hash, _) = ferry_client::hash_local(&local, 0, algo, &ferry_client::NoProgress)?;
                if session.hash(&remote, None).await? != local_hash {
                    eprintln_clean!("ferry: {remote}: {e}");
                    failures += 1;
                }
            }
            Err(e) => {
                let hint = retry_hint(&e, opts.resume, "download");
                eprintln_clean!("ferry: {remote}: {e}{hint}");
                failures += 1;
                if !matches!(e, ClientError::Server(_) | ClientError::Local(_) | ClientError::Checksum { .. }) {
                    return Ok(failures);
                }
            }
        }
        bar.finish();
    }
    Ok(failures)
}

pub async fn get(a: GetArgs) -> Result<u8> {
    let (target, sources) = a.paths.split_last().ok_or_else(|| anyhow::anyhow!("get: REMOTE... LOCAL"))?;
    let (first, more) = sources.split_first().ok_or_else(|| anyhow::anyhow!("get: REMOTE... LOCAL"))?;
    let (remote, mut session) = open(first, &a.conn).await?;
    let mut paths = vec![remote.path.clone().ok_or_else(|| anyhow::anyhow!("get: give the file as USER@HOST/PATH"))?];
    paths.extend(more.iter().cloned());
    let opts = GetOptions { overwrite: a.force, resume: a.resume };
    let failures = download(&mut session, &paths, Path::new(target), a.recursive, &opts, a.conn.quiet).await?;
    let _ = session.close().await;
    Ok(if failures > 0 { crate::EXIT_FAILURE } else { 0 })
}
