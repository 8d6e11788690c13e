//! A buffered frame connection over any async byte stream (TCP, TLS, Unix
//! socket, or one half of a split stream).
//!
//! Reading goes through [`FrameCodec`]'s `Decoder`; writing through its
//! `Encoder`. Large body writes skip the write buffer and go straight to the
//! stream, so file data is never copied an extra time.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{FrameCodec, FrameError, FrameItem, Header};

/// Read buffer reservation inside a body: large reads keep the per-syscall
/// cost low, and the pieces handed out are as large (each one a hand-over
/// to the thread that hashes and writes it). 1 MiB against 256 KiB: a
/// plaintext 1 GiB put took 0.89 s instead of 1.0 s, a get 0.86 s instead
/// of 0.95 s, with a tenth less CPU on the receiving side.
const READ_RESERVE: usize = 1024 * 1024;
/// A read buffer this large is let go once a body ends with nothing left in it.
const SHRINK_ABOVE: usize = 64 * 1024;
/// Queued small writes are sent once they reach this.
const WRITE_FLUSH: usize = 256 * 1024;
/// Read buffer reservation between bodies (headers are small).
const HEADER_RESERVE: usize = 8 * 1024;
/// Body writes at least this large bypass the write buffer.
const DIRECT_WRITE: usize = 32 * 1024;

pub struct Connection<S> {
    io: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    codec: FrameCodec,
    /// Body bytes read and written so far (file data, for a server's metrics).
    body_read: u64,
    body_written: u64,
}

impl<S> Connection<S> {
    pub fn new(io: S, codec: FrameCodec) -> Self {
        Connection {
            io,
            rbuf: BytesMut::with_capacity(HEADER_RESERVE),
            wbuf: BytesMut::with_capacity(4 * 1024),
            codec,
            body_read: 0,
            body_written: 0,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The raw stream, for zero-copy writes. Call [`Connection::flush`] before
    /// writing to it and [`Connection::note_body_written`] after.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    pub fn codec(&self) -> &FrameCodec {
        &self.codec
    }

    /// Body bytes of the current incoming frame not yet read.
    pub fn body_remaining(&self) -> u64 {
        self.codec.body_remaining()
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.rbuf.len()
    }

    /// The next header if it is already whole in the read buffer, without
    /// consuming it or waiting for input; `None` inside a body. For a server
    /// that handles a run of pipelined requests together.
    pub fn peek_header(&self) -> Option<Header> {
        if self.codec.body_remaining() > 0 || self.rbuf.len() < 4 {
            return None;
        }
        let len = u32::from_be_bytes([self.rbuf[0], self.rbuf[1], self.rbuf[2], self.rbuf[3]]) as usize;
        if len > self.codec.max_header() || self.rbuf.len() < 4 + len {
            return None;
        }
        crate::frame::parse_header(&self.rbuf[4..4 + len]).ok()
    }

    pub fn note_body_written(&mut self, n: u64) -> Result<(), FrameError> {
        self.codec.note_body_written(n)?;
        self.body_written += n;
        Ok(())
    }

    /// Body bytes read and written since the connection opened (headers
    /// not included), for a server that counts the file data it moves.
    pub fn body_bytes(&self) -> (u64, u64) {
        (self.body_read, self.body_written)
    }

    pub fn into_inner(self) -> S {
        self.io
    }
}

impl<S: AsyncRead + Unpin> Connection<S> {
    /// The next header or body piece; `None` when the peer closed the stream
    /// cleanly between frames. Cancel-safe: partial input stays buffered.
    pub async fn next_item(&mut self) -> Result<Option<FrameItem>, FrameError> {
        loop {
            if let Some(item) = self.codec.decode(&mut self.rbuf)? {
                if let FrameItem::Body(b) = &item {
                    self.body_read += b.len() as u64;
                    if self.rbuf.is_empty() && self.codec.at_boundary() && self.rbuf.capacity() > SHRINK_ABOVE {
                        // The body is done: an idle session keeps a small buffer.
                        self.rbuf = BytesMut::with_capacity(HEADER_RESERVE);
                    }
                }
                return Ok(Some(item));
            }
            // Large reads only inside a large body: an idle session, or a run
            // of small files, keeps a small buffer.
            let want = match self.codec.body_remaining() {
                0 => HEADER_RESERVE,
                left => READ_RESERVE.min(usize::try_from(left).unwrap_or(usize::MAX).saturating_add(HEADER_RESERVE)),
            };
            if self.rbuf.capacity() - self.rbuf.len() < want / 4 {
                self.rbuf.reserve(want);
            }
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return self.codec.decode_eof(&mut self.rbuf);
            }
        }
    }

