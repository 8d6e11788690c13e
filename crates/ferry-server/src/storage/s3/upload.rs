//! Partial uploads on S3.
//!
//! An upload is a multipart upload to its final key, so the object appears
//! under its name only at CompleteMultipartUpload (atomic, as the rename on
//! disk). S3 wants every part but the last to be at least 5 MiB, and cannot
//! read a pending part back, so:
//! - writes land in a buffer in memory (holes are zeros, as on disk); each
//!   time its written prefix holds a whole part (`[storage] part_size`), that
//!   part is sent (up to two side by side), and, in order, its ETag, size
//!   and the hasher state after it are recorded in the upload's state
//!   ([`super::state`]), shared and durable. The record is saved in the
//!   background (one save at a time, always of the latest state), so the
//!   writer never waits for it: a server that dies loses at most the parts
//!   acknowledged since the last save, which a resume sends again;
//! - writes may come out of order within `[storage] max_buffer` bytes past
//!   the sent parts; a write below the sent parts, or further ahead, is
//!   refused with a clear error (no silent rewrite of what S3 holds);
//! - when the writer goes away unfinished (a cut client), the buffer is
//!   stored as the tail object `<id>.tail` and recorded: a resume on any
//!   server, after any restart, continues from parts + tail. A server that
//!   dies before that loses only its buffer: the resume offset it then
//!   reports is what S3 holds, and the client sends the rest again;
//! - an upload that never filled a part is committed with one PUT.
//!
//! The resume proof: a partial's length and prefix hash are computed from
//! what S3 holds, never from the record alone. S3 cannot give a pending
//! part back, so each recorded part is checked against ListParts (number,
//! ETag, size: a part sent again with other bytes has another ETag), the
//! hasher state after the last good part is restored ([`super::hashing`])
//! and the tail, read back, is hashed on top. Parts that do not match cut
//! the partial there.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use ferry_proto::hash::HashAlgo;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::{ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};

use super::state::{PartRecord, PartialState, Stored, partial_dir};
use super::{Amount, PartialInfo, PartialMeta, PartialWrite, S3Storage, VfsError, VirtualPath};
use super::{HASH_META, api, backend_error, hashing, is_not_found, obj_path};
use crate::pool::{PartBuf, Pool};

/// Upload ids name objects: only 32 hex digits pass.
fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn not_found(id: &str) -> VfsError {
    VfsError::NotFound(format!("upload {id:?}"))
}

pub(super) fn unsupported(msg: String) -> VfsError {
    VfsError::Io(std::io::Error::new(std::io::ErrorKind::Unsupported, msg))
}

/// Parts sent at once by one upload: S3 takes them side by side; they are
/// recorded in order as they complete. With the part being filled, an
/// upload holds three parts (24 MiB at the default 8 MiB): four in flight
/// held 40 MiB and peaked the server at 74-78 MiB of RSS, and the upload
/// against Garage here did not go faster for it (73-76 MB/s with two or
/// four; bench/run.sh, ONLY=s3-big).
const PARTS_IN_FLIGHT: usize = 2;

/// A part on its way: the task sending it.
type Sending = tokio::task::JoinHandle<Result<Sent, VfsError>>;

/// A part S3 took, to be recorded.
struct Sent {
    number: u32,
    content_id: String,
    size: u64,
    /// The hasher after this part.
    hasher: Sha256,
}

/// An upload some writer of this process holds (or just held): its
/// buffer is part of what the home holds until it is stored or committed.
pub(crate) struct Live {
    key: String,
    id: String,
    /// The parts being sent, oldest first. Taken before `io` by whoever
    /// must see every sent part recorded (commit, removal, reopening, a
    /// writer going away).
    sending: Arc<tokio::sync::Mutex<VecDeque<Sending>>>,
    /// Serialises the durable steps: records, tail, commit, removal, reopening.
    io: Arc<tokio::sync::Mutex<()>>,
    /// The background save of the state (see [`save_soon`]), if one ran.
    saver: Mutex<Option<tokio::task::JoinHandle<Result<(), VfsError>>>>,
    inner: Mutex<Inner>,
}

struct Inner {
    state: PartialState,
    /// Bytes in recorded parts.
    flushed: u64,
    /// SHA-256 of those bytes.
    hasher: Sha256,
    /// The parts being sent, oldest first: the front buffers of `buf`,
    /// handed off without a copy, and held until recorded, so a failed send
    /// can put them back. Each shares its buffer with the request sending it.
    in_flight: VecDeque<Bytes>,
    /// Bytes in `in_flight`.
    sending: u64,
    /// The bytes after those being sent; holes are zeros. In part-sized
    /// buffers of a pool of the upload, which the parts sent go back to once
    /// recorded and done with (see [`super::pool`]).
    buf: PartBuf,
    /// SHA-256 of the recorded bytes and those being sent.
    send_hasher: Sha256,
    /// Written ranges (absolute offsets), sorted and merged.
    filled: Vec<Range<u64>>,
    /// The buffer differs from the stored tail.
    dirty: bool,
    /// The state is in the [`super::PartialStore`]. Not until there is
    /// something to resume (a part or a tail): an upload that commits from
    /// memory never writes one.
    stored: bool,
    /// Raised by each reopening in this process: older writers stop.
    generation: u64,
    modified: SystemTime,
    /// Committed or removed.
    gone: bool,
    /// Parts were acknowledged since the state was last saved.
    unsaved: bool,
    /// The saved state names a tail object that the parts since made
    /// stale: deleted once a state without it is saved.
    stale_tail: bool,
}

