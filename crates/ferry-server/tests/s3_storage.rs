//! What only S3 storage must show (issue 16), against a real S3 server
//! (`scripts/garage.sh start`; skipped with the reason when its environment
//! is not set): a resume continues on another server after the first one is
//! gone (its tail stored, or lost with it), the resume offset and prefix hash
//! come from what S3 holds and not from the record, the quota counts pending
//! parts, writes are taken out of order within the window and refused
//! outside it, listings follow pages, directories are explicit.
//!
//! "Another server" is a second `S3Bucket` client with its own memory: it
//! shares nothing with the first but the bucket (and, in one test, the
//! PostgreSQL database that keeps the partial-upload states).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_server::config::{StorageConfig, StorageKind};
use ferry_server::home::{HashAlgo, Home, HomeSettings, SmallPut, UploadSpec};
use ferry_server::pg::Database;
use ferry_server::quota::UserQuota;
use ferry_server::storage::s3::{PartialStore, PgPartialStore};
use ferry_server::storage::{EntryKind, PartialMeta, S3Bucket, S3Credentials, Storage, VfsError, VirtualPath};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

const MIB: usize = 1 << 20;
const PART: usize = 5 * MIB;

fn vp(s: &str) -> VirtualPath {
    VirtualPath::parse(s).unwrap()
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn env() -> Option<(StorageConfig, S3Credentials)> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (Some(endpoint), Some(bucket)) = (var("FERRY_TEST_S3_ENDPOINT"), var("FERRY_TEST_S3_BUCKET")) else {
        eprintln!("skipped: FERRY_TEST_S3_ENDPOINT and FERRY_TEST_S3_BUCKET are not set (scripts/garage.sh start)");
        return None;
    };
    let creds = match S3Credentials::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipped: {e}");
            return None;
        }
    };
    let cfg = StorageConfig {
        kind: StorageKind::S3,
        endpoint: Some(endpoint),
        bucket,
        region: var("FERRY_TEST_S3_REGION").unwrap_or_else(|| "garage".into()),
        path_style: true,
        part_size: PART as u64,
        max_buffer: 2 * PART as u64,
        ..StorageConfig::default()
    };
    Some((cfg, creds))
}

/// One "server": its own client of the bucket, a home at `prefix`.
struct Server {
    storage: Arc<dyn Storage>,
    home: Arc<Home>,
}

async fn server(cfg: &StorageConfig, creds: &S3Credentials, prefix: &str) -> Server {
    server_with(cfg, creds, prefix, None).await
}

/// A server whose partial-upload states are in `db` rather than the bucket.
async fn server_with(cfg: &StorageConfig, creds: &S3Credentials, prefix: &str, db: Option<&Arc<Database>>) -> Server {
    let states = db.map(|db| Arc::new(PgPartialStore::new(Arc::clone(db))) as Arc<dyn PartialStore>);
    let bucket = S3Bucket::with_states(cfg, creds.clone(), states).unwrap();
    let storage: Arc<dyn Storage> = Arc::new(bucket.storage_at(prefix));
    let used = storage.usage().await.unwrap();
    let quota = Arc::new(UserQuota::new(used.bytes, None));
    let settings =
        HomeSettings { fsync: false, partial_expiry: Duration::from_secs(3600), upload_algo: HashAlgo::Sha256 };
    Server { home: Arc::new(Home::new(Arc::clone(&storage), quota, settings)), storage }
}

fn prefix(test: &str) -> String {
    let mut id = [0u8; 6];
    getrandom::fill(&mut id).unwrap();
    format!("s3test-{test}-{}/", hex::encode(id))
}

