//! `MemStorage`: a home held in memory. It proves the `Storage` trait is not
//! shaped around a local disk (no rename of partial files, no xattrs), and
//! runs the contract suite fast. One lock around the whole tree makes every
//! operation, and the accounting it returns, one atomic step.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_proto::hash::{HashAlgo, Hasher};
use tokio::sync::mpsc;

use super::{
    Amount, Entry, EntryKind, FileRead, PartialInfo, PartialMeta, PartialWrite, READ_BLOCK, SmallFile, SmallWrite,
    Storage, VfsError, VirtualPath,
};

#[derive(Debug, Clone)]
enum Node {
    Dir { mtime: i64 },
    File { data: Bytes, mtime: i64, hashes: Hashes },
}

/// The hashes kept with a file, one per algorithm, as the disk backend keeps
/// one xattr per algorithm. A replaced file is a new node: none carry over.
#[derive(Debug, Clone, Default)]
struct Hashes {
    sha256: Option<String>,
    blake3: Option<String>,
}

impl Hashes {
    fn one(algo: HashAlgo, hex: String) -> Hashes {
        let mut h = Hashes::default();
        h.set(algo, hex);
        h
    }

    fn get(&self, algo: HashAlgo) -> Option<String> {
        match algo {
            HashAlgo::Sha256 => self.sha256.clone(),
            HashAlgo::Blake3 => self.blake3.clone(),
        }
    }

    fn set(&mut self, algo: HashAlgo, hex: String) {
        match algo {
            HashAlgo::Sha256 => self.sha256 = Some(hex),
            HashAlgo::Blake3 => self.blake3 = Some(hex),
        }
    }
}

#[derive(Debug)]
struct MemPartial {
    meta: PartialMeta,
    data: Vec<u8>,
    modified: SystemTime,
}

#[derive(Debug, Default)]
struct Tree {
    /// Every entry but the root, by virtual path.
    nodes: BTreeMap<VirtualPath, Node>,
    partials: HashMap<String, MemPartial>,
}

/// A home in memory; clones share the same tree.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    tree: Arc<Mutex<Tree>>,
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    fn lock(&self) -> MutexGuard<'_, Tree> {
        // A poisoned lock means a panic mid-operation; every operation
        // checks before it changes anything, so the tree is still whole.
        self.tree.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn entry(path: &VirtualPath, node: &Node) -> Entry {
    let name = path.file_name().unwrap_or("/").to_string();
    match node {
        Node::Dir { mtime } => Entry { name, kind: EntryKind::Dir, size: 0, mtime: *mtime, mode: 0o755 },
        Node::File { data, mtime, .. } => {
            Entry { name, kind: EntryKind::File, size: data.len() as u64, mtime: *mtime, mode: 0o644 }
        }
    }
}

const ROOT: Node = Node::Dir { mtime: 0 };

impl Tree {
    fn get(&self, p: &VirtualPath) -> Result<&Node, VfsError> {
        if p.is_root() {
            return Ok(&ROOT);
        }
        // A missing directory above, or a file above, is reported as the
        // kernel does: the first one from the top decides, at any depth.
        let mut above = Vec::new();
        let mut at = p.parent();
        while let Some(a) = at.filter(|a| !a.is_root()) {
            at = a.parent();
            above.push(a);
        }
        for a in above.iter().rev() {
            match self.nodes.get(a) {
                None => return Err(VfsError::NotFound(p.to_string())),
                Some(Node::File { .. }) => return Err(VfsError::NotADirectory(p.to_string())),
                Some(Node::Dir { .. }) => {}
            }
        }
        self.nodes.get(p).ok_or_else(|| VfsError::NotFound(p.to_string()))
    }

    fn dir(&self, p: &VirtualPath) -> Result<(), VfsError> {
        match self.get(p)? {
            Node::Dir { .. } => Ok(()),
            Node::File { .. } => Err(VfsError::NotADirectory(p.to_string())),
        }
    }

    fn parent_dir(&self, p: &VirtualPath) -> Result<(), VfsError> {
        if p.is_root() {
            return Err(VfsError::PermissionDenied("/: the home directory itself".into()));
        }
        self.dir(&p.parent().unwrap_or_default())
    }

    fn children(&self, p: &VirtualPath) -> impl Iterator<Item = (&VirtualPath, &Node)> {
        let p = p.clone();
        self.nodes.iter().filter(move |(k, _)| k.parent().as_ref() == Some(&p))
    }

    /// The path and every entry beneath it.
    fn subtree(&self, p: &VirtualPath) -> Vec<VirtualPath> {
        self.nodes.keys().filter(|k| k.starts_with(p)).cloned().collect()
    }