impl Inner {
    fn len(&self) -> u64 {
        self.base() + self.buf.len() as u64
    }

    /// Everything after the recorded parts, in order: the parts being sent, then `buf`.
    fn unrecorded(&self) -> impl Iterator<Item = &[u8]> {
        self.in_flight.iter().map(|b| &b[..]).chain(self.buf.pieces())
    }

    /// A copy of [`Self::unrecorded`] in one piece.
    fn unrecorded_copy(&self) -> BytesMut {
        let mut all = BytesMut::with_capacity((self.len() - self.flushed) as usize);
        self.unrecorded().for_each(|piece| all.extend_from_slice(piece));
        all
    }

    fn add_filled(&mut self, r: Range<u64>) {
        self.filled.push(r);
        self.filled.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(self.filled.len());
        for r in self.filled.drain(..) {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        self.filled = merged;
    }

    /// Where writes may start: below, bytes are sent or being sent.
    fn base(&self) -> u64 {
        self.flushed + self.sending
    }

    /// Whether the written bytes right after those handed off fill a part.
    fn part_ready(&self, part_size: u64) -> bool {
        self.filled.first().is_some_and(|f| f.start <= self.base() && f.end >= self.base() + part_size)
    }

    /// Hands the next whole part off: its bytes (the buffer they were
    /// written in, not a copy) and the hasher after it.
    fn take_part(&mut self, part_size: u64) -> Option<(Bytes, Sha256)> {
        if !self.part_ready(part_size) {
            return None;
        }
        let bytes = self.buf.take_front()?;
        debug_assert_eq!(bytes.len() as u64, part_size);
        self.send_hasher.update(&bytes);
        self.sending += part_size;
        self.in_flight.push_back(bytes.clone());
        Some((bytes, self.send_hasher.clone()))
    }

    /// Forgets the parts being sent (one failed: those after it are moot)
    /// and puts their bytes back in front of `buf`.
    fn reset_sending(&mut self) {
        if !self.in_flight.is_empty() {
            let mut buf = PartBuf::new(self.buf.pool());
            for piece in self.unrecorded() {
                buf.write_at(buf.len(), piece);
            }
            self.buf = buf;
            self.in_flight.clear();
        }
        self.sending = 0;
        self.send_hasher = self.hasher.clone();
    }

    fn info(&self, id: &str) -> PartialInfo {
        PartialInfo { id: id.to_string(), meta: self.state.meta.clone(), len: self.len(), modified: self.modified }
    }
}

impl Live {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change to `Inner` is made in one step under the lock.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl S3Storage {
    fn live_key(&self, id: &str) -> String {
        format!("{}{id}", self.home)
    }

    /// The live upload `id` of this process, unless committed or removed.
    fn live(&self, id: &str) -> Option<Arc<Live>> {
        let map = self.bucket.live.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&self.live_key(id)).and_then(std::sync::Weak::upgrade).filter(|l| !l.lock().gone)
    }

    /// The live uploads of this home in this process, by id.
    fn live_here(&self) -> Vec<(String, Arc<Live>)> {
        let map = self.bucket.live.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter_map(|(k, l)| Some((k.strip_prefix(&self.home)?.to_string(), l.upgrade()?)))
            .filter(|(id, l)| valid_id(id) && !l.lock().gone)
            .collect()
    }

    fn register(&self, live: &Arc<Live>) {
        let mut map = self.bucket.live.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, l| l.strong_count() > 0);
        map.insert(live.key.clone(), Arc::downgrade(live));
    }