/// The raw bucket, to play another tool (or an attacker) writing to it.
fn raw(cfg: &StorageConfig, creds: &S3Credentials) -> object_store::aws::AmazonS3 {
    AmazonS3Builder::new()
        .with_endpoint(cfg.endpoint.clone().unwrap())
        .with_allow_http(true)
        .with_bucket_name(&cfg.bucket)
        .with_region(&cfg.region)
        .with_access_key_id(&creds.access_key_id)
        .with_secret_access_key(std::env::var("AWS_SECRET_ACCESS_KEY").unwrap())
        .build()
        .unwrap()
}

async fn download(home: &Home, path: &str) -> (Vec<u8>, String) {
    let dl = home.open_download(&vp(path), 0).await.unwrap();
    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    let collect = async move {
        let mut out = Vec::new();
        while let Some(b) = rx.recv().await {
            out.extend_from_slice(&b);
        }
        out
    };
    let (hash, data) = tokio::join!(dl.stream(tx, HashAlgo::Sha256), collect);
    (data, hash.unwrap())
}

/// Waits (bounded) until `server` sees the partial at `path` hold `len` bytes.
async fn wait_for_partial(s: &Server, len: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = s.storage.partial_list().await.unwrap();
        if all.iter().any(|p| p.len == len) {
            return;
        }
        assert!(Instant::now() < deadline, "the partial never reached {len} bytes: {all:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn write_all(up: &mut ferry_server::home::Upload, data: &[u8]) {
    for c in data.chunks(256 * 1024) {
        up.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resume_continues_on_another_server() {
    let Some((cfg, creds)) = env() else { return };
    let home = prefix("resume");
    let data = bytes(2 * PART + 3 * MIB + 11, 1);
    let cut = PART + 2 * MIB + 100;
    let size = Some(data.len() as u64);
    let a = server(&cfg, &creds, &home).await;
    let spec = UploadSpec { size, resumable: true, ..Default::default() };
    let mut up = a.home.begin_upload(&vp("/f.bin"), spec.clone()).await.unwrap();
    write_all(&mut up, &data[..cut]).await;
    drop(up);

    // Server B: nothing in memory; the state, one part and the tail in S3.
    let b = server(&cfg, &creds, &home).await;
    wait_for_partial(&b, cut as u64).await;
    let b = server(&cfg, &creds, &home).await;
    assert_eq!(b.home.usage().used, cut as u64, "the quota counts the pending part and the tail");
    let st = b.home.upload_status(&vp("/f.bin"), size, None, HashAlgo::Sha256).await.unwrap().expect("the partial");
    assert_eq!((st.offset, st.prefix_hash.as_str()), (cut as u64, sha(&data[..cut]).as_str()));
    assert!(b.storage.stat(&vp("/f.bin")).await.is_err(), "no object before the commit");

    let resume = UploadSpec { offset: st.offset, upload_id: Some(st.upload_id.clone()), ..spec };
    let mut up = b.home.begin_upload(&vp("/f.bin"), resume).await.unwrap();
    write_all(&mut up, &data[cut..]).await;
    let c = up.commit(Some(&sha(&data))).await.unwrap();
    assert_eq!(c.size, data.len() as u64);
    let (got, hash) = download(&a.home, "/f.bin").await;
    assert!(got == data, "server A reads what B committed");
    assert_eq!(hash, sha(&data));
    let kept = a.storage.open_read(&vp("/f.bin")).await.unwrap().recorded_hash(HashAlgo::Sha256);
    assert_eq!(kept, Some(sha(&data)), "the verified hash is kept in the object's metadata");
    assert!(b.storage.partial_list().await.unwrap().is_empty());
    let c = server(&cfg, &creds, &home).await;
    assert_eq!(c.home.usage().used, data.len() as u64, "nothing pending is left");
}

/// Rows of `s3_partials` for `home`.
async fn state_rows(db: &Database, home: &str) -> i64 {
    let home = home.to_owned();
    db.run(move |c| async move {
        c.query_one("SELECT count(*) FROM s3_partials WHERE home = $1", &[&home]).await.map(|r| r.get(0))
    })
    .await
    .unwrap()
}

/// With a shared database (`[users] kind = "postgres"`), a partial's state
/// is a row there, not an object in the bucket; a cut upload still resumes
/// through another server, and the row goes with the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn states_in_the_database_resume_on_another_server() {
    let Some((cfg, creds)) = env() else { return };
    let Some(pg) = ferry_testkit::Postgres::start().unwrap() else { return };
    let (db_a, db_b) = (Arc::new(Database::open(&pg.url).unwrap()), Arc::new(Database::open(&pg.url).unwrap()));
    let home = prefix("pgstate");
    let data = bytes(2 * PART + MIB + 5, 9);
    let cut = PART + MIB + 7;
    let size = Some(data.len() as u64);
    let a = server_with(&cfg, &creds, &home, Some(&db_a)).await;
    let spec = UploadSpec { size, resumable: true, ..Default::default() };
    let mut up = a.home.begin_upload(&vp("/f.bin"), spec.clone()).await.unwrap();
    write_all(&mut up, &data[..cut]).await;
    drop(up);

    let b = server_with(&cfg, &creds, &home, Some(&db_b)).await;
    wait_for_partial(&b, cut as u64).await;
    assert_eq!(state_rows(&db_b, &home).await, 1, "the state is a row");
    let store = raw(&cfg, &creds);
    let kept: Vec<String> = store
        .list_with_delimiter(Some(&Path::parse(format!("{home}.ferry-partial")).unwrap()))
        .await
        .unwrap()
        .objects
        .into_iter()
        .map(|o| o.location.to_string())
        .collect();
    assert!(kept.iter().all(|k| k.ends_with(".tail")) && kept.len() == 1, "only the tail is in the bucket: {kept:?}");

    let b = server_with(&cfg, &creds, &home, Some(&db_b)).await;
    let st = b.home.upload_status(&vp("/f.bin"), size, None, HashAlgo::Sha256).await.unwrap().expect("the partial");
    assert_eq!((st.offset, st.prefix_hash.as_str()), (cut as u64, sha(&data[..cut]).as_str()));
    let resume = UploadSpec { offset: st.offset, upload_id: Some(st.upload_id.clone()), ..spec };
    let mut up = b.home.begin_upload(&vp("/f.bin"), resume).await.unwrap();
    write_all(&mut up, &data[cut..]).await;
    up.commit(Some(&sha(&data))).await.unwrap();
    assert!(download(&a.home, "/f.bin").await.0 == data, "server A reads what B committed");
    assert_eq!(state_rows(&db_a, &home).await, 0, "the row goes with the commit");
}

/// A server that dies before it stores its buffer loses only that: the
/// resume offset is the part S3 holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_that_dies_loses_only_its_buffer() {
    let Some((cfg, creds)) = env() else { return };
    let home = prefix("dies");
    let data = bytes(PART + 4 * MIB, 2);
    let size = Some(data.len() as u64);
    let a = server(&cfg, &creds, &home).await;
    let spec = UploadSpec { size, resumable: true, ..Default::default() };
    let mut up = a.home.begin_upload(&vp("/f.bin"), spec.clone()).await.unwrap();
    let id = up.id().to_string();
    write_all(&mut up, &data[..PART + MIB]).await;
    // Parts go up in the background and are recorded at later writes:
    // write on, a little at a time, until S3 shows the first part recorded.
    let b = server(&cfg, &creds, &home).await;
    let mut at = PART + MIB;
    while b.storage.partial_info(&id).await.unwrap().is_none_or(|p| p.len < PART as u64) {
        assert!(at < data.len() - MIB, "the first part was never recorded");
        up.write(Bytes::copy_from_slice(&data[at..at + 64 * 1024])).await.unwrap();
        at += 64 * 1024;
    }
    // No drop, no tail: as if the process were killed.
    std::mem::forget(up);

    // A server that starts now measures what S3 holds (`b` measured its
    // home when it opened, maybe before the part had landed).
    let b = server(&cfg, &creds, &home).await;
    assert_eq!(b.home.usage().used, PART as u64, "what S3 holds: one part");
    let st = b.home.upload_status(&vp("/f.bin"), size, None, HashAlgo::Sha256).await.unwrap().expect("the partial");
    assert_eq!((st.offset, st.prefix_hash.as_str()), (PART as u64, sha(&data[..PART]).as_str()));
    let resume = UploadSpec { offset: st.offset, upload_id: Some(st.upload_id.clone()), ..spec };
    let mut up = b.home.begin_upload(&vp("/f.bin"), resume).await.unwrap();
    write_all(&mut up, &data[PART..]).await;
    up.commit(Some(&sha(&data))).await.unwrap();
    assert!(download(&b.home, "/f.bin").await.0 == data);
}

/// The record alone proves nothing: a part S3 does not hold as recorded
/// cuts the partial there, and the prefix hash is of the bytes S3 holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_resume_proof_comes_from_what_s3_holds() {
    let Some((cfg, creds)) = env() else { return };
    let home = prefix("proof");
    let data = bytes(PART + 2 * MIB, 3);
    let size = Some(data.len() as u64);
    let cut = PART + MIB;
    let a = server(&cfg, &creds, &home).await;
    let spec = UploadSpec { size, resumable: true, ..Default::default() };
    let mut up = a.home.begin_upload(&vp("/f.bin"), spec).await.unwrap();
    let id = up.id().to_string();
    write_all(&mut up, &data[..cut]).await;
    drop(up);
    let b = server(&cfg, &creds, &home).await;
    wait_for_partial(&b, cut as u64).await;

    // Another tool rewrites the tail in place (same length): the prefix
    // hash shown to a resuming client is of the new bytes, so its proof fails.
    let store = raw(&cfg, &creds);
    let tail = Path::parse(format!("{home}.ferry-partial/{id}.tail")).unwrap();
    store.put(&tail, PutPayload::from(vec![0u8; MIB])).await.unwrap();
    let st = b.home.upload_status(&vp("/f.bin"), size, None, HashAlgo::Sha256).await.unwrap().unwrap();
    assert_eq!(st.offset, cut as u64);
    let mut expect = data[..PART].to_vec();
    expect.extend(vec![0u8; MIB]);
    assert_eq!(st.prefix_hash, sha(&expect), "hashed from what is stored");

    // A record whose part S3 does not hold (its ETag changed): nothing is proven.
    let state = Path::parse(format!("{home}.ferry-partial/{id}.json")).unwrap();
    let mut json: serde_json::Value =
        serde_json::from_slice(&store.get(&state).await.unwrap().bytes().await.unwrap()).unwrap();
    json["parts"][0]["etag"] = "\"0000\"".into();
    store.put(&state, PutPayload::from(serde_json::to_vec(&json).unwrap())).await.unwrap();
    let st = b.home.upload_status(&vp("/f.bin"), size, None, HashAlgo::Sha256).await.unwrap().unwrap();
    assert_eq!((st.offset, st.prefix_hash.as_str()), (0, sha(b"").as_str()));
}

