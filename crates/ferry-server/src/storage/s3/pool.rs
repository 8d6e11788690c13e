//! Recycled part and segment buffers, each its own anonymous mapping.
//!
//! An upload's parts (8 MiB by default) and a download's segments (4 MiB)
//! are large, short-lived and freed on another thread than the one that
//! allocated them (the request task, or the session that sent the last
//! block). mimalloc (the global allocator) keeps freed memory resident for
//! its purge delay (1 s, and only purges on later allocator activity), and
//! another thread's next allocation takes fresh pages meanwhile: a 1 GiB
//! transfer through S3 held 50-75 MiB more than it used, and an idle server
//! kept it into the next transfer. So a pool per transfer hands the same few
//! buffers round (a buffer frozen into [`Bytes`] comes back when its last
//! slice is dropped, wherever that is), and each buffer is a mapping of its
//! own, given back to the kernel when the pool lets it go: none of it stays
//! resident after the transfer.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use memmap2::MmapMut;

/// At most `keep` idle buffers of `size` bytes.
pub(super) struct Pool {
    size: usize,
    keep: usize,
    idle: Mutex<Vec<MmapMut>>,
}

impl Pool {
    pub(super) fn new(size: usize, keep: usize) -> Arc<Pool> {
        Arc::new(Pool { size, keep, idle: Mutex::new(Vec::new()) })
    }

    /// An empty buffer: an idle one, else a new mapping. The memory cannot
    /// be had: the process aborts, as for any allocation.
    pub(super) fn take(&self) -> Buf {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let map = idle.unwrap_or_else(|| {
            MmapMut::map_anon(self.size).unwrap_or_else(|e| {
                tracing::error!(error = %e, bytes = self.size, "cannot map a transfer buffer");
                std::alloc::handle_alloc_error(
                    std::alloc::Layout::array::<u8>(self.size).unwrap_or(std::alloc::Layout::new::<u8>()),
                )
            })
        });
        Buf { map, len: 0 }
    }

    /// `buf` as [`Bytes`]: back to the pool once it and every slice of it
    /// are dropped.
    pub(super) fn freeze(self: &Arc<Self>, buf: Buf) -> Bytes {
        Bytes::from_owner(Lent { buf: Some(buf), pool: Arc::clone(self) })
    }

    fn put_back(&self, map: MmapMut) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.keep {
            idle.push(map);
        }
    }

    #[cfg(test)]
    pub(super) fn idle(&self) -> usize {
        self.idle.lock().unwrap().len()
    }
}

/// A buffer of a pool, filled from its start: the bytes so far.
pub(super) struct Buf {
    map: MmapMut,
    len: usize,
}

impl Buf {
    /// Bytes that still fit.
    pub(super) fn room(&self) -> usize {
        self.map.len() - self.len
    }

    /// Appends `data`, which must fit.
    pub(super) fn extend_from_slice(&mut self, data: &[u8]) {
        self.map[self.len..self.len + data.len()].copy_from_slice(data);
        self.len += data.len();
    }

    /// Appends `n` zeros, which must fit (a buffer used before holds old bytes).
    fn extend_zeros(&mut self, n: usize) {
        self.map[self.len..self.len + n].fill(0);
        self.len += n;
    }
}

impl Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map[..self.len]
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.map[..self.len]
    }
}

/// Bytes in a row, held in buffers of one pool, each full but the last: the
/// first `size` bytes leave as their buffer, without a copy
/// ([`PartBuf::take_front`]).
pub(super) struct PartBuf {
    pool: Arc<Pool>,
    chunks: VecDeque<Buf>,
    len: usize,
}