    fn unregister(&self, live: &Arc<Live>) {
        let mut map = self.bucket.live.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&live.key).is_some_and(|l| std::ptr::eq(l.as_ptr(), Arc::as_ptr(live))) {
            map.remove(&live.key);
        }
    }

    fn new_live(&self, id: &str, d: Durable, stored: bool) -> Arc<Live> {
        let len = d.tail.len() as u64;
        let flushed = d.state.parts_len();
        let filled: Vec<Range<u64>> = (len > 0).then_some(flushed..flushed + len).into_iter().collect();
        // The parts being sent and the one being filled.
        let mut buf = PartBuf::new(Pool::new(self.bucket.settings.part_size as usize, PARTS_IN_FLIGHT + 1));
        buf.write_at(0, &d.tail);
        Arc::new(Live {
            key: self.live_key(id),
            id: id.to_string(),
            sending: Arc::default(),
            io: Arc::default(),
            saver: Mutex::default(),
            inner: Mutex::new(Inner {
                state: d.state,
                flushed,
                send_hasher: d.hasher.clone(),
                hasher: d.hasher,
                buf,
                in_flight: VecDeque::new(),
                sending: 0,
                filled,
                dirty: false,
                stored,
                generation: 1,
                modified: d.modified,
                gone: false,
                unsaved: false,
                stale_tail: false,
            }),
        })
    }

    fn tail_path(&self, id: &str) -> Result<object_store::path::Path, VfsError> {
        obj_path(&format!("{}{id}.tail", partial_dir(&self.home)))
    }

    /// Saves `state` unless another server reopened the upload (a newer
    /// epoch) or removed it meanwhile. The first save of a state (`stored`
    /// false) has no one to race.
    async fn save_checked(&self, id: &str, state: &PartialState, stored: bool) -> Result<(), VfsError> {
        if !stored {
            return self.bucket.states.save(&self.home, id, state).await;
        }
        match self.bucket.states.load(&self.home, id).await? {
            Some(s) if s.state.epoch == state.epoch => self.bucket.states.save(&self.home, id, state).await,
            Some(_) => {
                Err(VfsError::Io(std::io::Error::other(format!("upload {id} was taken over by another server"))))
            }
            None => Err(not_found(id)),
        }
    }

    /// Aborts the multipart upload and deletes the tail and the state.
    async fn discard_durable(&self, id: &str, state: &PartialState, stored: bool) -> Result<(), VfsError> {
        if !stored && state.upload_id.is_none() {
            return Ok(());
        }
        if let (Some(upload_id), Some(key)) = (&state.upload_id, &state.key) {
            let path = obj_path(key)?;
            match self.bucket.store.abort_multipart(&path, &upload_id.clone()).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(backend_error(e)),
            }
        }
        match self.store().delete(&self.tail_path(id)?).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(backend_error(e)),
        }
        self.bucket.states.delete(&self.home, id).await
    }

    /// What S3 holds of a pending upload's parts (0 when it is gone).
    async fn held_in_parts(&self, state: &PartialState) -> Result<u64, VfsError> {
        match (&state.upload_id, &state.key) {
            (Some(upload_id), Some(key)) => {
                let parts = self.bucket.raw.list_parts(key, upload_id).await.map_err(backend_error)?;
                Ok(parts.map_or(0, |p| p.iter().map(|p| p.size).sum()))
            }
            _ => Ok(0),
        }
    }
}

/// A partial as S3 holds it, checked against what is stored.
struct Durable {
    state: PartialState,
    hasher: Sha256,
    tail: Vec<u8>,
    modified: SystemTime,
}

/// Loads a partial and keeps of it only what S3 proves to hold: the
/// recorded parts that ListParts shows unchanged, in order, then the tail
/// if every part was there and it has the recorded length.
async fn load_verified(s: &S3Storage, id: &str) -> Result<Option<Durable>, VfsError> {
    let Some(Stored { mut state, modified, .. }) = s.bucket.states.load(&s.home, id).await? else { return Ok(None) };
    let recorded = state.parts.len();
    if let (Some(upload_id), Some(key)) = (state.upload_id.clone(), state.key.clone()) {
        match s.bucket.raw.list_parts(&key, &upload_id).await.map_err(backend_error)? {
            None => {
                state.parts.clear();
                state.upload_id = None;
                state.key = None;
            }
            Some(held) => {
                let good = state
                    .parts
                    .iter()
                    .enumerate()
                    .take_while(|(i, p)| {
                        held.iter().any(|h| {
                            h.number == p.number && p.number as usize == i + 1 && h.size == p.size && h.etag == p.etag
                        })
                    })
                    .count();
                state.parts.truncate(good);
            }
        }
    } else {
        state.parts.clear();
    }
    let hasher = match state.parts.last() {
        Some(last) => match hashing::load(&last.hash_state) {
            Some(h) => h,
            None => {
                state.parts.clear();
                Sha256::new()
            }
        },
        None => Sha256::new(),
    };
    let mut tail = Vec::new();
    if state.parts.len() == recorded && state.tail > 0 {
        match s.store().get(&s.tail_path(id)?).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(backend_error)?;
                if bytes.len() as u64 == state.tail {
                    tail = bytes.to_vec();
                }
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(backend_error(e)),
        }
    }
    state.tail = tail.len() as u64;
    Ok(Some(Durable { state, hasher, tail, modified }))
}

/// The hasher over the first `len` bytes (fewer when the partial holds
/// fewer). Below the sent parts only a part boundary can be hashed: S3
/// cannot read a pending part back.
fn prefix_hash<'a>(
    parts: &[PartRecord],
    flushed: u64,
    hasher: &Sha256,
    after: impl Iterator<Item = &'a [u8]>,
    len: u64,
) -> (Sha256, u64) {
    if len >= flushed {
        let mut h = hasher.clone();
        let mut at = flushed;
        for piece in after {
            let n = (len - at).min(piece.len() as u64);
            h.update(&piece[..n as usize]);
            at += n;
        }
        return (h, at);
    }
    let mut best = (Sha256::new(), 0);
    let mut end = 0;
    for p in parts {
        end += p.size;
        if end > len {
            break;
        }
        if let Some(h) = hashing::load(&p.hash_state) {
            best = (h, end);
        }
    }
    best
}

pub(super) async fn create(s: &S3Storage, id: &str, meta: &PartialMeta) -> Result<Box<dyn PartialWrite>, VfsError> {
    if !valid_id(id) {
        return Err(not_found(id));
    }
    // Ids are 128 random bits drawn by the home: only one of this process
    // can be taken.
    if s.live(id).is_some() {
        return Err(VfsError::AlreadyExists(format!("upload {id} already exists")));
    }
    let state = PartialState::new(meta.clone());
    let fresh = Durable { state, hasher: Sha256::new(), tail: Vec::new(), modified: SystemTime::now() };
    let live = s.new_live(id, fresh, false);
    s.register(&live);
    Ok(Box::new(S3Partial { s: s.clone(), live, generation: 1, done: false }))
}