/// Out-of-order writes within the window become parts once contiguous; a
/// write below the sent parts or past the window is refused, changing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_out_of_order_within_the_window() {
    let Some((cfg, creds)) = env() else { return };
    let home = prefix("window");
    let a = server(&cfg, &creds, &home).await;
    let data = bytes(2 * PART + 77, 4);
    let meta = PartialMeta { path: "/w.bin".into(), size: Some(data.len() as u64), sha256: None, blake3: None };
    let id = "00112233445566778899aabbccddeeff";
    let mut w = a.storage.partial_create(id, &meta).await.unwrap();
    let half = PART / 2;
    w.write_at(half as u64, Bytes::copy_from_slice(&data[half..PART + 10])).await.unwrap();
    assert_eq!(a.storage.usage().await.unwrap().bytes, (PART + 10) as u64, "the hole counts, as on disk");
    w.write_at(0, Bytes::copy_from_slice(&data[..half])).await.unwrap();
    // The first part is sent now: below it nothing can be written.
    let unsupported =
        |r: Result<(), VfsError>| matches!(r, Err(VfsError::Io(e)) if e.kind() == std::io::ErrorKind::Unsupported);
    assert!(unsupported(w.write_at(100, Bytes::from_static(b"again")).await));
    assert!(unsupported(w.check_range(3 * PART as u64, 3 * PART as u64 + 1)));
    w.write_at((PART + 10) as u64, Bytes::copy_from_slice(&data[PART + 10..])).await.unwrap();
    let (h, n) = a.storage.partial_hash(id, data.len() as u64, HashAlgo::Sha256).await.unwrap();
    assert_eq!((h.finalize_hex(), n), (sha(&data), data.len() as u64));
    let (h, n) = a.storage.partial_hash(id, 100, HashAlgo::Sha256).await.unwrap();
    // Inside a part still in memory any length can be hashed; inside a
    // recorded one only its start.
    let expect = if n == 100 { sha(&data[..100]) } else { sha(b"") };
    assert!(n == 100 || n == 0, "{n}");
    assert_eq!(h.finalize_hex(), expect);
    w.commit(&vp("/w.bin"), false, false, Some((HashAlgo::Sha256, &sha(&data)))).await.unwrap();
    assert!(download(&a.home, "/w.bin").await.0 == data);
}

