//! exec: run a command, stream stdout and stderr back as raw bytes as they
//! come, forward stdin, return the exit status or signal.
//!
//! One loop selects over the command's two pipes, the client's frames
//! (stdin, stdin_eof, cancel), the pending stdin write and the deadline.
//! Output is read only as fast as the client takes it, so a command printing
//! gigabytes costs the server one small buffer.

use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, Bytes};
use ferry_proto::msg::{error_header, ok_header};
use ferry_proto::{ErrorCode, FrameError, FrameItem, Request, WireError};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Sleep;
use tracing::{info, warn};

use super::Reply;
use crate::exec;
use crate::session::{Conn, Session, write_within};

const OUTPUT_CHUNK: usize = 64 * 1024;
/// How long a killed command's pipes may stay open, and a client that
/// stopped reading may take to catch up, before the handler gives up.
const KILL_GRACE: Duration = Duration::from_secs(5);

pub async fn exec(session: &mut Session, conn: &mut Conn, id: u64, argv: Vec<String>) -> Result<(), Reply> {
    let user = session.user.name.clone();
    let cfg = &session.core.config.exec;
    if !session.user.allow_exec {
        warn!(user = %user, program = argv.first().map(String::as_str).unwrap_or(""), "exec refused: not permitted");
        return Err(WireError::new(ErrorCode::NotPermitted, "remote commands are not permitted for this user").into());
    }
    let Some(program) = argv.first().filter(|p| !p.is_empty()) else {
        return Err(WireError::new(ErrorCode::BadRequest, "exec needs a command").into());
    };
    if !session.core.storage.is_local() {
        // A command runs in a folder; an S3 home is no folder.
        return Err(WireError::new(ErrorCode::NotPermitted, "remote commands need homes on local storage").into());
    }
    if !exec::allowed(&cfg.allowlist, program) {
        warn!(user = %user, program = %program, "exec refused: not in the allowlist");
        return Err(
            WireError::new(ErrorCode::NotPermitted, format!("{program} is not in the server's allowlist")).into()
        );
    }
    let Some(_permit) = session.core.exec.try_acquire(&user, cfg.max_per_user) else {
        return Err(WireError::new(ErrorCode::Busy, "too many commands running; try again later").into());
    };
    let timeout = Duration::from_secs(cfg.timeout_secs);
    let home = crate::users::home_of(&session.core.config, &session.user);
    let cwd = home.join(session.cwd.to_relative_path());
    let mut cmd = exec::command(cfg, &argv, &cwd, &home, &user).map_err(|why| {
        warn!(user = %user, program = %program, "exec refused: {why}");
        WireError::new(ErrorCode::NotPermitted, why)
    })?;
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound { ErrorCode::NotFound } else { ErrorCode::Internal };
            return Err(WireError::new(code, format!("cannot run {program}: {e}")).into());
        }
    };
    let pid = child.id().unwrap_or(0);
    // Killed when this handler ends, however it ends.
    let group = exec::ProcessGroup::new(pid);
    info!(user = %user, program = %program, pid, "exec started");
    let started = std::time::Instant::now();
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(WireError::new(ErrorCode::Internal, "command pipes unavailable").into());
    };
    let mut stdin = child.stdin.take();
    // Every write below is bounded by the idle timeout: a client that takes
    // no output for that long loses its session (issue 12, item 1).
    let idle = session.core.config.idle_timeout();
    write_within(idle, conn.send(&ok_header(id, &json!({ "started": true }), 0))).await?;

    // First the time limit; once the group is killed, a grace for its pipes
    // to close (a process that left the group may hold them).
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut killed = false;
    let (mut obuf, mut ebuf) = (vec![0u8; OUTPUT_CHUNK], vec![0u8; OUTPUT_CHUNK]);
    let (mut out_open, mut err_open) = (true, true);
    let mut status: Option<std::process::ExitStatus> = None;
    // The unwritten rest of the last stdin chunk. Written with single `write`
    // calls, which are cancel-safe: `write_all` dropped by the select after a
    // partial write would start the chunk over and duplicate input.
    let mut pending_stdin = Bytes::new();
    let mut stdin_target = false; // true while reading a stdin body meant for us
    let mut timed_out = false;
    let mut cancelled = false;
    let mut client_gone: Option<FrameError> = None;

    enum Event {
        Out(std::io::Result<usize>),
        Err(std::io::Result<usize>),
        Client(Result<Option<FrameItem>, FrameError>),
        StdinWritten(std::io::Result<usize>),
        Exited(std::io::Result<std::process::ExitStatus>),
        Deadline,
    }

    // The command is over when its pipes are closed and it has exited: a
    // command that closes its output early still runs under the time limit
    // and can still be cancelled.
    while out_open || err_open || status.is_none() {
        let ev = tokio::select! {
            r = stdout.read(&mut obuf), if out_open => Event::Out(r),
            r = stderr.read(&mut ebuf), if err_open => Event::Err(r),
            r = write_stdin(&mut stdin, &pending_stdin), if !pending_stdin.is_empty() => Event::StdinWritten(r),
            r = conn.next_item(), if pending_stdin.is_empty() && client_gone.is_none() => Event::Client(r),
            r = child.wait(), if status.is_none() => Event::Exited(r),
            _ = &mut deadline => Event::Deadline,
        };
        match ev {
            Event::Out(Ok(0)) | Event::Out(Err(_)) => out_open = false,
            Event::Err(Ok(0)) | Event::Err(Err(_)) => err_open = false,
            Event::Out(Ok(n)) => {
                let send = write_within(idle, send_output(conn, id, "stdout", &obuf[..n]));
                send_before_deadline(send, deadline.as_mut(), &group, &mut killed, &mut timed_out).await?;
            }
            Event::Err(Ok(n)) => {
                let send = write_within(idle, send_output(conn, id, "stderr", &ebuf[..n]));
                send_before_deadline(send, deadline.as_mut(), &group, &mut killed, &mut timed_out).await?;
            }
            Event::StdinWritten(Ok(n)) => pending_stdin.advance(n),
            Event::StdinWritten(Err(_)) => {
                // The command closed its stdin; drop the rest.
                pending_stdin.clear();
                stdin = None;
            }
            Event::Exited(r) => match r {
                Ok(s) => status = Some(s),
                Err(e) => {
                    warn!(pid, error = %e, "cannot wait for the command");
                    break;
                }
            },
            Event::Deadline if !killed => {
                timed_out = true;
                kill(&group, deadline.as_mut(), &mut killed);
            }
            Event::Deadline => {
                warn!(pid, "command pipes still open after the kill; giving up on them");
                break;
            }
            Event::Client(Ok(Some(FrameItem::Body(chunk)))) => {
                if stdin_target && stdin.is_some() {
                    pending_stdin = chunk;
                }
            }
            Event::Client(Ok(Some(FrameItem::Header(h)))) => {
                stdin_target = false;
                match Request::from_header(&h) {
                    (_, Ok(Request::Stdin { target })) if target == id => stdin_target = true,
                    (_, Ok(Request::StdinEof { target })) if target == id => stdin = None,
                    (_, Ok(Request::Cancel { target })) if target == id => {
                        cancelled = true;
                        if !killed {
                            kill(&group, deadline.as_mut(), &mut killed);
                        }
                    }
                    (other, _) => {
                        // One command at a time per session: anything else waits its turn.
                        // Answered at once (PROTOCOL.md, exec), not when output next flushes.
                        let e = WireError::new(ErrorCode::Busy, "a command is running in this session");
                        conn.queue_header(&error_header(other, &e))?;
                        // Answered at once (PROTOCOL.md), within the idle timeout.
                        let flush = write_within(idle, conn.flush());
                        send_before_deadline(flush, deadline.as_mut(), &group, &mut killed, &mut timed_out).await?;
                    }
                }
            }
            Event::Client(Ok(None)) | Event::Client(Err(_)) => {
                // The client is gone or its stream broke: no orphans left behind.
                client_gone = Some(FrameError::Truncated);
                cancelled = true;
                if !killed {
                    kill(&group, deadline.as_mut(), &mut killed);
                }
            }
        }
    }
    drop(stdin);
    if status.is_none() {
        // Only after a failed wait or when the pipes outlived the grace.
        group.kill();
        status = tokio::time::timeout(KILL_GRACE, child.wait()).await.ok().and_then(Result::ok);
    }
    // Background processes that closed their output go with the command.
    drop(group);
    // Every process of the command is gone: what it wrote counts (issue 12).
    session.home.reconcile().await;
    let exit_code = status.and_then(|s| s.code());
    let signal = status.and_then(|s| s.signal());
    info!(user = %user, pid, exit_code, signal, timed_out, cancelled, ms = started.elapsed().as_millis() as u64, "exec ended");
    if let Some(e) = client_gone {
        return Err(Reply::Stream(e));
    }
    // Skip the rest of a stdin body the command no longer wanted.
    conn.skip_body().await?;
    let done = json!({ "done": true, "exit_code": exit_code, "signal": signal, "timed_out": timed_out });
    conn.queue_header(&ok_header(id, &done, 0))?;
    Ok(())
}