    fn remove_all(&mut self, p: &VirtualPath) -> Amount {
        let mut freed = Amount::default();
        for k in self.subtree(p) {
            match self.nodes.remove(&k) {
                Some(Node::File { data, .. }) => freed = freed + Amount::file(data.len() as u64),
                Some(Node::Dir { .. }) => freed = freed + Amount::dirs(1),
                None => {}
            }
        }
        freed
    }

    fn check_target(&self, target: &VirtualPath, overwrite: bool) -> Result<(), VfsError> {
        self.parent_dir(target)?;
        match self.nodes.get(target) {
            Some(Node::Dir { .. }) => Err(VfsError::IsADirectory(target.to_string())),
            Some(_) if !overwrite => Err(VfsError::AlreadyExists(format!("{target} already exists"))),
            _ => Ok(()),
        }
    }

    /// Puts a complete file in place; what it replaced.
    fn place(&mut self, target: &VirtualPath, data: Bytes, hashes: Hashes) -> Amount {
        let node = Node::File { data, mtime: now_secs(), hashes };
        match self.nodes.insert(target.clone(), node) {
            Some(Node::File { data, .. }) => Amount::file(data.len() as u64),
            _ => Amount::default(),
        }
    }

    fn partial(&mut self, id: &str) -> Result<&mut MemPartial, VfsError> {
        self.partials.get_mut(id).ok_or_else(|| VfsError::NotFound(format!("upload {id:?}")))
    }
}

fn info(id: &str, p: &MemPartial) -> PartialInfo {
    PartialInfo { id: id.to_string(), meta: p.meta.clone(), len: p.data.len() as u64, modified: p.modified }
}

#[async_trait]
impl Storage for MemStorage {
    async fn usage(&self) -> Result<Amount, VfsError> {
        let t = self.lock();
        let files = t.nodes.values().fold(Amount::default(), |a, n| match n {
            Node::File { data, .. } => a + Amount::file(data.len() as u64),
            Node::Dir { .. } => a + Amount::dirs(1),
        });
        Ok(t.partials.values().fold(files, |a, p| a + Amount::file(p.data.len() as u64)))
    }

    async fn stat(&self, path: &VirtualPath) -> Result<Entry, VfsError> {
        let t = self.lock();
        t.get(path).map(|n| entry(path, n))
    }

    async fn enter(&self, path: &VirtualPath) -> Result<(), VfsError> {
        self.lock().dir(path)
    }