/// Directories are explicit (an empty one exists and lists), a prefix
/// written by another tool is a directory too, the partial folder never
/// shows, and a listing longer than one page is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn directories_and_paginated_listings() {
    let Some((cfg, creds)) = env() else { return };
    let home = prefix("dirs");
    let a = server(&cfg, &creds, &home).await;
    a.home.mkdir(&vp("/empty"), false).await.unwrap();
    a.home.mkdir(&vp("/many"), false).await.unwrap();
    let store = raw(&cfg, &creds);
    store.put(&Path::parse(format!("{home}other/tool.txt")).unwrap(), PutPayload::from_static(b"x")).await.unwrap();
    let mut up =
        a.home.begin_upload(&vp("/pending"), UploadSpec { resumable: true, ..Default::default() }).await.unwrap();
    up.write(Bytes::from_static(b"held")).await.unwrap();

    let names = |v: Vec<ferry_server::storage::Entry>| v.into_iter().map(|e| (e.name, e.kind)).collect::<Vec<_>>();
    let root = names(a.home.list(&VirtualPath::root()).await.unwrap());
    assert_eq!(
        root,
        [("empty".into(), EntryKind::Dir), ("many".into(), EntryKind::Dir), ("other".into(), EntryKind::Dir)]
    );
    assert!(a.home.list(&vp("/empty")).await.unwrap().is_empty());
    a.home.enter(&vp("/other")).await.unwrap();

    const N: usize = 1050;
    for batch in (0..N).collect::<Vec<_>>().chunks(64) {
        let puts = batch
            .iter()
            .map(|i| {
                let data = format!("file {i}").into_bytes();
                SmallPut {
                    target: vp(&format!("/many/f{i:04}")),
                    algo: HashAlgo::Sha256,
                    hash: sha(&data),
                    data,
                    promised: None,
                    overwrite: false,
                }
            })
            .collect();
        for r in a.home.put_small(puts).await {
            r.unwrap();
        }
    }
    let listed = a.home.list(&vp("/many")).await.unwrap();
    assert_eq!(listed.len(), N, "every page");
    assert_eq!((listed[0].name.as_str(), listed[N - 1].name.as_str()), ("f0000", "f1049"));
    let freed = a.home.remove(&vp("/many"), ferry_server::home::Remove::Tree).await.unwrap();
    assert_eq!((freed.files, freed.dirs), (N as u64, 1));
    drop(up);
}
