//! exec: run a command, stream stdout and stderr back as raw bytes as they
//! come, forward stdin, return the exit status or signal.
//!
//! One loop selects over the command's two pipes, the client's frames
//! (stdin, stdin_eof, cancel), the pending stdin write and the deadline.
//! Output is read only as fast as the client takes it, so a command printing
//! gigabytes costs the server one small buffer.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use bytes::Bytes;
use ferry_proto::msg::{error_header, ok_header};
use ferry_proto::{ErrorCode, FrameError, FrameItem, Request, WireError};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use super::Reply;
use crate::exec;
use crate::session::{Conn, Session};

const OUTPUT_CHUNK: usize = 64 * 1024;

pub async fn exec(session: &mut Session, conn: &mut Conn, id: u64, argv: Vec<String>) -> Result<(), Reply> {
    let user = session.user.name.clone();
    let cfg = &session.shared.config.exec;
    if !session.user.allow_exec {
        warn!(user = %user, program = argv.first().map(String::as_str).unwrap_or(""), "exec refused: not permitted");
        return Err(WireError::new(ErrorCode::NotPermitted, "remote commands are not permitted for this user").into());
    }
    let Some(program) = argv.first().filter(|p| !p.is_empty()) else {
        return Err(WireError::new(ErrorCode::BadRequest, "exec needs a command").into());
    };
    if !exec::allowed(&cfg.allowlist, program) {
        warn!(user = %user, program = %program, "exec refused: not in the allowlist");
        return Err(
            WireError::new(ErrorCode::NotPermitted, format!("{program} is not in the server's allowlist")).into()
        );
    }
    let Some(_permit) = session.shared.exec.try_acquire(&user, cfg.max_per_user) else {
        return Err(WireError::new(ErrorCode::Busy, "too many commands running; try again later").into());
    };
    let timeout = Duration::from_secs(cfg.timeout_secs);
    let home = crate::users::home_of(&session.shared.config, &session.user);
    let cwd = home.join(session.cwd.to_relative_path());
    let mut child = match exec::command(&argv, &cwd, &home, &user).spawn() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound { ErrorCode::NotFound } else { ErrorCode::Internal };
            return Err(WireError::new(code, format!("cannot run {program}: {e}")).into());
        }
    };
    let pid = child.id().unwrap_or(0);
    info!(user = %user, program = %program, pid, "exec started");
    let started = std::time::Instant::now();
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        exec::kill_group(pid);
        return Err(WireError::new(ErrorCode::Internal, "command pipes unavailable").into());
    };
    let mut stdin = child.stdin.take();
    conn.send(&ok_header(id, &json!({ "started": true }), 0)).await?;

    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let (mut obuf, mut ebuf) = (vec![0u8; OUTPUT_CHUNK], vec![0u8; OUTPUT_CHUNK]);
    let (mut out_open, mut err_open) = (true, true);
    let mut pending_stdin: Option<Bytes> = None;
    let mut stdin_target = false; // true while reading a stdin body meant for us
    let mut timed_out = false;
    let mut cancelled = false;
    let mut client_gone: Option<FrameError> = None;

    enum Event {
        Out(std::io::Result<usize>),
        Err(std::io::Result<usize>),
        Client(Result<Option<FrameItem>, FrameError>),
        StdinWritten(std::io::Result<()>),
        Deadline,
    }

    while out_open || err_open {
        let ev = tokio::select! {
            r = stdout.read(&mut obuf), if out_open => Event::Out(r),
            r = stderr.read(&mut ebuf), if err_open => Event::Err(r),
            r = write_stdin(&mut stdin, &pending_stdin), if pending_stdin.is_some() => Event::StdinWritten(r),
            r = conn.next_item(), if pending_stdin.is_none() && client_gone.is_none() => Event::Client(r),
            _ = &mut deadline, if !timed_out => Event::Deadline,
        };
        match ev {
            Event::Out(Ok(0)) | Event::Out(Err(_)) => out_open = false,
            Event::Err(Ok(0)) | Event::Err(Err(_)) => err_open = false,
            Event::Out(Ok(n)) => send_output(conn, id, "stdout", &obuf[..n]).await?,
            Event::Err(Ok(n)) => send_output(conn, id, "stderr", &ebuf[..n]).await?,
            Event::StdinWritten(r) => {
                pending_stdin = None;
                if r.is_err() {
                    stdin = None; // the command closed its stdin; drop the rest
                }
            }
            Event::Deadline => {
                timed_out = true;
                exec::kill_group(pid);
            }
            Event::Client(Ok(Some(FrameItem::Body(chunk)))) => {
                if stdin_target && stdin.is_some() {
                    pending_stdin = Some(chunk);
                }
            }
            Event::Client(Ok(Some(FrameItem::Header(h)))) => {
                stdin_target = false;
                match Request::from_header(&h) {
                    (_, Ok(Request::Stdin { target })) if target == id => stdin_target = true,
                    (_, Ok(Request::StdinEof { target })) if target == id => stdin = None,
                    (_, Ok(Request::Cancel { target })) if target == id => {
                        cancelled = true;
                        exec::kill_group(pid);
                    }
                    (other, _) => {
                        // One command at a time per session: anything else waits its turn.
                        let e = WireError::new(ErrorCode::Busy, "a command is running in this session");
                        conn.queue_header(&error_header(other, &e))?;
                    }
                }
            }
            Event::Client(Ok(None)) | Event::Client(Err(_)) => {
                // The client is gone or its stream broke: no orphans left behind.
                exec::kill_group(pid);
                client_gone = Some(FrameError::Truncated);
                cancelled = true;
            }
        }
    }
    drop(stdin);
    let status = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(Ok(s)) => Some(s),
        _ => {
            exec::kill_group(pid);
            child.wait().await.ok()
        }
    };
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

async fn write_stdin(stdin: &mut Option<tokio::process::ChildStdin>, data: &Option<Bytes>) -> std::io::Result<()> {
    match (stdin, data) {
        (Some(s), Some(d)) => s.write_all(d).await,
        _ => Ok(()),
    }
}

async fn send_output(conn: &mut Conn, id: u64, stream: &str, data: &[u8]) -> Result<(), FrameError> {
    conn.send_with_body(&ok_header(id, &json!({ "stream": stream }), data.len() as u64), data).await
}