pub(super) async fn open(s: &S3Storage, id: &str, meta: &PartialMeta) -> Result<Box<dyn PartialWrite>, VfsError> {
    if !valid_id(id) {
        return Err(not_found(id));
    }
    if let Some(live) = s.live(id) {
        let mut q = live.sending.lock().await;
        // The parts an older writer sent are recorded first; one that
        // failed is simply not part of what the new writer continues.
        if let Err(e) = drain(&live, &mut q).await {
            tracing::info!(error = %e, upload_id = %id, "a part of the older writer was not sent");
        }
        let _io = live.io.lock().await;
        let state = {
            let inner = live.lock();
            (!inner.gone).then(|| (inner.state.clone(), inner.stored))
        };
        if let Some((mut state, stored)) = state {
            state.meta = meta.clone();
            state.epoch += 1;
            let stale_tail = stored && {
                s.bucket.states.save(&s.home, id, &state).await?;
                std::mem::take(&mut live.lock().stale_tail)
            };
            if stale_tail {
                let _ = s.store().delete(&s.tail_path(id)?).await;
            }
            let generation = {
                let mut inner = live.lock();
                inner.state = state;
                inner.unsaved &= !stored;
                inner.generation += 1;
                inner.generation
            };
            return Ok(Box::new(S3Partial { s: s.clone(), live: Arc::clone(&live), generation, done: false }));
        }
    }
    let mut d = load_verified(s, id).await?.ok_or_else(|| not_found(id))?;
    d.state.meta = meta.clone();
    d.state.epoch += 1;
    s.bucket.states.save(&s.home, id, &d.state).await?;
    let live = s.new_live(id, d, true);
    s.register(&live);
    Ok(Box::new(S3Partial { s: s.clone(), live, generation: 1, done: false }))
}

pub(super) async fn info(s: &S3Storage, id: &str) -> Result<Option<PartialInfo>, VfsError> {
    if !valid_id(id) {
        return Ok(None);
    }
    if let Some(live) = s.live(id) {
        return Ok(Some(live.lock().info(id)));
    }
    Ok(load_verified(s, id).await?.map(|d| PartialInfo {
        id: id.to_string(),
        len: d.state.parts_len() + d.state.tail,
        meta: d.state.meta,
        modified: d.modified,
    }))
}

/// Every partial, as recorded (cheap: no ListParts); `partial_info` and
/// `partial_hash` check one against S3.
pub(super) async fn list(s: &S3Storage) -> Result<Vec<PartialInfo>, VfsError> {
    // The live ones first (held): one stored while we list is still seen once.
    let live: HashMap<String, Arc<Live>> = s.live_here().into_iter().collect();
    let stored = s.bucket.states.list(&s.home).await?;
    let mut out: Vec<PartialInfo> = live.iter().map(|(id, l)| l.lock().info(id)).collect();
    out.extend(stored.into_iter().filter(|st| !live.contains_key(&st.id)).map(|st| PartialInfo {
        len: st.state.parts_len() + st.state.tail,
        id: st.id,
        meta: st.state.meta,
        modified: st.modified,
    }));
    Ok(out)
}

pub(super) async fn hash(s: &S3Storage, id: &str, len: u64) -> Result<(Sha256, u64), VfsError> {
    if !valid_id(id) {
        return Err(not_found(id));
    }
    if let Some(live) = s.live(id) {
        let inner = live.lock();
        return Ok(prefix_hash(&inner.state.parts, inner.flushed, &inner.hasher, inner.unrecorded(), len));
    }
    let d = load_verified(s, id).await?.ok_or_else(|| not_found(id))?;
    Ok(prefix_hash(&d.state.parts, d.state.parts_len(), &d.hasher, std::iter::once(&d.tail[..]), len))
}

pub(super) async fn remove(s: &S3Storage, id: &str) -> Result<Amount, VfsError> {
    if !valid_id(id) {
        return Ok(Amount::default());
    }
    if let Some(live) = s.live(id) {
        let mut q = live.sending.lock().await;
        for h in q.drain(..) {
            h.abort();
        }
        let _io = live.io.lock().await;
        let taken = {
            let mut inner = live.lock();
            (!inner.gone).then(|| {
                inner.gone = true;
                (inner.state.clone(), inner.len(), inner.stored)
            })
        };
        if let Some((state, len, stored)) = taken {
            let discarded = s.discard_durable(id, &state, stored).await;
            s.unregister(&live);
            discarded?;
            return Ok(Amount::file(len));
        }
    }
    let Some(stored) = s.bucket.states.load(&s.home, id).await? else { return Ok(Amount::default()) };
    let held = s.held_in_parts(&stored.state).await? + stored.state.tail;
    s.discard_durable(id, &stored.state, true).await?;
    Ok(Amount::file(held))
}

