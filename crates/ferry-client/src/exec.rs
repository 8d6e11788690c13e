//! Remote commands: stdout and stderr stream back as raw bytes as they come,
//! local stdin is forwarded, and the exit status comes back.

use std::future::Future;

use ferry_proto::Request;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::session::read_answer;
use crate::{ClientError, Session};

/// How a remote command ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ExecOutcome {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    #[serde(default)]
    pub timed_out: bool,
}

impl ExecOutcome {
    /// The exit code a local shell would report: the command's own, or 128+signal.
    pub fn shell_code(&self) -> i32 {
        match (self.exit_code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}

/// Where a command's input comes from and its output goes.
pub struct ExecStreams<I, O, E> {
    /// `None`: the command's stdin is closed at once.
    pub stdin: Option<I>,
    pub stdout: O,
    pub stderr: E,
}

#[derive(Deserialize)]
struct Frame {
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    done: bool,
}

impl Session {
    /// Runs `argv` on the server. `cancel` resolving (Ctrl-C) kills the
    /// remote command's whole process group.
    pub async fn exec<I, O, E>(
        &mut self,
        argv: &[String],
        io: ExecStreams<I, O, E>,
        cancel: impl Future<Output = ()>,
    ) -> Result<ExecOutcome, ClientError>
    where
        I: AsyncRead + Unpin,
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let id = self.next_id();
        self.wr.send(&Request::Exec { argv: argv.to_vec() }.to_header(id, 0)).await?;
        self.read_answer(id).await?;
        let ExecStreams { mut stdin, mut stdout, mut stderr } = io;
        let (rd, wr) = (&mut self.rd, &mut self.wr);
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
        // The reader asks for a cancel when local output fails (a closed pipe):
        // the command is stopped and the session stays in step.
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let writer = async {
            let cancel = async {
                tokio::select! {
                    _ = cancel => {}
                    Ok(()) = stop_rx => {}
                }
            };
            tokio::pin!(cancel);
            let mut buf = vec![0u8; 64 * 1024];
            let mut stdin_open = stdin.is_some();
            if !stdin_open {
                wr.send(&Request::StdinEof { target: id }.to_header(id, 0)).await?;
            }
            loop {
                let read = async {
                    match stdin.as_mut() {
                        Some(s) if stdin_open => s.read(&mut buf).await,
                        _ => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = &mut done_rx => return Ok::<(), ClientError>(()),
                    _ = &mut cancel => {
                        wr.send(&Request::Cancel { target: id }.to_header(id, 0)).await?;
                        // Wait for the server's final answer.
                        let _ = (&mut done_rx).await;
                        return Ok(());
                    }
                    r = read => match r {
                        Ok(0) | Err(_) => {
                            stdin_open = false;
                            wr.send(&Request::StdinEof { target: id }.to_header(id, 0)).await?;
                        }
                        Ok(n) => {
                            let data = &buf[..n];
                            wr.queue_header(&Request::Stdin { target: id }.to_header(id, n as u64))?;
                            wr.write_body(data).await?;
                            wr.flush().await?;
                        }
                    }
                }
            }
        };
        let reader = async {
            let mut stop_tx = Some(stop_tx);
            let mut local_error: Option<std::io::Error> = None;
            let result: Result<ExecOutcome, ClientError> = async {
                loop {
                    let head = read_answer(rd, id).await?;
                    let frame: Frame = head.decode()?;
                    if frame.done {
                        let outcome = head.decode::<ExecOutcome>()?;
                        return match local_error.take() {
                            Some(e) => Err(ClientError::Io(e)),
                            None => Ok(outcome),
                        };
                    }
                    // Not a `&mut dyn AsyncWrite`: that is not `Send` and
                    // would keep the whole exec future off `tokio::spawn`.
                    let to_stderr = frame.stream.as_deref() == Some("stderr");
                    // After a local write error the rest is read and dropped
                    // until the server confirms the cancel.
                    let mut wrote = Ok(());
                    while let Some(chunk) = rd.read_body_chunk().await? {
                        if local_error.is_none() && wrote.is_ok() {
                            wrote = match to_stderr {
                                true => stderr.write_all(&chunk).await,
                                false => stdout.write_all(&chunk).await,
                            };
                        }
                    }
                    if local_error.is_none()
                        && let Err(e) = wrote.and(match to_stderr {
                            true => stderr.flush().await,
                            false => stdout.flush().await,
                        })
                    {
                        local_error = Some(e);
                        if let Some(tx) = stop_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                }
            }
            .await;
            let _ = done_tx.send(());
            result
        };
        let (w, r) = tokio::join!(writer, reader);
        let outcome = r?;
        w?;
        Ok(outcome)
    }
}
