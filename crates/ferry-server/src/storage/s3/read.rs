//! Reading an S3 object: ranged GETs pinned to the ETag it had when it was
//! opened, so a download (or its resume) never mixes two versions: a file
//! replaced meanwhile fails the read, as a file that changed on disk does.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use ferry_proto::hash::{HashAlgo, Hasher};
use futures::StreamExt;
use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore};
use tokio::sync::mpsc;

use super::super::{Entry, FileRead, READ_BLOCK};
use crate::pool::Pool;

/// A long read is fetched as ranged GETs of this size, [`SEGMENTS_IN_FLIGHT`]
/// at once: one GET stream is bound by one node's pace, and S3 (Garage,
/// AWS) serves ranges side by side, as rclone's multi-thread downloads use.
const SEGMENT: u64 = 4 << 20;
/// With the segment being sent and the one its last blocks still pin, a
/// download holds five segments (20 MiB); four in flight held 24 MiB for no
/// measured gain.
const SEGMENTS_IN_FLIGHT: usize = 3;

pub(super) struct S3Read {
    store: Arc<AmazonS3>,
    location: Path,
    entry: Entry,
    e_tag: Option<String>,
    sha256: Option<String>,
}

impl S3Read {
    pub(super) fn new(
        store: Arc<AmazonS3>,
        location: Path,
        entry: Entry,
        e_tag: Option<String>,
        sha256: Option<String>,
    ) -> S3Read {
        S3Read { store, location, entry, e_tag, sha256 }
    }

    /// The bytes of `range`, whole, from the version opened.
    async fn get_all(&self, range: Range<u64>) -> std::io::Result<Bytes> {
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        self.get_into(range, |chunk| out.extend_from_slice(chunk)).await?;
        Ok(Bytes::from(out))
    }

    /// The bytes of `range`, whole, from the version opened, in a buffer of
    /// `pool` (which holds a segment).
    async fn get_segment(&self, range: Range<u64>, pool: &Arc<Pool>) -> std::io::Result<Bytes> {
        let mut out = pool.take();
        self.get_into(range, |chunk| out.extend_from_slice(chunk)).await?;
        Ok(out.freeze())
    }

    /// Hands the bytes of `range` to `sink` as they come, never more than
    /// the range holds.
    async fn get_into(&self, range: Range<u64>, mut sink: impl FnMut(&[u8])) -> std::io::Result<()> {
        let want = range.end - range.start;
        let mut got = 0u64;
        let mut body = self.get(range).await?;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(io_error)?;
            got += chunk.len() as u64;
            if got > want {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            sink(&chunk);
        }
        if got != want {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// The bytes of `range` as a stream of chunks, from the version opened.
    async fn get(
        &self,
        range: Range<u64>,
    ) -> std::io::Result<futures::stream::BoxStream<'static, object_store::Result<Bytes>>> {
        let opts =
            GetOptions { range: Some(GetRange::Bounded(range)), if_match: self.e_tag.clone(), ..Default::default() };
        match self.store.get_opts(&self.location, opts).await {
            Ok(got) => Ok(got.into_stream()),
            Err(e) => Err(io_error(e)),
        }
    }
}

/// A read that failed: the object changed or vanished (`UnexpectedEof`,
/// which the home reports as a changed file), or S3 failed (logged).
fn io_error(e: object_store::Error) -> std::io::Error {
    match e {
        object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. } => {
            std::io::ErrorKind::UnexpectedEof.into()
        }
        e => {
            tracing::warn!(error = %e, "S3 read failed");
            std::io::Error::other("storage backend request failed")
        }
    }
}

#[async_trait]
impl FileRead for S3Read {
    fn entry(&self) -> &Entry {
        &self.entry
    }

    /// Only SHA-256 is kept with an object (`x-amz-meta-ferry-sha256`).
    fn recorded_hash(&self, algo: HashAlgo) -> Option<String> {
        match algo {
            HashAlgo::Sha256 => self.sha256.clone(),
            HashAlgo::Blake3 => None,
        }
    }

    fn local_file(&self) -> Option<&std::fs::File> {
        None
    }

    async fn stream(
        self: Box<Self>,
        offset: u64,
        hash: Option<HashAlgo>,
        tx: mpsc::Sender<Bytes>,
    ) -> std::io::Result<Option<String>> {
        let size = self.entry.size;
        let mut hasher = hash.map(Hasher::new);
        // Hashing needs the prefix too: read it, send only from `offset`.
        let start = if hash.is_some() { 0 } else { offset.min(size) };
        let mut at = start;
        if size - start > SEGMENT {
            let this = &self;
            // The segments being fetched and the one being sent: their
            // buffers come back as the session drops the last block of each.
            let pool = Pool::new(SEGMENT as usize, SEGMENTS_IN_FLIGHT + 1);
            let segments = (start..size).step_by(SEGMENT as usize).map(|from| from..(from + SEGMENT).min(size));
            let mut fetched =
                futures::stream::iter(segments).map(|r| this.get_segment(r, &pool)).buffered(SEGMENTS_IN_FLIGHT);
            while let Some(segment) = fetched.next().await {
                let segment = segment?;
                if let Some(h) = hasher.as_mut() {
                    h.update(&segment);
                }
                let skip = offset.saturating_sub(at).min(segment.len() as u64) as usize;
                at += segment.len() as u64;
                let mut rest = segment.slice(skip..);
                while !rest.is_empty() {
                    let block = rest.split_to(rest.len().min(READ_BLOCK));
                    if tx.send(block).await.is_err() {
                        return Err(std::io::ErrorKind::BrokenPipe.into());
                    }
                }
            }
        } else if start < size {
            let mut body = self.get(start..size).await?;
            let mut block = BytesMut::new();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(io_error)?;
                if let Some(h) = hasher.as_mut() {
                    h.update(&chunk);
                }
                let skip = offset.saturating_sub(at).min(chunk.len() as u64) as usize;
                at += chunk.len() as u64;
                block.extend_from_slice(&chunk[skip..]);
                while block.len() >= READ_BLOCK {
                    if tx.send(block.split_to(READ_BLOCK).freeze()).await.is_err() {
                        return Err(std::io::ErrorKind::BrokenPipe.into());
                    }
                }
            }
            if !block.is_empty() && tx.send(block.freeze()).await.is_err() {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
        }
        if at != size.max(start) {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(hasher.map(Hasher::finalize_hex))
    }

    async fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        let size = self.entry.size;
        let end = offset.saturating_add(len as u64).min(size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        self.get_all(offset..end).await
    }

    async fn hash_prefix(self: Box<Self>, len: u64, algo: HashAlgo) -> std::io::Result<(String, u64)> {
        let n = len.min(self.entry.size);
        let mut hasher = Hasher::new(algo);
        let mut got = 0u64;
        if n > 0 {
            let mut body = self.get(0..n).await?;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(io_error)?;
                got += chunk.len() as u64;
                hasher.update(&chunk);
            }
        }
        if got != n {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok((hasher.finalize_hex(), n))
    }
}
