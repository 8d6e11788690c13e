//! `S3Storage`: a home in an S3 bucket (issue 16), on `object_store` 0.14.
//!
//! Layout, under the home's key prefix `<prefix><user>/`:
//! - a file `/a/b` is the object `a/b`, its verified SHA-256 in the object's
//!   metadata (`x-amz-meta-ferry-sha256`), which copies and renames carry;
//! - a directory `/a` is explicit: the empty object `a/.ferry-dir` (a name no
//!   user can spell). An empty directory exists and lists; a prefix that
//!   holds objects but no marker (written by another tool) is a directory too;
//! - partial uploads are kept under `.ferry-partial/` (never listed): see
//!   [`upload`] for their parts, tail and state, [`state`] for where the state
//!   lives.
//!
//! Every listing is paginated (ListObjectsV2 pages, followed by token);
//! downloads and their resumes are ranged GETs pinned to the object's ETag.
//!
//! S3 has no rename and no atomic check-and-create: a rename is a
//! server-side copy then a delete (a directory, object by object), and each
//! change of a home's names runs under one lock per home in this server, so
//! what a change replaced or freed is measured exactly here. Two servers
//! changing the same names at the same instant can still race (the last
//! writer wins, as S3 itself decides).

mod api;
mod hashing;
mod read;
mod state;
mod upload;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AwsCredential};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ClientOptions, GetOptions, ObjectMeta, ObjectStore, ObjectStoreExt, PutOptions, PutPayload,
    RetryConfig,
};

use ferry_proto::hash::{HashAlgo, Hasher};

use super::{
    Amount, Entry, EntryKind, FileRead, PartialInfo, PartialMeta, PartialWrite, PartialWrites, SmallFile, SmallWrite,
    Storage, VfsError, VirtualPath,
};
use crate::config::StorageConfig;
pub use api::RawError;
pub use state::{BucketPartialStore, PartRecord, PartialState, PartialStore, PgPartialStore};

/// The object metadata name of the verified hash (`x-amz-meta-ferry-sha256`).
pub(crate) const HASH_META: &str = "ferry-sha256";
/// The marker object that makes a directory exist.
const DIR_MARKER: &str = ".ferry-dir";
/// Pages of one listing followed at most (10 million keys).
const MAX_PAGES: usize = 10_000;
/// Objects copied or deleted at once by a directory rename or removal.
const PARALLEL: usize = 8;

/// The S3 credentials, from the environment only.
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    secret_access_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

