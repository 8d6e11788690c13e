//! `Metered`: a [`Storage`] around another that times each call by
//! operation and counts the calls that failed (`metrics.rs`,
//! [`StorageMetrics`]). `Core::open_home` wraps every home's storage in one,
//! so every backend is measured the same way and none of them changes.
//!
//! The partial writes and file reads a call opens are wrapped too: their
//! `write_at`, `commit`, `read_at` and `hash_prefix` are the storage's work
//! in an upload or a download. `stream` is not timed (its pace is the
//! client's, through a bounded channel), nor counted when it fails (a
//! client that leaves breaks the pipe).
//!
//! Only I/O errors count as failures: "not found" or "already exists" is
//! the storage answering a request, not failing it.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_proto::hash::{HashAlgo, Hasher};
use tokio::sync::mpsc;

use super::{
    Amount, Entry, FileRead, PartialInfo, PartialMeta, PartialWrite, PartialWrites, SmallFile, SmallWrite, Storage,
    VfsError, VirtualPath,
};
use crate::metrics::StorageMetrics;

/// A storage whose calls are measured.
#[derive(Debug)]
pub struct Metered {
    inner: Arc<dyn Storage>,
    metrics: StorageMetrics,
}

impl Metered {
    pub fn new(inner: Arc<dyn Storage>, metrics: StorageMetrics) -> Metered {
        Metered { inner, metrics }
    }
}

fn failed(e: &VfsError) -> bool {
    matches!(e, VfsError::Io(_))
}

fn io_failed(e: &std::io::Error) -> bool {
    // A file that shrank under a read is a change, not a failure.
    e.kind() != std::io::ErrorKind::UnexpectedEof
}

/// Runs `call`, recording its duration and whether it failed.
async fn timed<T>(
    metrics: &StorageMetrics,
    operation: &'static str,
    call: impl Future<Output = Result<T, VfsError>>,
) -> Result<T, VfsError> {
    let started = Instant::now();
    let result = call.await;
    metrics.observe(operation, started.elapsed(), result.as_ref().err().is_some_and(failed));
    result
}

#[async_trait]
impl Storage for Metered {
    async fn usage(&self) -> Result<Amount, VfsError> {
        timed(&self.metrics, "usage", self.inner.usage()).await
    }

    async fn stat(&self, path: &VirtualPath) -> Result<Entry, VfsError> {
        timed(&self.metrics, "stat", self.inner.stat(path)).await
    }

    async fn enter(&self, path: &VirtualPath) -> Result<(), VfsError> {
        timed(&self.metrics, "enter", self.inner.enter(path)).await
    }

    async fn list(&self, path: &VirtualPath) -> Result<Vec<Entry>, VfsError> {
        timed(&self.metrics, "list", self.inner.list(path)).await
    }

    async fn mkdir(&self, path: &VirtualPath, parents: bool) -> Result<Amount, VfsError> {
        timed(&self.metrics, "mkdir", self.inner.mkdir(path, parents)).await
    }

    async fn remove_file(&self, path: &VirtualPath) -> Result<Amount, VfsError> {
        timed(&self.metrics, "remove_file", self.inner.remove_file(path)).await
    }

    async fn remove_dir(&self, path: &VirtualPath) -> Result<Amount, VfsError> {
        timed(&self.metrics, "remove_dir", self.inner.remove_dir(path)).await
    }

    async fn remove_tree(&self, path: &VirtualPath) -> Result<Amount, VfsError> {
        timed(&self.metrics, "remove_tree", self.inner.remove_tree(path)).await
    }

    async fn rename(&self, from: &VirtualPath, to: &VirtualPath, overwrite: bool) -> Result<Amount, VfsError> {
        timed(&self.metrics, "rename", self.inner.rename(from, to, overwrite)).await
    }

    async fn open_read(&self, path: &VirtualPath) -> Result<Box<dyn FileRead>, VfsError> {
        let read = timed(&self.metrics, "open_read", self.inner.open_read(path)).await?;
        Ok(Box::new(MeteredRead { inner: read, metrics: self.metrics.clone() }))
    }

    async fn read_small(
        &self,
        paths: Vec<VirtualPath>,
        max_each: u64,
        budget: u64,
        algo: HashAlgo,
    ) -> Vec<Result<Option<SmallFile>, VfsError>> {
        let started = Instant::now();
        let results = self.inner.read_small(paths, max_each, budget, algo).await;
        let any_failed = results.iter().any(|r| r.as_ref().err().is_some_and(failed));
        self.metrics.observe("read_small", started.elapsed(), any_failed);
        results
    }

