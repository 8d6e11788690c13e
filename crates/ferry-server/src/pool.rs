//! Recycled transfer buffers, each its own anonymous mapping.
//!
//! Large buffers that live briefly and are freed on another thread than the
//! one that allocated them: an S3 upload's parts (8 MiB by default) and a
//! download's segments (4 MiB), an SFTP session's write packets (256 KiB)
//! and the blocks an SFTP download reads. mimalloc (the global allocator)
//! keeps such memory resident for its purge delay (1 s, and only purges on
//! later allocator activity), and another thread's next allocation takes
//! fresh pages meanwhile: a 1 GiB transfer through S3 held 50-75 MiB more
//! than it used, an SFTP upload 15-25 MiB, and an idle server kept it into
//! the next transfer. So a pool per transfer or session hands the same few
//! buffers round (a buffer frozen into [`Bytes`] comes back when its last
//! slice is dropped, wherever that is), and each buffer is a mapping of its
//! own, given back to the kernel when the pool lets it go: none of it stays
//! resident after the transfer.
//!
//! A pool keeps at most `keep` idle buffers and maps at most twice that
//! (lent or idle); past that, and when the kernel refuses a mapping (its
//! per-process limit on mappings, which many busy sessions could reach), a
//! buffer is an ordinary allocation: no session can take the server down
//! by asking for buffers.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use memmap2::MmapMut;

/// Buffers of `size` bytes, at most `keep` of them idle.
pub(crate) struct Pool {
    size: usize,
    keep: usize,
    maps: Mutex<Maps>,
}

#[derive(Default)]
struct Maps {
    idle: Vec<MmapMut>,
    /// Mapped buffers out of the pool.
    lent: usize,
}

/// Whether a refused mapping has been logged (once per process: the limit
/// is the process's, and a busy server would repeat it for every buffer).
static MAP_REFUSED: AtomicBool = AtomicBool::new(false);

impl Pool {
    pub(crate) fn new(size: usize, keep: usize) -> Arc<Pool> {
        Arc::new(Pool { size, keep, maps: Mutex::default() })
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An empty buffer: an idle one, else a new mapping while fewer than
    /// `2 * keep` are out, else an ordinary allocation.
    pub(crate) fn take(self: &Arc<Self>) -> Buf {
        let buf = |mem| Buf { mem, len: 0, pool: Arc::clone(self) };
        let mut maps = self.maps();
        if let Some(map) = maps.idle.pop() {
            maps.lent += 1;
            return buf(Mem::Map(map));
        }
        let may_map = maps.lent < 2 * self.keep;
        if may_map {
            maps.lent += 1;
        }
        drop(maps);
        if may_map {
            match MmapMut::map_anon(self.size) {
                Ok(map) => return buf(Mem::Map(map)),
                Err(e) => {
                    self.maps().lent -= 1;
                    if !MAP_REFUSED.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, bytes = self.size, "cannot map a transfer buffer; allocating instead");
                    }
                }
            }
        }
        buf(Mem::Heap(vec![0; self.size].into_boxed_slice()))
    }

    fn put_back(&self, mem: Mem) {
        if let Mem::Map(map) = mem {
            let mut maps = self.maps();
            maps.lent -= 1;
            if maps.idle.len() < self.keep {
                maps.idle.push(map);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.maps().idle.len()
    }
}

/// A buffer's memory: a mapping of the pool's, or an allocation past them.
enum Mem {
    Map(MmapMut),
    Heap(Box<[u8]>),
}

impl Deref for Mem {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Mem::Map(m) => m,
            Mem::Heap(h) => h,
        }
    }
}

impl DerefMut for Mem {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Mem::Map(m) => m,
            Mem::Heap(h) => h,
        }
    }
}

/// A buffer of a pool, filled from its start: the bytes so far. Back to
/// the pool when dropped.
pub(crate) struct Buf {
    mem: Mem,
    len: usize,
    pool: Arc<Pool>,
}

impl Buf {
    /// The bytes as [`Bytes`]: back to the pool once every slice of them
    /// is dropped.
    pub(crate) fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }

    /// Bytes that still fit.
    pub(crate) fn room(&self) -> usize {
        self.mem.len() - self.len
    }

    /// The first `n` bytes (which must fit), as the buffer's contents, to be
    /// written over: a buffer used before still holds its old bytes.
    pub(crate) fn fill(&mut self, n: usize) -> &mut [u8] {
        self.len = n;
        &mut self.mem[..n]
    }

    /// Appends `data`, which must fit.
    pub(crate) fn extend_from_slice(&mut self, data: &[u8]) {
        self.mem[self.len..self.len + data.len()].copy_from_slice(data);
        self.len += data.len();
    }

    /// Appends `n` zeros, which must fit (a buffer used before holds old bytes).
    fn extend_zeros(&mut self, n: usize) {
        self.mem[self.len..self.len + n].fill(0);
        self.len += n;
    }
}

impl Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.mem[..self.len]
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.mem[..self.len]
    }
}

/// Bytes in a row, held in buffers of one pool, each full but the last: the
/// first `size` bytes leave as their buffer, without a copy
/// ([`PartBuf::take_front`]).
pub(crate) struct PartBuf {
    pool: Arc<Pool>,
    chunks: VecDeque<Buf>,
    len: usize,
}

impl PartBuf {
    pub(crate) fn new(pool: Arc<Pool>) -> PartBuf {
        PartBuf { pool, chunks: VecDeque::new(), len: 0 }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn pool(&self) -> Arc<Pool> {
        Arc::clone(&self.pool)
    }

    /// The bytes, in order.
    pub(crate) fn pieces(&self) -> impl Iterator<Item = &[u8]> {
        self.chunks.iter().map(|c| &c[..])
    }

    /// Writes `data` at `at`; a hole before it reads as zeros.
    pub(crate) fn write_at(&mut self, at: usize, data: &[u8]) {
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
    pub(crate) fn take_front(&mut self) -> Option<Bytes> {
        if self.len < self.pool.size {
            return None;
        }
        let front = self.chunks.pop_front()?;
        self.len -= front.len();
        Some(front.freeze())
    }
}

impl AsRef<[u8]> for Buf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let mem = std::mem::replace(&mut self.mem, Mem::Heap(Box::default()));
        self.pool.put_back(mem);
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
        let bytes = a.freeze();
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

        drop(again);
        let taken: Vec<Buf> = (0..5).map(|_| pool.take()).collect();
        let mapped = taken.iter().filter(|b| matches!(b.mem, Mem::Map(_))).count();
        assert_eq!(mapped, 4, "at most twice `keep` mapped; past that an allocation");
        assert!(taken.iter().all(|b| b.room() == 16));
        let frozen: Vec<Bytes> = taken.into_iter().map(Buf::freeze).collect();
        drop(frozen);
        assert_eq!(pool.idle(), 2, "at most `keep` wait; the allocation never does");
        assert_eq!(pool.maps().lent, 0);
    }

    /// `fill` exposes exactly the bytes asked for, to be written over.
    #[test]
    fn fill_sets_the_contents_length() {
        let pool = Pool::new(8, 1);
        let mut b = pool.take();
        b.fill(5).copy_from_slice(b"hello");
        assert_eq!((&b[..], b.room()), (&b"hello"[..], 3));
        let bytes = b.freeze();
        assert_eq!(&bytes[..], b"hello");
        drop(bytes);
        let mut again = pool.take();
        assert_eq!(again.fill(2).len(), 2);
        assert_eq!(again.len(), 2);
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