/// What the home holds: objects, directory markers, and per partial its
/// bytes (a live buffer of this process; else the parts S3 holds by
/// ListParts and its tail), plus pending uploads under the home that no
/// partial records. States and markers themselves are bookkeeping.
pub(super) async fn usage(s: &S3Storage) -> Result<Amount, VfsError> {
    // The live ones first: one that is stored while we list is still counted once.
    let live: HashMap<String, (u64, Option<String>)> = s
        .live_here()
        .into_iter()
        .map(|(id, l)| {
            let inner = l.lock();
            (id, (inner.len(), inner.state.upload_id.clone()))
        })
        .collect();
    let mut total = Amount::default();
    let partials = partial_dir(&s.home);
    for o in s.list_all(&s.home).await? {
        let key = o.location.as_ref();
        if key.starts_with(&partials) {
            continue;
        }
        total = total + if S3Storage::is_marker(key) { Amount::dirs(1) } else { Amount::file(o.size) };
    }
    let stored = s.bucket.states.list(&s.home).await?;
    let pending = s.bucket.raw.list_uploads(&s.home).await.map_err(backend_error)?;
    let pending_ids: HashSet<&str> = pending.iter().map(|u| u.upload_id.as_str()).collect();
    let mut referenced: HashSet<String> = live.values().filter_map(|(_, u)| u.clone()).collect();
    for st in &stored {
        if let Some(u) = &st.state.upload_id {
            referenced.insert(u.clone());
        }
        let bytes = match live.get(&st.id) {
            Some((len, _)) => *len,
            None => {
                let parts = match &st.state.upload_id {
                    Some(u) if pending_ids.contains(u.as_str()) => s.held_in_parts(&st.state).await?,
                    _ => 0,
                };
                parts + st.state.tail
            }
        };
        total = total + Amount::file(bytes);
    }
    let ids: HashSet<&str> = stored.iter().map(|st| st.id.as_str()).collect();
    for (id, (len, _)) in &live {
        if !ids.contains(id.as_str()) {
            total = total + Amount::file(*len);
        }
    }
    for u in pending.iter().filter(|u| !referenced.contains(&u.upload_id)) {
        let parts = s.bucket.raw.list_parts(&u.key, &u.upload_id).await.map_err(backend_error)?;
        total.bytes += parts.map_or(0, |p| p.iter().map(|p| p.size).sum::<u64>());
    }
    Ok(total)
}

/// The writer of one partial upload.
struct S3Partial {
    s: S3Storage,
    live: Arc<Live>,
    generation: u64,
    /// Committed: nothing to store when dropped.
    done: bool,
}

impl S3Partial {
    fn check(&self, inner: &Inner) -> Result<(), VfsError> {
        if inner.gone {
            return Err(not_found(&self.live.id));
        }
        if inner.generation != self.generation {
            return Err(VfsError::Io(std::io::Error::other(format!(
                "upload {} was taken over by a newer writer",
                self.live.id
            ))));
        }
        Ok(())
    }

    fn part_size(&self) -> u64 {
        self.s.bucket.settings.part_size
    }

    /// Puts `data` at `at` in the buffer.
    fn put(&self, at: u64, data: &[u8]) -> Result<(), VfsError> {
        let mut inner = self.live.lock();
        let end = at + data.len() as u64;
        self.window(&inner, at, end)?;
        let base = inner.base();
        inner.buf.write_at((at - base) as usize, data);
        if end > at {
            inner.add_filled(at..end);
        }
        inner.dirty = true;
        inner.modified = SystemTime::now();
        Ok(())
    }

    /// The multipart upload of this partial, created on the first part
    /// (an upload that never fills a part needs none).
    async fn ensure_upload(
        &self,
        state: &mut PartialState,
        stored: &mut bool,
    ) -> Result<(object_store::path::Path, String), VfsError> {
        if let (Some(u), Some(k)) = (&state.upload_id, &state.key) {
            return Ok((obj_path(k)?, u.clone()));
        }
        let target = VirtualPath::parse(&state.meta.path)?;
        let key = self.s.key(&target);
        let path = obj_path(&key)?;
        let upload_id = self.s.bucket.store.create_multipart(&path).await.map_err(backend_error)?;
        state.upload_id = Some(upload_id.clone());
        state.key = Some(key);
        // Recorded before any part: an upload is never left unrecorded with data.
        self.s.save_checked(&self.live.id, state, *stored).await?;
        *stored = true;
        Ok((path, upload_id))
    }

    /// The multipart upload, created (and recorded) when the first part is
    /// ready.
    async fn upload_of(&self) -> Result<(object_store::path::Path, String), VfsError> {
        // Once created, without waiting for `io`: a state save in the
        // background holds it for two requests, and every part ready would
        // wait for it.
        {
            let inner = self.live.lock();
            self.check(&inner)?;
            if let (Some(u), Some(k)) = (&inner.state.upload_id, &inner.state.key) {
                return Ok((obj_path(k)?, u.clone()));
            }
        }
        let _io = self.live.io.lock().await;
        let (mut state, mut stored) = {
            let inner = self.live.lock();
            self.check(&inner)?;
            (inner.state.clone(), inner.stored)
        };
        let created = state.upload_id.is_none();
        let found = self.ensure_upload(&mut state, &mut stored).await?;
        if created {
            let mut inner = self.live.lock();
            inner.state.upload_id = state.upload_id;
            inner.state.key = state.key;
            inner.stored = true;
        }
        Ok(found)
    }