    async fn write_small(&self, files: Vec<SmallWrite>, fsync: bool) -> Vec<Result<Amount, VfsError>> {
        let started = Instant::now();
        let results = self.inner.write_small(files, fsync).await;
        let any_failed = results.iter().any(|r| r.as_ref().err().is_some_and(failed));
        self.metrics.observe("write_small", started.elapsed(), any_failed);
        results
    }

    async fn partial_create(&self, id: &str, meta: &PartialMeta) -> Result<Box<dyn PartialWrite>, VfsError> {
        let write = timed(&self.metrics, "partial_create", self.inner.partial_create(id, meta)).await?;
        Ok(Box::new(MeteredWrite { inner: write, metrics: self.metrics.clone() }))
    }

    async fn partial_open(&self, id: &str, meta: &PartialMeta) -> Result<Box<dyn PartialWrite>, VfsError> {
        let write = timed(&self.metrics, "partial_open", self.inner.partial_open(id, meta)).await?;
        Ok(Box::new(MeteredWrite { inner: write, metrics: self.metrics.clone() }))
    }

    async fn partial_info(&self, id: &str) -> Result<Option<PartialInfo>, VfsError> {
        timed(&self.metrics, "partial_info", self.inner.partial_info(id)).await
    }

    async fn partial_list(&self) -> Result<Vec<PartialInfo>, VfsError> {
        timed(&self.metrics, "partial_list", self.inner.partial_list()).await
    }

    async fn partial_hash(&self, id: &str, len: u64, algo: HashAlgo) -> Result<(Hasher, u64), VfsError> {
        timed(&self.metrics, "partial_hash", self.inner.partial_hash(id, len, algo)).await
    }

    async fn partial_remove(&self, id: &str) -> Result<Amount, VfsError> {
        timed(&self.metrics, "partial_remove", self.inner.partial_remove(id)).await
    }

    // What the backend declares passes through unchanged: `Home` and the
    // server decide by it.
    fn partial_writes(&self) -> PartialWrites {
        self.inner.partial_writes()
    }

    fn resumes_in(&self, algo: HashAlgo) -> bool {
        self.inner.resumes_in(algo)
    }
}

/// A partial upload whose writes and commit are measured.
struct MeteredWrite {
    inner: Box<dyn PartialWrite>,
    metrics: StorageMetrics,
}

#[async_trait]
impl PartialWrite for MeteredWrite {
    fn check_range(&self, offset: u64, end: u64) -> Result<(), VfsError> {
        self.inner.check_range(offset, end)
    }

    async fn write_at(&mut self, offset: u64, data: Bytes) -> Result<(), VfsError> {
        timed(&self.metrics, "partial_write", self.inner.write_at(offset, data)).await
    }

    fn write_at_blocking(&mut self, offset: u64, data: &[u8]) -> Option<Result<(), VfsError>> {
        let started = Instant::now();
        let result = self.inner.write_at_blocking(offset, data)?;
        self.metrics.observe("partial_write", started.elapsed(), result.as_ref().err().is_some_and(failed));
        Some(result)
    }

    async fn commit(
        self: Box<Self>,
        target: &VirtualPath,
        overwrite: bool,
        fsync: bool,
        hash: Option<(HashAlgo, &str)>,
    ) -> Result<Amount, VfsError> {
        let MeteredWrite { inner, metrics } = *self;
        timed(&metrics, "commit", inner.commit(target, overwrite, fsync, hash)).await
    }
}

/// A file open for reading whose reads are measured.
struct MeteredRead {
    inner: Box<dyn FileRead>,
    metrics: StorageMetrics,
}

#[async_trait]
impl FileRead for MeteredRead {
    fn entry(&self) -> &Entry {
        self.inner.entry()
    }

    fn recorded_hash(&self, algo: HashAlgo) -> Option<String> {
        self.inner.recorded_hash(algo)
    }

    fn local_file(&self) -> Option<&std::fs::File> {
        self.inner.local_file()
    }

    async fn stream(
        self: Box<Self>,
        offset: u64,
        hash: Option<HashAlgo>,
        tx: mpsc::Sender<Bytes>,
    ) -> std::io::Result<Option<String>> {
        self.inner.stream(offset, hash, tx).await
    }

    async fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        let started = Instant::now();
        let result = self.inner.read_at(offset, len).await;
        self.metrics.observe("read_at", started.elapsed(), result.as_ref().err().is_some_and(io_failed));
        result
    }

    async fn hash_prefix(self: Box<Self>, len: u64, algo: HashAlgo) -> std::io::Result<(String, u64)> {
        let MeteredRead { inner, metrics } = *self;
        let started = Instant::now();
        let result = inner.hash_prefix(len, algo).await;
        metrics.observe("hash_prefix", started.elapsed(), result.as_ref().err().is_some_and(io_failed));
        result
    }
}
