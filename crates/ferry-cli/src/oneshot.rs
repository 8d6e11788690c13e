//! One-shot commands for scripts: each logs in, does one thing, and exits
//! non-zero with one clear line on error.

use std::io::Write;

use anyhow::Result;
use ferry_client::{Entry, ExecStreams, Remote, Session};

use crate::args::{ExecArgs, HashArgs, LsArgs, MkdirArgs, MvArgs, PathsArgs, RemoteOnly, RmArgs};
use crate::connect::open;
use crate::report::{clean, eprintln_clean, println_clean};

/// The remote's path and the extra paths, in order.
fn all_paths(remote: &Remote, more: &[String]) -> Vec<String> {
    let mut v = vec![remote.path.clone().unwrap_or_else(|| ".".into())];
    v.extend(more.iter().cloned());
    v
}

pub async fn login(a: RemoteOnly) -> Result<u8> {
    let (remote, session) = open(&a.remote, &a.conn).await?;
    println_clean!("logged in as {} on {}", remote.user, remote.host_port());
    session.close().await?;
    Ok(0)
}

pub fn format_mode(kind: &str, mode: u32) -> String {
    let k = match kind {
        "dir" => 'd',
        "symlink" => 'l',
        "file" => '-',
        _ => '?',
    };
    let mut s = String::with_capacity(10);
    s.push(k);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

pub fn format_time(mtime: i64) -> String {
    jiff::Timestamp::from_second(mtime).map(|t| t.strftime("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|_| "-".into())
}

pub fn long_line(e: &Entry) -> String {
    let suffix = if e.kind == "dir" { "/" } else { "" };
    format!("{} {:>12} {} {}{}", format_mode(&e.kind, e.mode), e.size, format_time(e.mtime), e.name, suffix)
}

pub async fn ls(a: LsArgs) -> Result<u8> {
    let (remote, mut session) = open(&a.remote, &a.conn).await?;
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    // A failed write to stdout is kept as the io::Error it is, not as a
    // ClientError ("connection lost"), so that `main` sees a broken pipe
    // (`ferry ls | head`) and exits quietly.
    let mut write_error = None;
    let listed = session
        .ls_pages(remote.path.as_deref(), |page| {
            for e in page.iter().filter(|e| a.all || !e.name.starts_with('.')) {
                let line = if a.long { long_line(e) } else { e.name.clone() };
                if let Err(err) = writeln!(out, "{}", clean(&line)) {
                    write_error = Some(err);
                    return Err(ferry_client::ClientError::Local("cannot write the listing".into()));
                }
            }
            Ok(())
        })
        .await;
    if let Some(err) = write_error {
        return Err(err.into());
    }
    listed?;
    out.flush()?;
    session.close().await?;
    Ok(0)
}

/// Runs `op` on every path, reporting each failure; fails if any failed.
async fn each_path<F>(session: &mut Session, paths: Vec<String>, mut op: F) -> Result<u8>
where
    F: AsyncFnMut(&mut Session, &str) -> Result<(), ferry_client::ClientError>,
{
    let mut failed = 0;
    for p in &paths {
        if let Err(e) = op(session, p).await {
            eprintln_clean!("ferry: {p}: {e}");
            failed += 1;
        }
    }
    Ok(if failed > 0 { crate::EXIT_FAILURE } else { 0 })
}

pub async fn stat(a: PathsArgs) -> Result<u8> {
    let (remote, mut session) = open(&a.remote, &a.conn).await?;
    let code = each_path(&mut session, all_paths(&remote, &a.more), async |s, p| {
        let e = s.stat(p).await?;
        println_clean!("{}", long_line(&e));
        Ok(())
    })
    .await?;
    session.close().await?;
    Ok(code)
}

pub async fn mkdir(a: MkdirArgs) -> Result<u8> {
    let (remote, mut session) = open(&a.remote, &a.conn).await?;
    let parents = a.parents;
    let code = each_path(&mut session, all_paths(&remote, &a.more), async |s, p| s.mkdir(p, parents).await).await?;
    session.close().await?;
    Ok(code)
}

pub async fn rm(a: RmArgs) -> Result<u8> {
    let (remote, mut session) = open(&a.remote, &a.conn).await?;
    let recursive = a.recursive;
    let code = each_path(&mut session, all_paths(&remote, &a.more), async |s, p| s.rm(p, recursive).await).await?;
    session.close().await?;
    Ok(code)
}

pub async fn rmdir(a: PathsArgs) -> Result<u8> {
    let (remote, mut session) = open(&a.remote, &a.conn).await?;
    let code = each_path(&mut session, all_paths(&remote, &a.more), async |s, p| s.rmdir(p).await).await?;
    session.close().await?;
    Ok(code)
}

/// The target of `ferry mv`: a path, or a remote on the same server and
/// user, as users type it after `put` and `get` (issue 13, item 2). A word
/// with `@` before its first `/` is a remote (`./me@home.txt` names such a
/// file); one for another server or user is refused, since a move never
/// crosses servers.
fn mv_target(from: &Remote, to: &str) -> Result<String> {
    let first_part = to.strip_prefix("ferry://").unwrap_or(to).split('/').next().unwrap_or("");
    if !first_part.contains('@') {
        return Ok(to.to_string());
    }
    let target = Remote::parse(to)?;
    if !target.same_account(from) {
        anyhow::bail!(
            "mv: the target {target} is not on {}@{}: a move stays on one server and account \
             (give a path, or ./{to} for a name with @)",
            from.user,
            from.host_port()
        );
    }
    Ok(target.path.unwrap_or_else(|| ".".into()))
}

pub async fn mv(a: MvArgs) -> Result<u8> {
    let remote = Remote::parse(&a.remote)?;
    let from = remote.path.clone().ok_or_else(|| anyhow::anyhow!("mv: give the source as USER@HOST/PATH"))?;
    // Checked before connecting: a wrong target costs no login.
    let to = mv_target(&remote, &a.to)?;
    let mut session = crate::connect::login(&remote, &a.conn).await?;
    session.mv(&from, &to, a.force).await?;
    session.close().await?;
    Ok(0)
}

pub async fn hash(a: HashArgs) -> Result<u8> {
    let (remote, mut session) = open(&a.remote, &a.conn).await?;
    let algo = a.algo.into();
    let code = each_path(&mut session, all_paths(&remote, &a.more), async |s, p| {
        let (h, _) = s.hash_as(p, None, algo).await?;
        // The sha256sum (and b3sum) format, so `sha256sum -c` can check a download.
        println_clean!("{h}  {}", p.trim_start_matches('/'));
        Ok(())
    })
    .await?;
    session.close().await?;
    Ok(code)
}

pub fn human(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

pub async fn df(a: RemoteOnly) -> Result<u8> {
    let (_, mut session) = open(&a.remote, &a.conn).await?;
    print_df(&session.df().await?);
    session.close().await?;
    Ok(0)
}

/// `df` as the one-shot command and the shell print it.
pub fn print_df(d: &ferry_client::DfInfo) {
    println!("{:>14} {:>14} {:>14} {:>10} {:>10}", "used", "quota", "free", "files", "max files");
    let quota = d.quota.map(human).unwrap_or_else(|| "unlimited".into());
    let free = d.free.map(human).unwrap_or_else(|| "unlimited".into());
    let max_files = d.max_files.map(|n| n.to_string()).unwrap_or_else(|| "unlimited".into());
    println!("{:>14} {:>14} {:>14} {:>10} {:>10}", human(d.used), quota, free, d.files, max_files);
}

pub async fn exec(a: ExecArgs) -> Result<u8> {
    let (_, mut session) = open(&a.remote, &a.conn).await?;
    let stdin = if a.no_stdin { None } else { Some(tokio::io::stdin()) };
    let streams = ExecStreams { stdin, stdout: tokio::io::stdout(), stderr: tokio::io::stderr() };
    // Catch Ctrl-C from here on, before the command starts: `ctrl_c()` only
    // listens once first polled, and a Ctrl-C in between killed the client
    // with the default action instead of cancelling. Before this point
    // nothing runs remotely, so the default action is right.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let cancel = async move {
        interrupt.recv().await;
    };
    let outcome = match session.exec(&a.command, streams, cancel).await {
        Ok(o) => o,
        // Our own stdout closed (`ferry exec ... | head`): the client has
        // cancelled the command; `main` does not report a broken pipe.
        Err(ferry_client::ClientError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        Err(e) => return Err(e.into()),
    };
    if outcome.timed_out {
        eprintln!("ferry: the remote command ran past its time limit and was killed");
    } else if let Some(sig) = outcome.signal {
        eprintln!("ferry: the remote command was killed by signal {sig}");
    }
    let _ = session.close().await;
    Ok((outcome.shell_code() & 0xff) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mv_targets() {
        let from = Remote::parse("u@h:99/docs/a").unwrap();
        assert_eq!(mv_target(&from, "docs/b").unwrap(), "docs/b");
        assert_eq!(mv_target(&from, "docs/me@home").unwrap(), "docs/me@home");
        assert_eq!(mv_target(&from, "u@h:99/docs/b").unwrap(), "/docs/b");
        assert_eq!(mv_target(&from, "ferry://u@h:99/b").unwrap(), "/b");
        assert_eq!(mv_target(&from, "u@h:99").unwrap(), ".");
        assert!(mv_target(&from, "v@h:99/docs/b").is_err());
        assert!(mv_target(&from, "u@other:99/docs/b").is_err());
        assert!(mv_target(&from, "u@h/docs/b").is_err(), "another port is another server");
    }
}