impl PartBuf {
    pub(super) fn new(pool: Arc<Pool>) -> PartBuf {
        PartBuf { pool, chunks: VecDeque::new(), len: 0 }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn pool(&self) -> Arc<Pool> {
        Arc::clone(&self.pool)
    }

    /// The bytes, in order.
    pub(super) fn pieces(&self) -> impl Iterator<Item = &[u8]> {
        self.chunks.iter().map(|c| &c[..])
    }

    /// Writes `data` at `at`; a hole before it reads as zeros.
    pub(super) fn write_at(&mut self, at: usize, data: &[u8]) {
        if at > self.len {
            self.grow(at - self.len, None);
        }
        let over = (self.len - at).min(data.len());
        let (mut pos, mut rest) = (at, &data[..over]);
        while !rest.is_empty() {
            let (i, off) = (pos / self.pool.size, pos % self.pool.size);
            let n = (self.pool.size - off).min(rest.len());
            self.chunks[i][off..off + n].copy_from_slice(&rest[..n]);
            (pos, rest) = (pos + n, &rest[n..]);
        }
        self.grow(data.len() - over, Some(&data[over..]));
    }

    /// Appends `n` bytes: `data`, or zeros.
    fn grow(&mut self, mut n: usize, mut data: Option<&[u8]>) {
        while n > 0 {
            if self.chunks.back().is_none_or(|c| c.room() == 0) {
                self.chunks.push_back(self.pool.take());
            }
            let Some(last) = self.chunks.back_mut() else { unreachable!("just pushed") };
            let k = last.room().min(n);
            match data {
                Some(d) => {
                    last.extend_from_slice(&d[..k]);
                    data = Some(&d[k..]);
                }
                None => last.extend_zeros(k),
            }
            n -= k;
            self.len += k;
        }
    }

    /// The first `size` bytes (a buffer of the pool), once there are that many.
    pub(super) fn take_front(&mut self) -> Option<Bytes> {
        if self.len < self.pool.size {
            return None;
        }
        let front = self.chunks.pop_front()?;
        self.len -= front.len();
        Some(self.pool.freeze(front))
    }
}

/// A buffer out of its pool, as the owner of a [`Bytes`].
struct Lent {
    /// Taken only by `drop`.
    buf: Option<Buf>,
    pool: Arc<Pool>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_deref().unwrap_or_default()
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.put_back(buf.map);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer comes back when its last slice goes, and is handed out again
    /// (the same allocation); no more than `keep` wait.
    #[test]
    fn buffers_come_back_after_the_last_slice() {
        let pool = Pool::new(16, 2);
        let mut a = pool.take();
        a.extend_from_slice(b"0123456789abcdef");
        assert_eq!(a.room(), 0);
        let a_ptr = a.as_ptr();
        let bytes = pool.freeze(a);
        let (head, tail) = (bytes.slice(..8), bytes.slice(8..));
        drop(bytes);
        drop(head);
        assert_eq!(pool.idle(), 0, "a slice still holds it");
        assert_eq!(&tail[..], b"89abcdef");
        drop(tail);
        assert_eq!(pool.idle(), 1);
        let again = pool.take();
        assert!(again.is_empty() && again.room() == 16);
        assert_eq!(again.as_ptr(), a_ptr, "the same allocation again");

        let frozen: Vec<Bytes> = (0..3).map(|_| pool.freeze(pool.take())).collect();
        drop(frozen);
        assert_eq!(pool.idle(), 2, "at most `keep` wait");
    }

    fn contents(b: &PartBuf) -> Vec<u8> {
        b.pieces().flatten().copied().collect()
    }

    /// Writes land where they are meant to, across buffers, holes read as
    /// zeros, and the front leaves whole as the buffer it was written in.
    #[test]
    fn part_buf_writes_across_buffers_and_hands_the_front_off() {
        let pool = Pool::new(4, 2);
        let mut b = PartBuf::new(Arc::clone(&pool));
        b.write_at(0, &[1, 2, 3]);
        b.write_at(6, &[7, 8, 9]);
        assert_eq!((b.len(), contents(&b)), (9, vec![1, 2, 3, 0, 0, 0, 7, 8, 9]));
        b.write_at(2, &[30, 40, 50, 60]);
        assert_eq!(contents(&b), vec![1, 2, 30, 40, 50, 60, 7, 8, 9]);
        b.write_at(8, &[90, 10, 11]);
        assert_eq!(contents(&b), vec![1, 2, 30, 40, 50, 60, 7, 8, 90, 10, 11]);

        let first_buffer = b.chunks[0].as_ptr();
        let front = b.take_front().unwrap();
        assert_eq!((&front[..], front.as_ptr()), (&[1, 2, 30, 40][..], first_buffer));
        assert_eq!((b.len(), contents(&b)), (7, vec![50, 60, 7, 8, 90, 10, 11]));
        assert_eq!(&b.take_front().unwrap()[..], &[50, 60, 7, 8]);
        assert!(b.take_front().is_none(), "3 bytes are not a part");
        drop(front);
        assert_eq!(pool.idle(), 2, "both parts came back");
        b.write_at(5, &[12, 13]);
        assert_eq!(contents(&b), vec![90, 10, 11, 0, 0, 12, 13], "old bytes of a buffer used again do not show");
        assert_eq!(b.chunks[1].as_ptr(), first_buffer, "the buffer came back and was used again");
    }
}