    async fn list(&self, path: &VirtualPath) -> Result<Vec<Entry>, VfsError> {
        let t = self.lock();
        t.dir(path)?;
        // BTreeMap order of VirtualPath is by components: children come sorted by name.
        let mut out: Vec<Entry> = t.children(path).map(|(k, n)| entry(k, n)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn mkdir(&self, path: &VirtualPath, parents: bool) -> Result<Amount, VfsError> {
        let mut t = self.lock();
        if path.is_root() {
            return if parents { Ok(Amount::default()) } else { Err(VfsError::AlreadyExists("/".into())) };
        }
        if !parents {
            t.parent_dir(path)?;
            if t.nodes.contains_key(path) {
                return Err(VfsError::AlreadyExists(format!("{path} already exists")));
            }
            t.nodes.insert(path.clone(), Node::Dir { mtime: now_secs() });
            return Ok(Amount::dirs(1));
        }
        let mut chain = Vec::new();
        let mut at = Some(path.clone());
        while let Some(p) = at.filter(|p| !p.is_root()) {
            match t.nodes.get(&p) {
                Some(Node::Dir { .. }) => break,
                // As mkdir -p: the path itself a file "exists", a file above it is no directory.
                Some(Node::File { .. }) if &p == path => {
                    return Err(VfsError::AlreadyExists(format!("{path} already exists")));
                }
                Some(Node::File { .. }) => return Err(VfsError::NotADirectory(p.to_string())),
                None => chain.push(p.clone()),
            }
            at = p.parent();
        }
        let created = chain.len() as u64;
        for p in chain {
            t.nodes.insert(p, Node::Dir { mtime: now_secs() });
        }
        Ok(Amount::dirs(created))
    }

    async fn remove_file(&self, path: &VirtualPath) -> Result<Amount, VfsError> {
        let mut t = self.lock();
        t.parent_dir(path)?;
        match t.get(path)? {
            Node::Dir { .. } => Err(VfsError::IsADirectory(path.to_string())),
            Node::File { .. } => Ok(t.remove_all(path)),
        }
    }

    async fn remove_dir(&self, path: &VirtualPath) -> Result<Amount, VfsError> {
        let mut t = self.lock();
        t.parent_dir(path)?;
        t.dir(path)?;
        if t.children(path).next().is_some() {
            return Err(VfsError::DirectoryNotEmpty(path.to_string()));
        }
        t.nodes.remove(path);
        Ok(Amount::dirs(1))
    }

    async fn remove_tree(&self, path: &VirtualPath) -> Result<Amount, VfsError> {
        let mut t = self.lock();
        t.parent_dir(path)?;
        t.get(path)?;
        Ok(t.remove_all(path))
    }

    async fn rename(&self, from: &VirtualPath, to: &VirtualPath, overwrite: bool) -> Result<Amount, VfsError> {
        let mut t = self.lock();
        if from.is_root() || to.is_root() {
            return Err(VfsError::PermissionDenied("the home directory itself cannot be moved or replaced".into()));
        }
        let src_is_dir = matches!(t.get(from)?, Node::Dir { .. });
        if from == to {
            return Err(VfsError::InvalidMove(format!("cannot move {from} onto itself")));
        }
        if src_is_dir && to.starts_with(from) {
            return Err(VfsError::InvalidMove(format!("cannot move {from} into itself ({to})")));
        }
        t.parent_dir(to)?;
        let mut freed = Amount::default();
        if let Some(existing) = t.nodes.get(to) {
            if !overwrite {
                return Err(VfsError::AlreadyExists(format!("{to} already exists")));
            }
            match (existing, src_is_dir) {
                (Node::Dir { .. }, false) => return Err(VfsError::IsADirectory(to.to_string())),
                (Node::File { .. }, true) => return Err(VfsError::NotADirectory(to.to_string())),
                (Node::Dir { .. }, true) if t.children(to).next().is_some() => {
                    return Err(VfsError::DirectoryNotEmpty(to.to_string()));
                }
                (Node::File { data, .. }, false) => freed = Amount::file(data.len() as u64),
                _ => freed = Amount::dirs(1),
            }
            t.nodes.remove(to);
        }
        for old in t.subtree(from) {
            let Some(node) = t.nodes.remove(&old) else { continue };
            let new = to.join_relative(&old.strip_prefix(from).unwrap_or_default());
            t.nodes.insert(new, node);
        }
        Ok(freed)
    }

    async fn open_read(&self, path: &VirtualPath) -> Result<Box<dyn FileRead>, VfsError> {
        let t = self.lock();
        match t.get(path)? {
            Node::Dir { .. } => Err(VfsError::IsADirectory(path.to_string())),
            node @ Node::File { data, hashes, .. } => Ok(Box::new(MemRead {
                entry: entry(path, node),
                data: data.clone(),
                hashes: hashes.clone(),
                storage: self.clone(),
                path: path.clone(),
            })),
        }
    }

    async fn read_small(
        &self,
        paths: Vec<VirtualPath>,
        max_each: u64,
        budget: u64,
        algo: HashAlgo,
    ) -> Vec<Result<Option<SmallFile>, VfsError>> {
        let t = self.lock();
        let mut budget = budget;
        paths
            .iter()
            .map(|p| match t.get(p)? {
                Node::Dir { .. } => Err(VfsError::IsADirectory(p.to_string())),
                node @ Node::File { data, .. } => {
                    let len = data.len() as u64;
                    if len > max_each || len > budget {
                        return Ok(None);
                    }
                    budget -= len;
                    let hash = algo.digest_hex(data);
                    Ok(Some(SmallFile { entry: entry(p, node), data: data.to_vec(), hash }))
                }
            })
            .collect()
    }

    async fn write_small(&self, files: Vec<SmallWrite>, _fsync: bool) -> Vec<Result<Amount, VfsError>> {
        let mut t = self.lock();
        files
            .into_iter()
            .map(|w| {
                t.check_target(&w.target, w.overwrite)?;
                Ok(t.place(&w.target, Bytes::from(w.data), Hashes::one(w.algo, w.hash)))
            })
            .collect()
    }

    async fn partial_create(&self, id: &str, meta: &PartialMeta) -> Result<Box<dyn PartialWrite>, VfsError> {
        let mut t = self.lock();
        if t.partials.contains_key(id) {
            return Err(VfsError::AlreadyExists(format!("upload {id} already exists")));
        }
        let p = MemPartial { meta: meta.clone(), data: Vec::new(), modified: SystemTime::now() };
        t.partials.insert(id.to_string(), p);
        Ok(Box::new(MemPartialWrite { storage: self.clone(), id: id.to_string() }))
    }

    async fn partial_open(&self, id: &str, meta: &PartialMeta) -> Result<Box<dyn PartialWrite>, VfsError> {
        let mut t = self.lock();
        t.partial(id)?.meta = meta.clone();
        Ok(Box::new(MemPartialWrite { storage: self.clone(), id: id.to_string() }))
    }

    async fn partial_info(&self, id: &str) -> Result<Option<PartialInfo>, VfsError> {
        Ok(self.lock().partials.get(id).map(|p| info(id, p)))
    }

    async fn partial_list(&self) -> Result<Vec<PartialInfo>, VfsError> {
        Ok(self.lock().partials.iter().map(|(id, p)| info(id, p)).collect())
    }

    async fn partial_hash(&self, id: &str, len: u64, algo: HashAlgo) -> Result<(Hasher, u64), VfsError> {
        let mut t = self.lock();
        let p = t.partial(id)?;
        let n = len.min(p.data.len() as u64);
        let mut hasher = Hasher::new(algo);
        hasher.update(&p.data[..n as usize]);
        Ok((hasher, n))
    }

    async fn partial_remove(&self, id: &str) -> Result<Amount, VfsError> {
        Ok(self.lock().partials.remove(id).map_or(Amount::default(), |p| Amount::file(p.data.len() as u64)))
    }
}

struct MemPartialWrite {
    storage: MemStorage,
    id: String,
}

impl MemPartialWrite {
    fn put(&mut self, offset: u64, data: &[u8]) -> Result<(), VfsError> {
        let mut t = self.storage.lock();
        let p = t.partial(&self.id)?;
        let start = usize::try_from(offset).map_err(|_| VfsError::Io(std::io::ErrorKind::FileTooLarge.into()))?;
        let end = start.checked_add(data.len()).ok_or_else(|| VfsError::Io(std::io::ErrorKind::FileTooLarge.into()))?;
        if p.data.len() < end {
            // A write past the end leaves a hole of zeros, as on disk.
            p.data.resize(end, 0);
        }
        p.data[start..end].copy_from_slice(data);
        p.modified = SystemTime::now();
        Ok(())
    }
}

#[async_trait]
impl PartialWrite for MemPartialWrite {
    async fn write_at(&mut self, offset: u64, data: Bytes) -> Result<(), VfsError> {
        self.put(offset, &data)
    }

    fn write_at_blocking(&mut self, offset: u64, data: &[u8]) -> Option<Result<(), VfsError>> {
        Some(self.put(offset, data))
    }

    async fn commit(
        self: Box<Self>,
        target: &VirtualPath,
        overwrite: bool,
        _fsync: bool,
        hash: Option<(HashAlgo, &str)>,
    ) -> Result<Amount, VfsError> {
        let mut t = self.storage.lock();
        t.partial(&self.id)?;
        t.check_target(target, overwrite)?;
        let p = t.partials.remove(&self.id).ok_or_else(|| VfsError::NotFound(format!("upload {:?}", self.id)))?;
        let hashes = hash.map(|(algo, hex)| Hashes::one(algo, hex.to_string())).unwrap_or_default();
        Ok(t.place(target, Bytes::from(p.data), hashes))
    }
}

struct MemRead {
    entry: Entry,
    data: Bytes,
    hashes: Hashes,
    storage: MemStorage,
    path: VirtualPath,
}

#[async_trait]
impl FileRead for MemRead {
    fn entry(&self) -> &Entry {
        &self.entry
    }

    fn recorded_hash(&self, algo: HashAlgo) -> Option<String> {
        self.hashes.get(algo)
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
        let start = (offset as usize).min(self.data.len());
        for at in (start..self.data.len()).step_by(READ_BLOCK) {
            let end = (at + READ_BLOCK).min(self.data.len());
            if tx.send(self.data.slice(at..end)).await.is_err() {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
        }
        let Some(algo) = hash else { return Ok(None) };
        let hex = algo.digest_hex(&self.data);
        // Kept with the file, as the disk backend keeps it in an xattr,
        // unless the file was replaced meanwhile.
        let mut t = self.storage.lock();
        if let Some(Node::File { data, hashes, .. }) = t.nodes.get_mut(&self.path)
            && data.as_ptr() == self.data.as_ptr()
        {
            hashes.set(algo, hex.clone());
        }
        Ok(Some(hex))
    }

    async fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        let start = offset.min(self.data.len() as u64) as usize;
        let end = start.saturating_add(len).min(self.data.len());
        Ok(self.data.slice(start..end))
    }

    async fn hash_prefix(self: Box<Self>, len: u64, algo: HashAlgo) -> std::io::Result<(String, u64)> {
        let n = len.min(self.data.len() as u64);
        Ok((algo.digest_hex(&self.data[..n as usize]), n))
    }
}