    /// Sends every whole part there is (up to [`PARTS_IN_FLIGHT`] at once;
    /// when more are ready, the oldest is waited for and recorded).
    async fn pump(&self) -> Result<(), VfsError> {
        let part_size = self.part_size();
        let mut q = self.live.sending.lock().await;
        // Parts already done are taken without waiting.
        while q.front().is_some_and(|h| h.is_finished()) {
            ack_front(&self.live, &mut q).await?;
        }
        save_soon(&self.s, &self.live)?;
        if !self.live.lock().part_ready(part_size) {
            return Ok(());
        }
        let (path, upload_id) = self.upload_of().await?;
        loop {
            while q.len() < PARTS_IN_FLIGHT {
                let job = {
                    let mut inner = self.live.lock();
                    self.check(&inner)?;
                    let number = (inner.state.parts.len() + q.len()) as u32 + 1;
                    inner.take_part(part_size).map(|(bytes, hasher)| (number, bytes, hasher))
                };
                let Some((number, bytes, hasher)) = job else { break };
                let (store, path, upload_id) = (Arc::clone(&self.s.bucket.store), path.clone(), upload_id.clone());
                q.push_back(tokio::spawn(async move {
                    let size = bytes.len() as u64;
                    let part = store
                        .put_part(&path, &upload_id, number as usize - 1, PutPayload::from(bytes))
                        .await
                        .map_err(backend_error)?;
                    Ok(Sent { number, content_id: part.content_id, size, hasher })
                }));
            }
            if q.len() >= PARTS_IN_FLIGHT && self.live.lock().part_ready(part_size) {
                ack_front(&self.live, &mut q).await?;
                save_soon(&self.s, &self.live)?;
            } else {
                return Ok(());
            }
        }
    }
}

/// Waits for the oldest part being sent and takes it into the state in
/// memory (ETag, size, the hasher state after it); [`save_soon`] or the
/// next durable step saves it.
async fn ack_front(live: &Live, q: &mut VecDeque<Sending>) -> Result<(), VfsError> {
    let Some(h) = q.pop_front() else { return Ok(()) };
    let failed = |q: &mut VecDeque<Sending>, e: VfsError| {
        for h in q.drain(..) {
            h.abort();
        }
        live.lock().reset_sending();
        e
    };
    let sent = match h.await {
        Ok(Ok(sent)) => sent,
        Ok(Err(e)) => return Err(failed(q, e)),
        Err(_) => return Err(failed(q, VfsError::Io(std::io::Error::other("part upload failed")))),
    };
    let mut inner = live.lock();
    if inner.gone {
        drop(inner);
        return Err(failed(q, not_found(&live.id)));
    }
    inner.state.parts.push(PartRecord {
        number: sent.number,
        etag: api::part_etag(&sent.content_id),
        content_id: sent.content_id,
        size: sent.size,
        hash_state: hashing::save(&sent.hasher),
    });
    if std::mem::take(&mut inner.state.tail) > 0 {
        inner.stale_tail = true;
    }
    inner.unsaved = true;
    inner.flushed += sent.size;
    inner.sending -= sent.size;
    inner.hasher = sent.hasher;
    inner.in_flight.pop_front();
    let flushed = inner.flushed;
    inner.filled.retain(|r| r.end > flushed);
    if let Some(first) = inner.filled.first_mut() {
        first.start = first.start.max(flushed);
    }
    Ok(())
}

/// Starts a background save of the state when parts were taken since the
/// last one and none is running; reports the last save's failure.
fn save_soon(s: &S3Storage, live: &Arc<Live>) -> Result<(), VfsError> {
    let mut saver = live.saver.lock().unwrap_or_else(|e| e.into_inner());
    if saver.as_ref().is_some_and(|h| !h.is_finished()) || !live.lock().unsaved {
        return Ok(());
    }
    let last = saver.take();
    let (s2, l2) = (s.clone(), Arc::clone(live));
    *saver = Some(tokio::spawn(async move {
        let _io = l2.io.lock().await;
        save_state(&s2, &l2).await
    }));
    match last.and_then(|h| h.now_or_never()) {
        Some(Ok(Err(e))) => Err(e),
        _ => Ok(()),
    }
}

/// Saves the state in memory if it has parts not yet saved, then deletes
/// a tail it no longer names. Called with `io` held.
async fn save_state(s: &S3Storage, live: &Live) -> Result<(), VfsError> {
    let (state, stored, stale_tail) = {
        let mut inner = live.lock();
        if inner.gone || !inner.unsaved {
            return Ok(());
        }
        inner.unsaved = false;
        (inner.state.clone(), inner.stored, inner.stale_tail)
    };
    if let Err(e) = s.save_checked(&live.id, &state, stored).await {
        live.lock().unsaved = true;
        return Err(e);
    }
    live.lock().stored = true;
    if stale_tail {
        let _ = s.store().delete(&s.tail_path(&live.id)?).await;
        live.lock().stale_tail = false;
    }
    Ok(())
}

/// Takes every part being sent into the state in memory.
async fn drain(live: &Live, q: &mut VecDeque<Sending>) -> Result<(), VfsError> {
    while !q.is_empty() {
        ack_front(live, q).await?;
    }
    Ok(())
}

