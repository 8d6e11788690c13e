//! `ssh -p 7722 alice@host CMD`: the same policy as the framed `exec`
//! (`crate::exec`: only users allowed to, the allowlist, the per-user and
//! total caps, the time limit, the process built by `exec::command` so that
//! its confinement applies here too). Output is streamed as it comes, at the
//! pace the client takes it; stdin is forwarded; the exit status returned;
//! the whole process group killed when the client goes.
//!
//! There is no shell: the command line is split into words as a shell
//! would split it (quotes and backslashes), and pipes, redirections,
//! substitutions and variables are refused rather than silently passed on.

use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use russh::ChannelMsg;
use russh::server::Msg;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::auth::UserRecord;
use crate::core::Core;
use crate::exec;

const OUTPUT_CHUNK: usize = 32 * 1024;
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Splits a command line into words: whitespace separates, `'...'` is
/// literal, `"..."` and `\` quote. Unquoted shell syntax is an error.
pub fn split_command(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated ' quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unterminated \" quote".into()),
                        },
                        Some(c @ ('$' | '`')) => return Err(format!("{c} inside \"...\" is shell syntax")),
                        Some(c) => word.push(c),
                        None => return Err("unterminated \" quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    word.push(c);
                }
            }
            '|' | '&' | ';' | '<' | '>' | '(' | ')' | '$' | '`' | '*' | '?' | '[' | '{' | '}' | '~' | '#' => {
                return Err(format!(
                    "`{c}` is shell syntax, and commands run without a shell here; quote it, or run sh -c '...' if sh is allowed"
                ));
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Runs `line` for `user` on `channel`, then sends the exit status and
/// closes the channel.
pub async fn run(core: Arc<Core>, user: UserRecord, mut channel: russh::Channel<Msg>, line: String) {
    let (code, message) = match run_inner(&core, &user, &mut channel, &line).await {
        Ok(code) => (code, None),
        Err(message) => (1, Some(message)),
    };
    if let Some(m) = message {
        let _ = channel.extended_data_bytes(1, Bytes::from(format!("ferry: {m}\n"))).await;
    }
    let _ = channel.exit_status(code).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

async fn run_inner(
    core: &Core,
    user: &UserRecord,
    channel: &mut russh::Channel<Msg>,
    line: &str,
) -> Result<u32, String> {
    let name = user.name.as_str();
    let cfg = &core.config.exec;
    if !user.allow_exec {
        warn!(user = %name, "ssh exec refused: not permitted");
        return Err("remote commands are not permitted for this user".into());
    }
    let argv = split_command(line)?;
    let Some(program) = argv.first().cloned() else { return Err("empty command".into()) };
    if !core.storage.is_local() {
        return Err("remote commands need homes on local storage".into());
    }
    if !exec::allowed(&cfg.allowlist, &program) {
        warn!(user = %name, program = %program, "ssh exec refused: not in the allowlist");
        return Err(format!("{program} is not in the server's allowlist"));
    }
    let Some(_permit) = core.exec.try_acquire(name, cfg.max_per_user) else {
        return Err("too many commands running; try again later".into());
    };
    let home = crate::users::home_of(&core.config, user);
    let mut cmd = exec::command(cfg, &argv, &home, &home, name).inspect_err(|why| {
        warn!(user = %name, program = %program, "ssh exec refused: {why}");
    })?;
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {program}: {e}"))?;
    let pid = child.id().unwrap_or(0);
    let group = exec::ProcessGroup::new(pid);
    info!(user = %name, program = %program, pid, "ssh exec started");
    let started = std::time::Instant::now();
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err("command pipes unavailable".into());
    };
    let mut stdin = child.stdin.take();
    let mut out_writer = channel.make_writer();
    let mut err_writer = channel.make_writer_ext(Some(1));
    let deadline = tokio::time::sleep(Duration::from_secs(cfg.timeout_secs));
    tokio::pin!(deadline);
    let (mut obuf, mut ebuf) = (vec![0u8; OUTPUT_CHUNK], vec![0u8; OUTPUT_CHUNK]);
    let (mut out_open, mut err_open, mut client_open) = (true, true, true);
    let mut status = None;
    let mut pending = Bytes::new();
    let (mut killed, mut timed_out) = (false, false);

    enum Ev {
        Out(std::io::Result<usize>),
        Err(std::io::Result<usize>),
        In(Option<ChannelMsg>),
        Wrote(std::io::Result<usize>),
        Exit(std::io::Result<std::process::ExitStatus>),
        Deadline,
    }
    // Ends when the pipes are closed and the command has exited; after a
    // kill, when the grace is over. Each pass waits for one event.
    while out_open || err_open || status.is_none() {
        let ev = tokio::select! {
            r = stdout.read(&mut obuf), if out_open => Ev::Out(r),
            r = stderr.read(&mut ebuf), if err_open => Ev::Err(r),
            r = write_some(&mut stdin, &pending), if !pending.is_empty() => Ev::Wrote(r),
            m = channel.wait(), if client_open && pending.is_empty() => Ev::In(m),
            r = child.wait(), if status.is_none() => Ev::Exit(r),
            _ = &mut deadline => Ev::Deadline,
        };
        match ev {
            Ev::Out(Ok(0)) | Ev::Out(Err(_)) => out_open = false,
            Ev::Err(Ok(0)) | Ev::Err(Err(_)) => err_open = false,
            Ev::Out(Ok(n)) => {
                // Bounded by the time limit: a client that stops reading
                // does not keep the command alive past it.
                if tokio::time::timeout_at(deadline.deadline(), out_writer.write_all(&obuf[..n])).await.is_err() {
                    timed_out = !killed;
                    break;
                }
            }
            Ev::Err(Ok(n)) => {
                if tokio::time::timeout_at(deadline.deadline(), err_writer.write_all(&ebuf[..n])).await.is_err() {
                    timed_out = !killed;
                    break;
                }
            }
            Ev::Wrote(Ok(n)) => pending.advance(n),
            Ev::Wrote(Err(_)) => {
                pending.clear();
                stdin = None;
            }
            Ev::In(Some(ChannelMsg::Data { data })) => {
                if stdin.is_some() {
                    pending = data;
                }
            }
            Ev::In(Some(ChannelMsg::Eof)) => stdin = None,
            Ev::In(Some(_)) => {}
            Ev::In(None) => {
                // The client is gone: no orphans left behind.
                client_open = false;
                if !killed {
                    group.kill();
                    killed = true;
                    deadline.as_mut().reset(tokio::time::Instant::now() + KILL_GRACE);
                }
            }
            Ev::Exit(Ok(s)) => status = Some(s),
            Ev::Exit(Err(e)) => {
                warn!(pid, error = %e, "cannot wait for the command");
                break;
            }
            Ev::Deadline if !killed => {
                timed_out = true;
                group.kill();
                killed = true;
                deadline.as_mut().reset(tokio::time::Instant::now() + KILL_GRACE);
            }
            Ev::Deadline => break,
        }
    }
    drop(stdin);
    if status.is_none() {
        group.kill();
        status = tokio::time::timeout(KILL_GRACE, child.wait()).await.ok().and_then(Result::ok);
    }
    drop(group);
    // Every process of the command is gone: what it wrote counts (issue 12).
    if let Ok(home) = core.open_home(user).await {
        home.reconcile().await;
    }
    let _ = out_writer.flush().await;
    let _ = err_writer.flush().await;
    let code = status.and_then(|s| s.code());
    let signal = status.and_then(|s| s.signal());
    info!(user = %name, pid, exit_code = code, signal, timed_out, ms = started.elapsed().as_millis() as u64, "ssh exec ended");
    if timed_out {
        return Err(format!("{program}: time limit of {} s reached; killed", cfg.timeout_secs));
    }
    // A signal shows as 128 + its number, as a shell reports it.
    Ok(code.map(|c| c as u32).or(signal.map(|s| 128 + s as u32)).unwrap_or(255))
}

/// One cancel-safe write of pending stdin bytes.
async fn write_some(stdin: &mut Option<tokio::process::ChildStdin>, data: &Bytes) -> std::io::Result<usize> {
    match stdin {
        Some(s) => s.write(data).await,
        None => Err(std::io::ErrorKind::BrokenPipe.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_quotes() {
        assert_eq!(split_command("ls -l  'a b' \"c d\" e\\ f").unwrap(), ["ls", "-l", "a b", "c d", "e f"]);
        assert_eq!(split_command("echo ''").unwrap(), ["echo", ""]);
        assert!(split_command("cat x | sh").is_err());
        assert!(split_command("echo $HOME").is_err());
        assert!(split_command("echo 'unterminated").is_err());
        assert_eq!(split_command("echo '$HOME | x'").unwrap(), ["echo", "$HOME | x"]);
    }
}