/// Kills the command's group and gives its pipes `KILL_GRACE` to close.
fn kill(group: &exec::ProcessGroup, deadline: Pin<&mut Sleep>, killed: &mut bool) {
    group.kill();
    *killed = true;
    deadline.reset(tokio::time::Instant::now() + KILL_GRACE);
}

/// Sends one output frame while still enforcing the time limit: a client
/// that stops reading must not keep the command alive past it. Once the
/// command is killed, a client still not reading after `KILL_GRACE` loses
/// its session.
async fn send_before_deadline(
    send: impl Future<Output = Result<(), FrameError>>,
    mut deadline: Pin<&mut Sleep>,
    group: &exec::ProcessGroup,
    killed: &mut bool,
    timed_out: &mut bool,
) -> Result<(), FrameError> {
    tokio::pin!(send);
    // At most two rounds: the time limit, then the grace after the kill.
    for _ in 0..2 {
        tokio::select! {
            r = &mut send => return r,
            _ = &mut deadline => {
                if *killed {
                    break;
                }
                *timed_out = true;
                kill(group, deadline.as_mut(), killed);
            }
        }
    }
    Err(FrameError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "client stopped reading command output")))
}

/// One cancel-safe write of the pending stdin bytes.
async fn write_stdin(stdin: &mut Option<tokio::process::ChildStdin>, data: &Bytes) -> std::io::Result<usize> {
    match stdin {
        Some(s) => s.write(data).await,
        None => Err(std::io::ErrorKind::BrokenPipe.into()),
    }
}

async fn send_output(conn: &mut Conn, id: u64, stream: &str, data: &[u8]) -> Result<(), FrameError> {
    conn.send_with_body(&ok_header(id, &json!({ "stream": stream }), data.len() as u64), data).await
}
