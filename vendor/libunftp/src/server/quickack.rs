//! ferry patches 3 and 4 (FERRY-PATCHES.md): a connection that acknowledges
//! what it reads at once during its TLS handshake.
//!
//! GnuTLS clients (lftp, FileZilla) send ChangeCipherSpec and Finished as
//! two small writes without TCP_NODELAY and hold the second until the first
//! is acknowledged; the server, with nothing to send, delays that ACK by
//! 40 ms. Setting TCP_QUICKACK after a read makes Linux send a pending ACK
//! now; it does not stay set, so it is set again after every read.

use std::io::IoSlice;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A second handle on a socket, for setting options on it while its stream
/// is wrapped or boxed; `None` if the descriptor cannot be duplicated.
pub(crate) fn second_handle(socket: &impl AsFd) -> Option<socket2::Socket> {
    socket.as_fd().try_clone_to_owned().ok().map(socket2::Socket::from)
}

/// `io`, acknowledging each read at once while `socket` (its TCP socket) is
/// held.
pub(crate) struct QuickAckReads<IO> {
    io: IO,
    socket: Option<socket2::Socket>,
}

impl<IO> QuickAckReads<IO> {
    pub(crate) fn new(io: IO, socket: Option<socket2::Socket>) -> Self {
        Self { io, socket }
    }

    /// Back to the kernel's usual (delayed) ACKs, once the handshake is done.
    pub(crate) fn stop(&mut self) {
        self.socket = None;
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for QuickAckReads<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Some(socket) = &self.socket
            && buf.filled().len() > before
        {
            // Best effort: a failure only costs the delay this avoids.
            let _ = socket.set_tcp_quickack(true);
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for QuickAckReads<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
