//! Where an S3 partial upload's bookkeeping lives: its [`PartialMeta`], the
//! multipart upload id, each part's ETag, size and the hasher state after
//! it, and the length of its tail (the bytes after the last part, kept as a
//! small object of their own while no one writes).
//!
//! It must be shared by every server and survive restarts, so that a resume
//! continues anywhere. It sits behind [`PartialStore`], with two homes:
//! - [`PgPartialStore`], the shared PostgreSQL database, when the servers
//!   have one (`[users] kind = "postgres"`): one row per partial in
//!   `s3_partials`, a small write next to the users, quotas and claims;
//! - [`BucketPartialStore`] otherwise: a small JSON object in the bucket
//!   itself, `<home>/.ferry-partial/<id>.json` (a name no user can spell,
//!   never listed), as shared and as durable as the data, with no other
//!   service to run.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::{backend_error, is_not_found};
use crate::pg::{Database, PgError};
use crate::storage::{PartialMeta, VfsError};

/// One part sent, as recorded after S3 took it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartRecord {
    /// S3's part number (1-based).
    pub number: u32,
    /// The part's ETag, bare, as ListParts shows it.
    pub etag: String,
    /// What `object_store` needs to complete the upload with this part
    /// (the ETag, with the checksum when one was sent).
    pub content_id: String,
    pub size: u64,
    /// The hasher state after this part (see `hashing`).
    pub hash_state: String,
}

/// The bookkeeping of one partial upload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartialState {
    pub meta: PartialMeta,
    /// The multipart upload, once the first part was sent; it targets the
    /// final key, so the object appears only at CompleteMultipartUpload.
    pub upload_id: Option<String>,
    /// The key the multipart upload was created for.
    pub key: Option<String>,
    pub parts: Vec<PartRecord>,
    /// Bytes of the tail object (`<id>.tail`) that follow the parts.
    pub tail: u64,
    /// Raised by every reopening: a writer on another server that still
    /// holds an older epoch stops instead of overwriting its successor.
    pub epoch: u64,
}

impl PartialState {
    pub fn new(meta: PartialMeta) -> PartialState {
        PartialState { meta, upload_id: None, key: None, parts: Vec::new(), tail: 0, epoch: 1 }
    }

    /// Bytes in the parts.
    pub fn parts_len(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum()
    }
}

/// A stored state and when it last changed.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: String,
    pub state: PartialState,
    pub modified: SystemTime,
}

/// Where partial-upload states are kept, per home (`home` is the home's key
/// prefix, ending in `/`).
#[async_trait]
pub trait PartialStore: Send + Sync + std::fmt::Debug {
    async fn load(&self, home: &str, id: &str) -> Result<Option<Stored>, VfsError>;
    async fn save(&self, home: &str, id: &str, state: &PartialState) -> Result<(), VfsError>;
    async fn delete(&self, home: &str, id: &str) -> Result<(), VfsError>;
    async fn list(&self, home: &str) -> Result<Vec<Stored>, VfsError>;
}

/// The folder of a home's partial uploads (states and tails).
pub fn partial_dir(home: &str) -> String {
    format!("{home}{}/", crate::vfs::PARTIAL_DIR)
}

/// States as JSON objects in the bucket.
#[derive(Debug, Clone)]
pub struct BucketPartialStore {
    store: Arc<AmazonS3>,
}

impl BucketPartialStore {
    pub fn new(store: Arc<AmazonS3>) -> BucketPartialStore {
        BucketPartialStore { store }
    }

    fn key(home: &str, id: &str) -> Result<Path, VfsError> {
        Path::parse(format!("{}{id}.json", partial_dir(home))).map_err(backend_error)
    }
}

/// Pages of a home's partial folder read at most (a million entries).
const MAX_PAGES: usize = 1000;

#[async_trait]
impl PartialStore for BucketPartialStore {
    async fn load(&self, home: &str, id: &str) -> Result<Option<Stored>, VfsError> {
        let got = match self.store.get(&Self::key(home, id)?).await {
            Ok(g) => g,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(backend_error(e)),
        };
        let modified = SystemTime::from(got.meta.last_modified);
        let bytes = got.bytes().await.map_err(backend_error)?;
        // A state that does not parse is an upload no one can resume.
        Ok(serde_json::from_slice(&bytes).ok().map(|state| Stored { id: id.to_string(), state, modified }))
    }