/// Stores the buffer of a writer that went away as the tail (and the
/// state, if it was never stored), so a resume anywhere finds it.
async fn store_tail(s: &S3Storage, live: &Live, generation: u64) -> Result<(), VfsError> {
    let (mut state, buf, stored, stale_tail) = {
        let inner = live.lock();
        if inner.gone || inner.generation != generation || (inner.stored && !inner.dirty && !inner.unsaved) {
            return Ok(());
        }
        (inner.state.clone(), inner.unrecorded_copy().freeze(), inner.stored, inner.stale_tail)
    };
    let path = s.tail_path(&live.id)?;
    if buf.is_empty() {
        if state.tail > 0 || stale_tail {
            let _ = s.store().delete(&path).await;
        }
    } else {
        s.store().put(&path, PutPayload::from(buf.clone())).await.map_err(backend_error)?;
    }
    state.tail = buf.len() as u64;
    s.save_checked(&live.id, &state, stored).await?;
    let mut inner = live.lock();
    inner.stored = true;
    inner.stale_tail = false;
    if inner.generation == generation {
        inner.state.tail = state.tail;
        inner.dirty = false;
        inner.unsaved = false;
    }
    Ok(())
}

impl S3Partial {
    /// The window rule (see the module doc), checked under the lock.
    fn window(&self, inner: &Inner, offset: u64, end: u64) -> Result<(), VfsError> {
        self.check(inner)?;
        let max_buffer = self.s.bucket.settings.max_buffer;
        let base = inner.base();
        if offset < base {
            return Err(unsupported(format!(
                "S3 storage cannot rewrite bytes already sent as parts (below {base}); write at {offset} refused"
            )));
        }
        if end - base > max_buffer {
            return Err(unsupported(format!(
                "S3 storage holds at most {max_buffer} bytes past the sent parts (at {base}); write at {offset} refused"
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl PartialWrite for S3Partial {
    fn check_range(&self, offset: u64, end: u64) -> Result<(), VfsError> {
        self.window(&self.live.lock(), offset, end)
    }

    async fn write_at(&mut self, offset: u64, mut data: Bytes) -> Result<(), VfsError> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| VfsError::Io(std::io::ErrorKind::FileTooLarge.into()))?;
        self.window(&self.live.lock(), offset, end)?;
        // A write across the end of the part being filled goes in two steps,
        // that part sent in between: a buffer is free again by then for the
        // rest, and an upload holds only the parts in flight and one more.
        let mut at = offset;
        loop {
            let edge = self.live.lock().base() + self.part_size();
            if at >= edge || end <= edge {
                break;
            }
            let head = data.split_to((edge - at) as usize);
            self.put(at, &head)?;
            at = edge;
            self.pump().await?;
        }
        self.put(at, &data)?;
        self.pump().await
    }

    async fn commit(
        mut self: Box<Self>,
        target: &VirtualPath,
        overwrite: bool,
        _fsync: bool,
        hash: Option<(HashAlgo, &str)>,
    ) -> Result<Amount, VfsError> {
        let sha256 = hash.and_then(|(algo, h)| super::sha256_of(algo, h));
        let sending = Arc::clone(&self.live.sending);
        let mut q = sending.lock().await;
        drain(&self.live, &mut q).await?;
        let io = Arc::clone(&self.live.io);
        let _io = io.lock().await;
        let (mut state, buf, mut stored, stale_tail) = {
            let inner = self.live.lock();
            self.check(&inner)?;
            (inner.state.clone(), inner.unrecorded_copy().freeze(), inner.stored, inner.stale_tail)
        };
        let s = self.s.clone();
        let id = self.live.id.clone();
        let key = s.key(target);
        let replaced = if state.upload_id.is_some() {
            if state.key.as_deref() != Some(key.as_str()) {
                return Err(unsupported(format!(
                    "an S3 upload commits only to the path it was started for ({})",
                    state.meta.path
                )));
            }
            let (path, upload_id) = self.ensure_upload(&mut state, &mut stored).await?;
            let mut parts: Vec<PartId> =
                state.parts.iter().map(|p| PartId { content_id: p.content_id.clone() }).collect();
            // The rest, as the last parts, before the names are locked.
            let chunks: Vec<Bytes> = if buf.is_empty() && parts.is_empty() {
                vec![Bytes::new()]
            } else {
                buf.chunks(self.part_size() as usize).map(|c| buf.slice_ref(c)).collect()
            };
            let first = parts.len();
            let sends = chunks.into_iter().enumerate().map(|(i, chunk)| {
                let (store, path, upload_id) = (Arc::clone(&s.bucket.store), path.clone(), upload_id.clone());
                async move { store.put_part(&path, &upload_id, first + i, PutPayload::from(chunk)).await }
            });
            let sent: Vec<PartId> =
                futures::stream::iter(sends).buffered(PARTS_IN_FLIGHT).try_collect().await.map_err(backend_error)?;
            parts.extend(sent);
            let _names = s.lock.lock().await;
            let replaced = s.check_target(target, overwrite).await?;
            let done = s.bucket.store.complete_multipart(&path, &upload_id, parts).await.map_err(backend_error)?;
            if let Some(h) = sha256 {
                // Metadata is fixed at CreateMultipartUpload, before the hash is
                // known: a copy onto itself (server-side) adds it. Without it a
                // download hashes the file itself.
                let etag = done.e_tag.unwrap_or_default();
                if let Err(e) = s.bucket.raw.replace_metadata(&key, &etag, &[(HASH_META, h)]).await {
                    tracing::warn!(error = %e, path = %target, "cannot keep the verified hash with the object");
                }
            }
            replaced
        } else {
            let _names = s.lock.lock().await;
            let replaced = s.check_target(target, overwrite).await?;
            s.put(&s.path(target)?, buf, sha256).await?;
            replaced
        };
        self.done = true;
        self.live.lock().gone = true;
        s.unregister(&self.live);
        if state.tail > 0 || stale_tail {
            let _ = s.store().delete(&s.tail_path(&id)?).await;
        }
        if stored && let Err(e) = s.bucket.states.delete(&s.home, &id).await {
            tracing::warn!(error = %e, upload_id = %id, "committed, but its partial state stays until it expires");
        }
        Ok(replaced.map_or(Amount::default(), Amount::file))
    }
}

impl Drop for S3Partial {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        {
            let inner = self.live.lock();
            // Stored even when empty: the partial stays one entry, as on disk.
            let settled = inner.stored && !inner.dirty && !inner.unsaved && inner.sending == 0;
            if inner.gone || inner.generation != self.generation || settled {
                return;
            }
        }
        // Taken now, so a removal or a reopening waits for the parts being
        // sent to be recorded and the tail to be stored.
        let Ok(mut q) = Arc::clone(&self.live.sending).try_lock_owned() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let (s, live, generation) = (self.s.clone(), Arc::clone(&self.live), self.generation);
        let tasks = self.s.bucket.tasks.clone();
        tasks.spawn_on(
            async move {
                if let Err(e) = drain(&live, &mut q).await {
                    tracing::warn!(error = %e, upload_id = %live.id, "a part of an unfinished upload was not sent");
                }
                let _io = live.io.lock().await;
                if let Err(e) = store_tail(&s, &live, generation).await {
                    tracing::warn!(error = %e, upload_id = %live.id, "cannot store an unfinished upload's tail");
                }
            },
            &rt,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner() -> Inner {
        let meta = PartialMeta { path: "/f".into(), size: None, sha256: None, blake3: None };
        Inner {
            state: PartialState::new(meta),
            flushed: 0,
            hasher: Sha256::new(),
            in_flight: VecDeque::new(),
            sending: 0,
            buf: PartBuf::new(Pool::new(4, PARTS_IN_FLIGHT + 1)),
            send_hasher: Sha256::new(),
            filled: Vec::new(),
            dirty: false,
            stored: false,
            generation: 1,
            modified: SystemTime::now(),
            gone: false,
            unsaved: false,
            stale_tail: false,
        }
    }

    fn write(inner: &mut Inner, data: &[u8]) {
        let at = inner.len();
        inner.buf.write_at(inner.buf.len(), data);
        inner.add_filled(at..at + data.len() as u64);
    }

    fn buffered(inner: &Inner) -> Vec<u8> {
        inner.buf.pieces().flatten().copied().collect()
    }

    /// Parts leave `buf` without a copy; a failed send puts every byte back
    /// in order, and the hashes still cover exactly what was written.
    #[test]
    fn parts_split_off_and_put_back_in_order() {
        let part = 4u64;
        let data: Vec<u8> = (0..11u8).collect();
        let mut inner = inner();
        write(&mut inner, &data);
        let written_at = inner.buf.pieces().next().unwrap().as_ptr();
        let (first, _) = inner.take_part(part).unwrap();
        let (second, after_two) = inner.take_part(part).unwrap();
        assert!(inner.take_part(part).is_none(), "3 bytes are not a part");
        assert_eq!(first.as_ptr(), written_at, "the part is the buffer it was written in");
        assert_eq!((&first[..], &second[..]), (&data[0..4], &data[4..8]));
        assert_eq!(after_two.finalize(), Sha256::digest(&data[..8]));
        assert_eq!((inner.base(), inner.len(), buffered(&inner)), (8, 11, data[8..].to_vec()));
        let (h, n) = prefix_hash(&inner.state.parts, inner.flushed, &inner.hasher, inner.unrecorded(), 6);
        assert_eq!((h.finalize(), n), (Sha256::digest(&data[..6]), 6));

        inner.reset_sending();
        assert_eq!((inner.base(), inner.len(), buffered(&inner)), (0, 11, data.clone()));
        assert!(inner.in_flight.is_empty());
        let (again, _) = inner.take_part(part).unwrap();
        assert_eq!(&again[..], &data[0..4]);
        assert_eq!(&inner.unrecorded_copy()[..], &data[..]);
    }

    /// A part's buffer goes back to the pool once the part is recorded and
    /// the request is done with it, and the next writes fill it again.
    #[test]
    fn part_buffers_are_reused() {
        let part = 4u64;
        let mut inner = inner();
        write(&mut inner, &[1; 4]);
        let (sent, _) = inner.take_part(part).unwrap();
        let first_at = sent.as_ptr();
        // Recorded (as `ack_front` does), and the request dropped its copy.
        inner.in_flight.pop_front();
        drop(sent);
        write(&mut inner, &[2; 4]);
        let (next, _) = inner.take_part(part).unwrap();
        assert_eq!((next.as_ptr(), &next[..]), (first_at, &[2; 4][..]));
    }
}