impl S3Credentials {
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> S3Credentials {
        S3Credentials { access_key_id: access_key_id.into(), secret_access_key: secret_access_key.into() }
    }

    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`; the message names
    /// the one that is missing.
    pub fn from_env() -> Result<S3Credentials, S3StartError> {
        let get = |name: &'static str| match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok(v),
            _ => Err(S3StartError::MissingCredential(name)),
        };
        Ok(S3Credentials::new(get("AWS_ACCESS_KEY_ID")?, get("AWS_SECRET_ACCESS_KEY")?))
    }
}

/// Why S3 storage cannot start; each names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum S3StartError {
    #[error("[storage] kind = \"s3\" needs {0} in the environment (credentials are never read from the file)")]
    MissingCredential(&'static str),
    #[error("S3 bucket {bucket:?} does not exist at {endpoint}")]
    NoSuchBucket { bucket: String, endpoint: String },
    #[error(
        "S3 at {endpoint} refused the access key {key_id:?} (AWS_ACCESS_KEY_ID) for bucket {bucket:?}: {code} (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    )]
    BadKey { key_id: String, bucket: String, endpoint: String, code: String },
    #[error("cannot use S3 bucket {bucket:?} at {endpoint}: {why}")]
    Other { bucket: String, endpoint: String, why: String },
}

/// The tuning of S3 homes.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// Key prefix of the homes (`homes/`).
    pub prefix: String,
    /// Size of each part but the last.
    pub part_size: u64,
    /// Bytes of one upload held in memory ahead of its sent parts.
    pub max_buffer: u64,
}

/// One bucket, shared by every home of the server: the client, the live
/// uploads of this process and the per-home locks.
pub struct S3Bucket {
    store: Arc<AmazonS3>,
    raw: api::RawS3,
    states: Arc<dyn PartialStore>,
    settings: S3Settings,
    bucket: String,
    endpoint: String,
    key_id: String,
    live: Mutex<HashMap<String, Weak<upload::Live>>>,
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    /// Tails being stored in the background, waited for at shutdown.
    tasks: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for S3Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Bucket").field("bucket", &self.bucket).field("endpoint", &self.endpoint).finish()
    }
}

impl S3Bucket {
    /// A client for the bucket of `[storage]`, keeping partial-upload states
    /// in the bucket; no request is made yet ([`S3Bucket::check`] makes one).
    pub fn new(cfg: &StorageConfig, creds: S3Credentials) -> Result<Arc<S3Bucket>, S3StartError> {
        Self::with_states(cfg, creds, None)
    }

    /// As [`S3Bucket::new`], keeping partial-upload states in `states` (the
    /// shared database's) instead of the bucket, when given.
    pub fn with_states(
        cfg: &StorageConfig,
        creds: S3Credentials,
        states: Option<Arc<dyn PartialStore>>,
    ) -> Result<Arc<S3Bucket>, S3StartError> {
        // reqwest is built without a bundled TLS provider: ferry's is ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let endpoint = api::Endpoint::new(cfg.endpoint.as_deref(), &cfg.bucket, &cfg.region, cfg.path_style);
        let shown = cfg.endpoint.clone().unwrap_or_else(|| endpoint.base.clone());
        let other = |why: String| S3StartError::Other { bucket: cfg.bucket.clone(), endpoint: shown.clone(), why };
        let options = ClientOptions::new()
            .with_allow_http(endpoint.base.starts_with("http://"))
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(120));
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_access_key_id(&creds.access_key_id)
            .with_secret_access_key(&creds.secret_access_key)
            .with_virtual_hosted_style_request(!cfg.path_style)
            // No x-amz-checksum on parts: with one, Garage recomputes the
            // whole object's checksum on every copy, and the copy that keeps
            // the verified hash with a completed upload (and a rename) would
            // read the object back (1.6 s per 128 MiB instead of 0.2 s).
            // Transport integrity is TCP's (TLS's on https); what S3 holds of
            // each part is checked by ETag and size (see `upload`).
            .with_retry(RetryConfig {
                max_retries: 4,
                retry_timeout: Duration::from_secs(30),
                backoff: Default::default(),
            })
            .with_client_options(options.clone());
        if cfg.endpoint.is_some() {
            // object_store wants the bucket in a virtual-hosted endpoint.
            let e = if cfg.path_style { cfg.endpoint.clone().unwrap_or_default() } else { endpoint.base.clone() };
            builder = builder.with_endpoint(e);
        }
        let store = Arc::new(builder.build().map_err(|e| other(e.to_string()))?);
        let credential = AwsCredential {
            key_id: creds.access_key_id.clone(),
            secret_key: creds.secret_access_key.clone(),
            token: None,
        };
        let raw = api::RawS3::new(endpoint, credential, &options).map_err(|e| other(e.to_string()))?;
        let states = states.unwrap_or_else(|| Arc::new(BucketPartialStore::new(Arc::clone(&store))));
        let mut prefix = cfg.prefix.clone();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Arc::new(S3Bucket {
            store,
            raw,
            states,
            settings: S3Settings { prefix, part_size: cfg.part_size, max_buffer: cfg.max_buffer },
            bucket: cfg.bucket.clone(),
            endpoint: shown,
            key_id: creds.access_key_id,
            live: Mutex::default(),
            locks: Mutex::default(),
            tasks: tokio_util::task::TaskTracker::new(),
        }))
    }

    /// One request to the bucket: stops a start whose bucket is missing or
    /// whose key is refused, naming which.
    pub async fn check(&self) -> Result<(), S3StartError> {
        let Err(e) = self.raw.probe().await else { return Ok(()) };
        let (bucket, endpoint) = (self.bucket.clone(), self.endpoint.clone());
        Err(match &e {
            RawError::Status { code, .. } if code == "NoSuchBucket" => S3StartError::NoSuchBucket { bucket, endpoint },
            RawError::Status { status, code } if status.as_u16() == 404 && code.is_empty() => {
                S3StartError::NoSuchBucket { bucket, endpoint }
            }
            RawError::Status { status, code } if matches!(status.as_u16(), 401 | 403) => {
                let code = if code.is_empty() { status.to_string() } else { code.clone() };
                S3StartError::BadKey { key_id: self.key_id.clone(), bucket, endpoint, code }
            }
            _ => S3StartError::Other { bucket, endpoint, why: e.to_string() },
        })
    }

    /// The home of `user`: the prefix `<prefix><user>/`.
    pub fn home(self: &Arc<Self>, user: &str) -> S3Storage {
        let home = format!("{}{user}/", self.settings.prefix);
        self.storage_at(&home)
    }

    /// A home at any key prefix (ending in `/`), for tests and tools.
    pub fn storage_at(self: &Arc<Self>, home: &str) -> S3Storage {
        let mut home = home.to_string();
        if !home.ends_with('/') {
            home.push('/');
        }
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.retain(|_, l| l.strong_count() > 0);
            match locks.get(&home).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(home.clone(), Arc::downgrade(&l));
                    l
                }
            }
        };
        S3Storage { bucket: Arc::clone(self), home, lock }
    }

    /// Waits for the work in the background (tails being stored).
    pub async fn drain(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.tasks.reopen();
    }

    pub fn settings(&self) -> &S3Settings {
        &self.settings
    }
}

/// A failed S3 request as users see it: no URL, bucket or key. The details
/// go to the log.
pub(crate) fn backend_error(e: impl std::fmt::Display) -> VfsError {
    tracing::warn!(error = %e, "S3 request failed");
    VfsError::Io(std::io::Error::other("storage backend request failed"))
}

pub(crate) fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

fn mtime(meta: &ObjectMeta) -> i64 {
    meta.last_modified.timestamp()
}

fn file_entry(name: &str, meta: &ObjectMeta) -> Entry {
    Entry { name: name.to_string(), kind: EntryKind::File, size: meta.size, mtime: mtime(meta), mode: 0o644 }
}

fn dir_entry(name: &str, mtime: i64) -> Entry {
    Entry { name: name.to_string(), kind: EntryKind::Dir, size: 0, mtime, mode: 0o755 }
}

fn hash_attributes(sha256: Option<&str>) -> Attributes {
    let mut attrs = Attributes::new();
    if let Some(h) = sha256 {
        attrs.insert(Attribute::Metadata(HASH_META.into()), h.to_string().into());
    }
    attrs
}

/// The hash kept in an object's metadata, if it is one.
fn kept_hash(attrs: &Attributes) -> Option<String> {
    let h = attrs.get(&Attribute::Metadata(HASH_META.into()))?.as_ref().to_ascii_lowercase();
    (h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())).then_some(h)
}

/// What a path is.
enum Kind {
    File(ObjectMeta),
    Dir(i64),
}

/// A home: a key prefix in the bucket.
#[derive(Debug, Clone)]
pub struct S3Storage {
    bucket: Arc<S3Bucket>,
    /// The home's key prefix, ending in `/`.
    home: String,
    /// Serialises this server's changes to the home's names.
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl S3Storage {
    fn store(&self) -> &AmazonS3 {
        &self.bucket.store
    }

    fn key(&self, p: &VirtualPath) -> String {
        let rest: Vec<&str> = p.components().collect();
        format!("{}{}", self.home, rest.join("/"))
    }

    fn path(&self, p: &VirtualPath) -> Result<Path, VfsError> {
        obj_path(&self.key(p))
    }

    /// The prefix of a directory's contents, ending in `/`.
    fn dir_prefix(&self, p: &VirtualPath) -> String {
        if p.is_root() { self.home.clone() } else { format!("{}/", self.key(p)) }
    }

    fn marker(&self, p: &VirtualPath) -> Result<Path, VfsError> {
        obj_path(&format!("{}{DIR_MARKER}", self.dir_prefix(p)))
    }

    async fn head(&self, path: &Path) -> Result<Option<ObjectMeta>, VfsError> {
        match self.store().head(path).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(backend_error(e)),
        }
    }

    /// One page of keys under `prefix`.
    async fn page(
        &self,
        prefix: &str,
        delimiter: bool,
        max_keys: Option<usize>,
        token: Option<String>,
    ) -> Result<object_store::list::PaginatedListResult, VfsError> {
        let opts = PaginatedListOptions {
            delimiter: delimiter.then_some("/".into()),
            max_keys,
            page_token: token,
            ..Default::default()
        };
        self.bucket.store.list_paginated(Some(prefix), opts).await.map_err(backend_error)
    }

    /// Every object under `prefix`, page after page.
    async fn list_all(&self, prefix: &str) -> Result<Vec<ObjectMeta>, VfsError> {
        let mut out = Vec::new();
        let mut token = None;
        for _ in 0..MAX_PAGES {
            let page = self.page(prefix, false, None, token).await?;
            out.extend(page.result.objects);
            token = page.page_token;
            if token.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// A directory's time, if it is one, in one request (the first key
    /// under its prefix): its marker's when that comes first (it does
    /// unless a name starts with one of ``!"#$%&'()*+,-``), else 0.
    async fn dir_time(&self, p: &VirtualPath) -> Result<Option<i64>, VfsError> {
        if p.is_root() {
            return Ok(Some(0));
        }
        let page = self.page(&self.dir_prefix(p), false, Some(1), None).await?;
        let marker = self.marker(p)?;
        Ok(page.result.objects.first().map(|o| if o.location == marker { mtime(o) } else { 0 }))
    }

    async fn kind(&self, p: &VirtualPath) -> Result<Option<Kind>, VfsError> {
        if p.is_root() {
            return Ok(Some(Kind::Dir(0)));
        }
        let (file, dir) = tokio::join!(async { self.head(&self.path(p)?).await }, self.dir_time(p));
        if let Some(m) = file? {
            return Ok(Some(Kind::File(m)));
        }
        Ok(dir?.map(Kind::Dir))
    }

    /// The error for a path that is neither a file nor a directory: the
    /// first component from the top that is missing or a file decides, as
    /// the kernel reports it.
    async fn missing(&self, p: &VirtualPath) -> VfsError {
        let mut above = Vec::new();
        let mut at = p.parent();
        while let Some(a) = at.filter(|a| !a.is_root()) {
            at = a.parent();
            above.push(a);
        }
        for a in above.iter().rev() {
            match self.kind(a).await {
                Ok(Some(Kind::Dir(_))) => {}
                Ok(Some(Kind::File(_))) => return VfsError::NotADirectory(p.to_string()),
                Ok(None) => return VfsError::NotFound(p.to_string()),
                Err(e) => return e,
            }
        }
        VfsError::NotFound(p.to_string())
    }

    /// Succeeds when `p` is a directory.
    async fn require_dir(&self, p: &VirtualPath) -> Result<(), VfsError> {
        match self.kind(p).await? {
            Some(Kind::Dir(_)) => Ok(()),
            Some(Kind::File(_)) => Err(VfsError::NotADirectory(p.to_string())),
            None => Err(self.missing(p).await),
        }
    }

    async fn require_parent(&self, p: &VirtualPath) -> Result<(), VfsError> {
        if p.is_root() {
            return Err(VfsError::PermissionDenied("/: the home directory itself".into()));
        }
        self.require_dir(&p.parent().unwrap_or_default()).await
    }

    /// Refuses a target that is a directory, or that exists without
    /// `overwrite`; returns the size of the file it would replace.
    async fn check_target(&self, target: &VirtualPath, overwrite: bool) -> Result<Option<u64>, VfsError> {
        if target.is_root() {
            return Err(VfsError::IsADirectory("/".into()));
        }
        self.require_parent(target).await?;
        self.check_name(target, overwrite).await
    }

    /// [`Self::check_target`] in a directory known to exist.
    async fn check_name(&self, target: &VirtualPath, overwrite: bool) -> Result<Option<u64>, VfsError> {
        match self.kind(target).await? {
            Some(Kind::Dir(_)) => Err(VfsError::IsADirectory(target.to_string())),
            Some(Kind::File(_)) if !overwrite => Err(VfsError::AlreadyExists(format!("{target} already exists"))),
            Some(Kind::File(m)) => Ok(Some(m.size)),
            None => Ok(None),
        }
    }

    async fn delete(&self, path: &Path) -> Result<(), VfsError> {
        delete_listed(self.store(), path).await
    }

    async fn delete_many(&self, paths: Vec<Path>) -> Result<(), VfsError> {
        let stream = futures::stream::iter(paths.clone().into_iter().map(Ok)).boxed();
        let results: Vec<_> = self.store().delete_stream(stream).collect().await;
        for r in results {
            match r {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(backend_error(e)),
            }
        }
        until_unlisted(self.store(), &paths).await
    }

    async fn put(&self, path: &Path, data: Bytes, sha256: Option<&str>) -> Result<(), VfsError> {
        let opts = PutOptions { attributes: hash_attributes(sha256), ..Default::default() };
        self.store().put_opts(path, PutPayload::from(data), opts).await.map_err(backend_error)?;
        Ok(())
    }

    /// The name of an object or common prefix directly under `prefix`.
    fn child_name<'a>(prefix: &str, location: &'a str) -> Option<&'a str> {
        let name = location.strip_prefix(prefix)?.trim_end_matches('/');
        (!name.is_empty() && !name.contains('/') && !name.starts_with(crate::vfs::RESERVED_PREFIX)).then_some(name)
    }

    /// A directory holds nothing but its own marker.
    async fn is_empty_dir(&self, p: &VirtualPath) -> Result<bool, VfsError> {
        let own = self.marker(p)?;
        let page = self.page(&self.dir_prefix(p), false, Some(2), None).await?;
        Ok(page.result.objects.iter().all(|o| o.location == own))
    }

    /// Is this key's object a directory marker?
    fn is_marker(key: &str) -> bool {
        key.rsplit('/').next() == Some(DIR_MARKER)
    }
}

/// Deletes the object at `path` (gone already is fine), then waits until
/// listings no longer show it ([`until_unlisted`]).
async fn delete_listed(store: &AmazonS3, path: &Path) -> Result<(), VfsError> {
    match store.delete(path).await {
        Ok(()) => {}
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(backend_error(e)),
    }
    until_unlisted(store, std::slice::from_ref(path)).await
}

/// Waits, a second at most, until a listing no longer shows any of `gone`,
/// just deleted.
///
/// Every name this backend answers (exists, ls, usage, partial states)
/// comes from listings, and a listing can lag a delete: Garage 2.5 with
/// three replicas returns a DELETE once two have it, and a listing applies
/// its "not deleted" filter on each replica before merging their answers
/// (garage_table `get_range_internal`), so the third one's stale copy shows
/// through for a few milliseconds. AWS S3 lists consistently: one LIST.
async fn until_unlisted(store: &AmazonS3, gone: &[Path]) -> Result<(), VfsError> {
    let Some(first) = gone.first() else { return Ok(()) };
    let prefix = gone.iter().fold(first.as_ref(), |p, g| {
        let common = p.bytes().zip(g.as_ref().bytes()).take_while(|(a, b)| a == b).count();
        // On a char boundary: keys are UTF-8.
        &p[..(0..=common).rev().find(|&i| p.is_char_boundary(i)).unwrap_or(0)]
    });
    let gone: HashSet<&str> = gone.iter().map(|p| p.as_ref()).collect();
    let mut wait = Duration::from_millis(2);
    for _ in 0..10 {
        let mut shown = false;
        let mut token = None;
        for _ in 0..MAX_PAGES {
            // One key sorts first among those it prefixes: one is enough to see.
            let max_keys = (gone.len() == 1).then_some(1);
            let opts = PaginatedListOptions { page_token: token, max_keys, ..Default::default() };
            let page = store.list_paginated(Some(prefix), opts).await.map_err(backend_error)?;
            shown |= page.result.objects.iter().any(|o| gone.contains(o.location.as_ref()));
            token = page.page_token;
            if shown || token.is_none() || max_keys.is_some() {
                break;
            }
        }
        if !shown {
            return Ok(());
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(200));
    }
    tracing::debug!(prefix, "S3 listings still show deleted objects after a second");
    Ok(())
}

fn obj_path(key: &str) -> Result<Path, VfsError> {
    Path::parse(key).map_err(|e| VfsError::InvalidName(format!("not a name S3 storage can hold: {e}")))
}

#[async_trait]
impl Storage for S3Storage {
    async fn usage(&self) -> Result<Amount, VfsError> {
        upload::usage(self).await
    }

    async fn stat(&self, path: &VirtualPath) -> Result<Entry, VfsError> {
        let name = path.file_name().unwrap_or("/");
        match self.kind(path).await? {
            Some(Kind::File(m)) => Ok(file_entry(name, &m)),
            Some(Kind::Dir(t)) => Ok(dir_entry(name, t)),
            None => Err(self.missing(path).await),
        }
    }

    async fn enter(&self, path: &VirtualPath) -> Result<(), VfsError> {
        self.require_dir(path).await
    }

    async fn list(&self, path: &VirtualPath) -> Result<Vec<Entry>, VfsError> {
        self.require_dir(path).await?;
        let prefix = self.dir_prefix(path);
        let mut out = Vec::new();
        let mut token = None;
        for _ in 0..MAX_PAGES {
            let page = self.page(&prefix, true, None, token).await?;
            for p in &page.result.common_prefixes {
                if let Some(name) = Self::child_name(&prefix, p.as_ref()) {
                    // S3 keeps no directory times; the marker's would cost a
                    // request per directory.
                    out.push(dir_entry(name, 0));
                }
            }
            for o in &page.result.objects {
                if let Some(name) = Self::child_name(&prefix, o.location.as_ref()) {
                    out.push(file_entry(name, o));
                }
            }
            token = page.page_token;
            if token.is_none() {
                break;
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn mkdir(&self, path: &VirtualPath, parents: bool) -> Result<Amount, VfsError> {
        let _lock = self.lock.lock().await;
        if path.is_root() {
            return if parents { Ok(Amount::default()) } else { Err(VfsError::AlreadyExists("/".into())) };
        }
        if !parents {
            self.require_parent(path).await?;
            if self.kind(path).await?.is_some() {
                return Err(VfsError::AlreadyExists(format!("{path} already exists")));
            }
            self.put(&self.marker(path)?, Bytes::new(), None).await?;
            return Ok(Amount::dirs(1));
        }
        let mut chain = Vec::new();
        let mut at = Some(path.clone());
        while let Some(p) = at.filter(|p| !p.is_root()) {
            match self.kind(&p).await? {
                Some(Kind::Dir(_)) => break,
                // As mkdir -p: the path itself a file "exists", a file above it is no directory.
                Some(Kind::File(_)) if &p == path => {
                    return Err(VfsError::AlreadyExists(format!("{path} already exists")));
                }
                Some(Kind::File(_)) => return Err(VfsError::NotADirectory(p.to_string())),
                None => chain.push(p.clone()),
            }
            at = p.parent();
        }
        let created = chain.len() as u64;
        // From the top, so that a directory never exists below a missing one.
        for p in chain.iter().rev() {
            self.put(&self.marker(p)?, Bytes::new(), None).await?;
        }
        Ok(Amount::dirs(created))
    }

    async fn remove_file(&self, path: &VirtualPath) -> Result<Amount, VfsError> {
        let _lock = self.lock.lock().await;
        self.require_parent(path).await?;
        match self.kind(path).await? {
            Some(Kind::File(m)) => {
                self.delete(&self.path(path)?).await?;
                Ok(Amount::file(m.size))
            }
            Some(Kind::Dir(_)) => Err(VfsError::IsADirectory(path.to_string())),
            None => Err(VfsError::NotFound(path.to_string())),
        }
    }

    async fn remove_dir(&self, path: &VirtualPath) -> Result<Amount, VfsError> {
        let _lock = self.lock.lock().await;
        self.require_parent(path).await?;
        self.require_dir(path).await?;
        if !self.is_empty_dir(path).await? {
            return Err(VfsError::DirectoryNotEmpty(path.to_string()));
        }
        self.delete(&self.marker(path)?).await?;
        Ok(Amount::dirs(1))
    }

    async fn remove_tree(&self, path: &VirtualPath) -> Result<Amount, VfsError> {
        let _lock = self.lock.lock().await;
        self.require_parent(path).await?;
        match self.kind(path).await? {
            Some(Kind::File(m)) => {
                self.delete(&self.path(path)?).await?;
                Ok(Amount::file(m.size))
            }
            Some(Kind::Dir(_)) => {
                let objects = self.list_all(&self.dir_prefix(path)).await?;
                let mut freed = Amount::default();
                for o in &objects {
                    freed = freed
                        + if Self::is_marker(o.location.as_ref()) { Amount::dirs(1) } else { Amount::file(o.size) };
                }
                self.delete_many(objects.into_iter().map(|o| o.location).collect()).await?;
                Ok(freed)
            }
            None => Err(VfsError::NotFound(path.to_string())),
        }
    }

    async fn rename(&self, from: &VirtualPath, to: &VirtualPath, overwrite: bool) -> Result<Amount, VfsError> {
        let _lock = self.lock.lock().await;
        if from.is_root() || to.is_root() {
            return Err(VfsError::PermissionDenied("the home directory itself cannot be moved or replaced".into()));
        }
        let src = match self.kind(from).await? {
            Some(k) => k,
            None => return Err(self.missing(from).await),
        };
        let src_is_dir = matches!(src, Kind::Dir(_));
        if from == to {
            return Err(VfsError::InvalidMove(format!("cannot move {from} onto itself")));
        }
        if src_is_dir && to.starts_with(from) {
            return Err(VfsError::InvalidMove(format!("cannot move {from} into itself ({to})")));
        }
        self.require_parent(to).await?;
        let mut freed = Amount::default();
        if let Some(existing) = self.kind(to).await? {
            if !overwrite {
                return Err(VfsError::AlreadyExists(format!("{to} already exists")));
            }
            match (existing, src_is_dir) {
                (Kind::Dir(_), false) => return Err(VfsError::IsADirectory(to.to_string())),
                (Kind::File(_), true) => return Err(VfsError::NotADirectory(to.to_string())),
                (Kind::Dir(_), true) => {
                    if !self.is_empty_dir(to).await? {
                        return Err(VfsError::DirectoryNotEmpty(to.to_string()));
                    }
                    self.delete(&self.marker(to)?).await?;
                    freed = Amount::dirs(1);
                }
                (Kind::File(m), false) => freed = Amount::file(m.size),
            }
        }
        if !src_is_dir {
            // Server-side: the bytes (and the kept hash) never pass through here.
            self.store().copy(&self.path(from)?, &self.path(to)?).await.map_err(backend_error)?;
            self.delete(&self.path(from)?).await?;
            return Ok(freed);
        }
        // No directory rename in S3: copy every object, then delete the
        // originals (a cut rename leaves copies, never losses).
        let (old, new) = (self.dir_prefix(from), self.dir_prefix(to));
        let objects = self.list_all(&old).await?;
        let mut pairs = Vec::with_capacity(objects.len());
        for o in &objects {
            let rest = o.location.as_ref().strip_prefix(&old).unwrap_or_default();
            pairs.push((o.location.clone(), obj_path(&format!("{new}{rest}"))?));
        }
        let store = Arc::clone(&self.bucket.store);
        futures::stream::iter(pairs)
            .map(|(src, dst)| {
                let store = Arc::clone(&store);
                async move { store.copy(&src, &dst).await.map_err(backend_error) }
            })
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<()>>()
            .await?;
        self.delete_many(objects.into_iter().map(|o| o.location).collect()).await?;
        Ok(freed)
    }

    async fn open_read(&self, path: &VirtualPath) -> Result<Box<dyn FileRead>, VfsError> {
        if path.is_root() {
            return Err(VfsError::IsADirectory("/".into()));
        }
        let location = self.path(path)?;
        let opts = GetOptions { head: true, ..Default::default() };
        match self.store().get_opts(&location, opts).await {
            Ok(got) => {
                let name = path.file_name().unwrap_or("/");
                let entry = file_entry(name, &got.meta);
                let sha256 = kept_hash(&got.attributes);
                Ok(Box::new(read::S3Read::new(Arc::clone(&self.bucket.store), location, entry, got.meta.e_tag, sha256)))
            }
            Err(e) if is_not_found(&e) => match self.dir_time(path).await? {
                Some(_) => Err(VfsError::IsADirectory(path.to_string())),
                None => Err(self.missing(path).await),
            },
            Err(e) => Err(backend_error(e)),
        }
    }

    /// The GETs go out [`PARALLEL`] at a time (one by one, a recursive
    /// download of small files paid S3's latency per file: 30 files/s on
    /// Garage, bench/RESULTS.md); their bodies are taken in order, so the
    /// budget is spent exactly as one by one, and a body too large for it is
    /// dropped unread.
    async fn read_small(
        &self,
        paths: Vec<VirtualPath>,
        max_each: u64,
        budget: u64,
        algo: HashAlgo,
    ) -> Vec<Result<Option<SmallFile>, VfsError>> {
        let mut budget = budget;
        let mut out = Vec::with_capacity(paths.len());
        // Owned paths: a closure over borrowed ones is not general enough
        // for the Send bound `async_trait` puts on this future.
        let mut gets = futures::stream::iter(paths)
            .map(|p| async move {
                let got = self.get_small(&p).await;
                (p, got)
            })
            .buffered(PARALLEL);
        while let Some((p, got)) = gets.next().await {
            out.push(match got {
                Ok(got) => take_small(&p, got, max_each, &mut budget, algo).await,
                Err(e) => Err(e),
            });
        }
        out
    }

    async fn write_small(&self, files: Vec<SmallWrite>, _fsync: bool) -> Vec<Result<Amount, VfsError>> {
        let _lock = self.lock.lock().await;
        // A batch usually fills one directory: each parent is checked once
        // (under the lock, so it stays).
        let mut good = HashSet::new();
        for w in &files {
            let parent = w.target.parent().unwrap_or_default();
            if !w.target.is_root() && !good.contains(&parent) && self.require_dir(&parent).await.is_ok() {
                good.insert(parent);
            }
        }
        let good = &good;
        let one = |w: SmallWrite| async move {
            let replaced = if good.contains(&w.target.parent().unwrap_or_default()) && !w.target.is_root() {
                self.check_name(&w.target, w.overwrite).await?
            } else {
                self.check_target(&w.target, w.overwrite).await?
            };
            self.put(&self.path(&w.target)?, Bytes::from(w.data), sha256_of(w.algo, &w.hash)).await?;
            Ok(replaced.map_or(Amount::default(), Amount::file))
        };
        // Files of distinct names go up side by side (results stay in
        // order); a batch naming one file twice goes in order.
        let names: HashSet<&VirtualPath> = files.iter().map(|w| &w.target).collect();
        let at_once = if names.len() == files.len() { PARALLEL } else { 1 };
        futures::stream::iter(files).map(one).buffered(at_once).collect().await
    }

    async fn partial_create(&self, id: &str, meta: &PartialMeta) -> Result<Box<dyn PartialWrite>, VfsError> {
        upload::create(self, id, meta).await
    }

    async fn partial_open(&self, id: &str, meta: &PartialMeta) -> Result<Box<dyn PartialWrite>, VfsError> {
        upload::open(self, id, meta).await
    }

    async fn partial_info(&self, id: &str) -> Result<Option<PartialInfo>, VfsError> {
        upload::info(self, id).await
    }

    async fn partial_list(&self) -> Result<Vec<PartialInfo>, VfsError> {
        upload::list(self).await
    }

    /// SHA-256 only: its state is what the partial keeps at each part
    /// boundary (`hashing.rs`); BLAKE3's cannot be serialised, so a server
    /// on S3 offers SHA-256 alone (`Core::prepare`).
    async fn partial_hash(&self, id: &str, len: u64, algo: HashAlgo) -> Result<(Hasher, u64), VfsError> {
        match algo {
            HashAlgo::Sha256 => upload::hash(self, id, len).await.map(|(h, n)| (Hasher::Sha256(h), n)),
            HashAlgo::Blake3 => Err(upload::unsupported("a BLAKE3 resume on S3 storage".into())),
        }
    }

    async fn partial_remove(&self, id: &str) -> Result<Amount, VfsError> {
        upload::remove(self, id).await
    }

    fn resumes_in(&self, algo: HashAlgo) -> bool {
        algo == HashAlgo::Sha256
    }

    fn partial_writes(&self) -> PartialWrites {
        let s = &self.bucket.settings;
        PartialWrites::Window { part_size: s.part_size, max_buffer: s.max_buffer }
    }
}

impl S3Storage {
    /// The GET of one small file (its body not read yet).
    async fn get_small(&self, p: &VirtualPath) -> Result<object_store::GetResult, VfsError> {
        if p.is_root() {
            return Err(VfsError::IsADirectory("/".into()));
        }
        match self.store().get(&self.path(p)?).await {
            Ok(g) => Ok(g),
            Err(e) if is_not_found(&e) => match self.dir_time(p).await? {
                Some(_) => Err(VfsError::IsADirectory(p.to_string())),
                None => Err(self.missing(p).await),
            },
            Err(e) => Err(backend_error(e)),
        }
    }
}

/// The body of a small file's GET, if it fits `max_each` and what is left
/// of `budget` (then spent); `None` drops the body unread.
async fn take_small(
    p: &VirtualPath,
    got: object_store::GetResult,
    max_each: u64,
    budget: &mut u64,
    algo: HashAlgo,
) -> Result<Option<SmallFile>, VfsError> {
    let size = got.meta.size;
    if size > max_each || size > *budget {
        return Ok(None);
    }
    let entry = file_entry(p.file_name().unwrap_or("/"), &got.meta);
    let data = got.bytes().await.map_err(backend_error)?;
    if data.len() as u64 != size {
        return Err(VfsError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    *budget -= size;
    let hash = algo.digest_hex(&data);
    Ok(Some(SmallFile { entry, data: data.to_vec(), hash }))
}

/// The verified hash an object keeps: only SHA-256 has a metadata slot.
pub(super) fn sha256_of(algo: HashAlgo, hash: &str) -> Option<&str> {
    (algo == HashAlgo::Sha256).then_some(hash)
}