    async fn save(&self, home: &str, id: &str, state: &PartialState) -> Result<(), VfsError> {
        let json = serde_json::to_vec(state).map_err(std::io::Error::other)?;
        self.store.put(&Self::key(home, id)?, PutPayload::from(json)).await.map_err(backend_error)?;
        Ok(())
    }

    async fn delete(&self, home: &str, id: &str) -> Result<(), VfsError> {
        super::delete_listed(&self.store, &Self::key(home, id)?).await
    }

    async fn list(&self, home: &str) -> Result<Vec<Stored>, VfsError> {
        let dir = partial_dir(home);
        let mut ids = Vec::new();
        let mut token = None;
        for _ in 0..MAX_PAGES {
            let opts = PaginatedListOptions { page_token: token, ..Default::default() };
            let page = self.store.list_paginated(Some(&dir), opts).await.map_err(backend_error)?;
            for o in page.result.objects {
                if let Some(id) = o.location.as_ref().strip_prefix(&dir).and_then(|n| n.strip_suffix(".json")) {
                    ids.push(id.to_string());
                }
            }
            token = page.page_token;
            if token.is_none() {
                break;
            }
        }
        let loaded: Vec<Option<Stored>> = futures::stream::iter(ids)
            .map(|id| async move { self.load(home, &id).await })
            .buffered(8)
            .try_collect()
            .await?;
        Ok(loaded.into_iter().flatten().collect())
    }
}

/// States as rows of `s3_partials` in the shared database
/// (`migrations/postgres/0004_s3_partials.sql`), the JSON of
/// [`PartialState`] in `state`.
#[derive(Debug, Clone)]
pub struct PgPartialStore {
    db: Arc<Database>,
}

impl PgPartialStore {
    pub fn new(db: Arc<Database>) -> PgPartialStore {
        PgPartialStore { db }
    }
}

/// The database failed: logged here, reported without its details.
fn db_error(e: PgError) -> VfsError {
    tracing::warn!(error = %e, "the partial-upload state in the database is unreachable");
    VfsError::Io(std::io::Error::other("the upload state database did not answer"))
}

/// A row's state and its age in seconds since the epoch.
fn stored_row(id: String, json: &str, modified: f64) -> Option<Stored> {
    // A state that does not parse is an upload no one can resume.
    let state = serde_json::from_str(json).ok()?;
    let modified = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs_f64(modified.max(0.0));
    Some(Stored { id, state, modified })
}

#[async_trait]
impl PartialStore for PgPartialStore {
    async fn load(&self, home: &str, id: &str) -> Result<Option<Stored>, VfsError> {
        let (h, i) = (home.to_owned(), id.to_owned());
        let row = self
            .db
            .run(move |c| async move {
                c.query_opt(
                    "SELECT state, extract(epoch FROM modified)::float8 FROM s3_partials WHERE home = $1 AND id = $2",
                    &[&h, &i],
                )
                .await
            })
            .await
            .map_err(db_error)?;
        Ok(row.and_then(|r| stored_row(id.to_owned(), r.get(0), r.get(1))))
    }

    async fn save(&self, home: &str, id: &str, state: &PartialState) -> Result<(), VfsError> {
        let json = serde_json::to_string(state).map_err(std::io::Error::other)?;
        let (h, i) = (home.to_owned(), id.to_owned());
        self.db
            .run(move |c| async move {
                c.execute(
                    "INSERT INTO s3_partials (home, id, state) VALUES ($1, $2, $3)
                     ON CONFLICT (home, id) DO UPDATE SET state = EXCLUDED.state, modified = now()",
                    &[&h, &i, &json],
                )
                .await
            })
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn delete(&self, home: &str, id: &str) -> Result<(), VfsError> {
        let (h, i) = (home.to_owned(), id.to_owned());
        self.db
            .run(move |c| async move {
                c.execute("DELETE FROM s3_partials WHERE home = $1 AND id = $2", &[&h, &i]).await
            })
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn list(&self, home: &str) -> Result<Vec<Stored>, VfsError> {
        let h = home.to_owned();
        let rows = self
            .db
            .run(move |c| async move {
                c.query(
                    "SELECT id, state, extract(epoch FROM modified)::float8 FROM s3_partials WHERE home = $1",
                    &[&h],
                )
                .await
            })
            .await
            .map_err(db_error)?;
        Ok(rows.into_iter().filter_map(|r| stored_row(r.get(0), r.get(1), r.get(2))).collect())
    }
}