    /// The next header. Any unread body of the previous frame is skipped first.
    pub async fn read_header(&mut self) -> Result<Option<Header>, FrameError> {
        self.skip_body().await?;
        match self.next_item().await? {
            Some(FrameItem::Header(h)) => Ok(Some(h)),
            Some(FrameItem::Body(_)) => Err(FrameError::UnexpectedBody),
            None => Ok(None),
        }
    }

    /// The next piece of the current body, or `None` once it is complete.
    pub async fn read_body_chunk(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.codec.body_remaining() == 0 {
            return Ok(None);
        }
        match self.next_item().await? {
            Some(FrameItem::Body(b)) => Ok(Some(b)),
            Some(FrameItem::Header(_)) => Err(FrameError::UnexpectedBody),
            None => Err(FrameError::Truncated),
        }
    }

    /// Reads the whole current body into memory. Only for bodies the caller
    /// has already bounded (the header states the size).
    pub async fn read_body_to_vec(&mut self, limit: u64) -> Result<Vec<u8>, FrameError> {
        if self.codec.body_remaining() > limit {
            return Err(FrameError::HeaderTooLarge { len: self.codec.body_remaining() as usize, max: limit as usize });
        }
        let mut out = Vec::with_capacity(self.codec.body_remaining() as usize);
        while let Some(chunk) = self.read_body_chunk().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Discards the rest of the current body.
    pub async fn skip_body(&mut self) -> Result<u64, FrameError> {
        let mut skipped = 0;
        while let Some(chunk) = self.read_body_chunk().await? {
            skipped += chunk.len() as u64;
        }
        Ok(skipped)
    }
}

impl<S: AsyncWrite + Unpin> Connection<S> {
    /// Queues a header; it goes out with the next flush or large body write.
    pub fn queue_header(&mut self, header: &Header) -> Result<(), FrameError> {
        self.codec.encode(header, &mut self.wbuf)
    }

    /// Queues a header and flushes it.
    pub async fn send(&mut self, header: &Header) -> Result<(), FrameError> {
        self.queue_header(header)?;
        self.flush().await
    }

    /// Writes body bytes announced by the last header.
    pub async fn write_body(&mut self, data: &[u8]) -> Result<(), FrameError> {
        if data.len() < DIRECT_WRITE {
            self.codec.encode(data, &mut self.wbuf)?;
            self.body_written += data.len() as u64;
            if self.wbuf.len() >= WRITE_FLUSH {
                self.flush_buffer().await?;
            }
            return Ok(());
        }
        self.codec.note_body_written(data.len() as u64)?;
        self.flush_buffer().await?;
        self.io.write_all(data).await?;
        self.body_written += data.len() as u64;
        Ok(())
    }

    /// Sends a header and its whole (small) body.
    pub async fn send_with_body(&mut self, header: &Header, body: &[u8]) -> Result<(), FrameError> {
        self.queue_header(header)?;
        self.write_body(body).await?;
        self.flush().await
    }

    /// Writes out the queued bytes. Cancel-safe: what the stream took is
    /// dropped from the queue at once, so a caller that gives up on a slow
    /// peer (the server's idle timeout) and later sends a last frame never
    /// repeats bytes.
    async fn flush_buffer(&mut self) -> Result<(), FrameError> {
        while !self.wbuf.is_empty() {
            let n = self.io.write(&self.wbuf).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
            }
            self.wbuf.advance(n);
        }
        Ok(())
    }

    /// Writes out everything queued and flushes the stream.
    pub async fn flush(&mut self) -> Result<(), FrameError> {
        self.flush_buffer().await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Bytes queued but not yet written: the answers a peer has not taken
    /// yet, for a server that caps them per session.
    pub fn queued(&self) -> usize {
        self.wbuf.len()
    }

    pub async fn shutdown(&mut self) -> Result<(), FrameError> {
        self.flush().await?;
        self.io.shutdown().await?;
        Ok(())
    }
}
