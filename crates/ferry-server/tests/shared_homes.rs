//! Issue 16: one user's quota and upload claims shared by several servers
//! through PostgreSQL (`quota/postgres.rs`, `claims/postgres.rs`). Each
//! "server" here is its own database handle and ledgers, as two `ferry
//! serve` processes would have: reservations from both at once never
//! together pass the limit, a crashed server's reservation expires, uploads
//! through two `Home`s are refused past the quota, a resume through one
//! server takes the upload over from the other, and a fresh upload through
//! one never removes a partial the other is writing.
//!
//! PostgreSQL comes from `scripts/postgres.sh` (or `FERRY_TEST_DATABASE_URL`);
//! without it the tests print why and skip.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_proto::scram::Verifier;
use ferry_server::auth::{PgUserStore, UserRecord, UserStore};
use ferry_server::claims::postgres::PgClaimLedger;
use ferry_server::home::{HashAlgo, Home, HomeError, HomeSettings, UploadSpec};
use ferry_server::pg::Database;
use ferry_server::quota::postgres::PgQuotaLedger;
use ferry_server::quota::{QuotaRegistry, UserQuota};
use ferry_server::storage::{MemStorage, Storage, VirtualPath};
use ferry_testkit::Postgres;

/// Two servers' handles on one fresh database, with `alice` in it.
fn two_servers(pg: &Postgres) -> (Arc<Database>, Arc<Database>) {
    let a = Arc::new(Database::open(&pg.url).unwrap());
    let b = Arc::new(Database::open(&pg.url).unwrap());
    let user = UserRecord {
        name: "alice".into(),
        verifier: Verifier::new("pw", b"0123456789abcdef", 4096).unwrap(),
        quota_bytes: None,
        allow_exec: false,
        max_files: None,
        home: None,
        created: 0,
    };
    PgUserStore::new(Arc::clone(&a)).add(user).unwrap();
    (a, b)
}

/// Alice's quota as seen by the server on `db`, the home measured empty.
async fn quota_on(db: &Arc<Database>, limit: u64, max_files: Option<u64>) -> Arc<UserQuota> {
    let registry = QuotaRegistry::shared(PgQuotaLedger::start(Arc::clone(db)));
    registry.get_or_scan::<HomeError>("alice", Some(limit), max_files, async { Ok((0, 0)) }).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_through_two_servers_never_together_pass_the_limit() {
    let Some(pg) = Postgres::start().unwrap() else { return };
    let (a, b) = two_servers(&pg);
    let (qa, qb) = (quota_on(&a, 1000, None).await, quota_on(&b, 1000, None).await);
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let q = Arc::clone(if i % 2 == 0 { &qa } else { &qb });
            std::thread::spawn(move || {
                let mut won = 0;
                for _ in 0..20 {
                    if let Ok(r) = q.reserve(30) {
                        r.settle(30);
                        won += 30;
                    }
                }
                won
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(total, 990, "33 of 120 reservations of 30 fit in 1000");
    for q in [&qa, &qb] {
        let u = q.usage();
        assert_eq!((u.used, u.reserved), (990, 0), "both servers see the same usage");
    }
    // What one server frees, the other can use.
    qa.release(600);
    qb.reserve(600).unwrap().settle(600);
    assert!(qa.reserve(11).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_servers_reservation_expires_and_landing_is_counted_in_batches() {
    let Some(pg) = Postgres::start().unwrap() else { return };
    let (a, b) = two_servers(&pg);
    let mib = 1u64 << 20;
    let (qa, qb) = (quota_on(&a, 64 * mib, None).await, quota_on(&b, 64 * mib, None).await);

    // A reservation taken in 256 KiB blocks: used + reserved never change
    // for the other server, and every byte is used once it ends.
    let mut r = qa.reserve(40 * mib).unwrap();
    for _ in 0..100 {
        r.take(256 << 10);
        let u = qb.usage();
        assert_eq!(u.used + u.reserved, 40 * mib);
    }
    drop(r);
    let u = qb.usage();
    assert_eq!((u.used, u.reserved), (25 * mib, 0), "100 blocks of 256 KiB landed; the rest withdrawn");

    // Server A dies holding a reservation: B is refused until its lease expires.
    std::mem::forget(qa.reserve(30 * mib).unwrap());
    assert!(qb.reserve(30 * mib).is_err());
    pg_expire_leases(&b).await;
    PgQuotaLedger::renew_and_sweep(&b, "server-b", Vec::new()).await.unwrap();
    qb.reserve(30 * mib).unwrap().settle(0);
    assert_eq!(qb.usage().reserved, 0);
}

/// Moves every lease's expiry into the past, as if its server stopped renewing.
async fn pg_expire_leases(db: &Database) {
    db.run(|c| async move { c.execute("UPDATE quota_leases SET expires_at = now() - interval '1 second'", &[]).await })
        .await
        .unwrap();
}

fn home_on(q: &Arc<UserQuota>) -> Arc<Home> {
    let settings = HomeSettings { fsync: false, partial_expiry: Duration::from_secs(3600) };
    Arc::new(Home::new(Arc::new(MemStorage::new()), Arc::clone(q), settings))
}

fn spec(size: Option<u64>) -> UploadSpec {
    UploadSpec { size, overwrite: true, resumable: false, algo: HashAlgo::Sha256, ..UploadSpec::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_through_two_homes_are_refused_past_the_shared_quota() {
    let Some(pg) = Postgres::start().unwrap() else { return };
    let (a, b) = two_servers(&pg);
    let (qa, qb) = (quota_on(&a, 100_000, Some(50)).await, quota_on(&b, 100_000, Some(50)).await);
    let (ha, hb) = (home_on(&qa), home_on(&qb));

    // A told size: reserved whole at the start, on A; B cannot start one as big.
    let mut up = ha.begin_upload(&VirtualPath::parse("/one").unwrap(), spec(Some(60_000))).await.unwrap();
    let refused = hb.begin_upload(&VirtualPath::parse("/two").unwrap(), spec(Some(60_000))).await;
    assert!(matches!(refused, Err(HomeError::Quota(_))), "{:?}", refused.err());
    up.write(Bytes::from(vec![1u8; 60_000])).await.unwrap();
    up.commit(None).await.unwrap();

    // A size not told (as SFTP and FTP write): refused on B once past what is left.
    let mut up = hb.begin_upload(&VirtualPath::parse("/three").unwrap(), spec(None)).await.unwrap();
    let mut written = 0u64;
    let err = loop {
        match up.write(Bytes::from(vec![2u8; 4096])).await {
            Ok(()) => written += 4096,
            Err(e) => break e,
        }
        assert!(written < 100_000, "never past the quota");
    };
    assert!(matches!(err, HomeError::Quota(_)), "{err}");
    assert!(written <= 40_000 && written > 30_000, "{written}");
    up.abort().await;
    let u = qa.usage();
    assert_eq!((u.used, u.reserved), (60_000, 0), "the aborted upload is gone from A's view too");
    assert_eq!(u.files, 1);
}

/// Alice's home as the server on `db` opens it: shared quota and claims,
/// over the storage both servers share.
async fn shared_home(db: &Arc<Database>, storage: &Arc<dyn Storage>) -> Arc<Home> {
    let quota = quota_on(db, 1 << 30, None).await;
    let settings = HomeSettings { fsync: false, partial_expiry: Duration::from_secs(3600) };
    let home = Home::new(Arc::clone(storage), quota, settings);
    Arc::new(home.with_shared_claims(PgClaimLedger::start(Arc::clone(db)), "alice"))
}

fn resumable(size: u64) -> UploadSpec {
    UploadSpec { resumable: true, ..spec(Some(size)) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_through_one_server_takes_the_upload_over_from_the_other() {
    let Some(pg) = Postgres::start().unwrap() else { return };
    let (a, b) = two_servers(&pg);
    let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
    let (ha, hb) = (shared_home(&a, &storage).await, shared_home(&b, &storage).await);
    let path = VirtualPath::parse("/big").unwrap();
    let data: Vec<u8> = (0..3u32 << 18).map(|i| (i % 251) as u8).collect();
    let half = data.len() / 2;

    let mut on_a = ha.begin_upload(&path, resumable(data.len() as u64)).await.unwrap();
    on_a.write(Bytes::copy_from_slice(&data[..half])).await.unwrap();
    // The client's connection to A went silent; it resumes through B.
    let id = on_a.id().to_string();
    let resume = UploadSpec { offset: half as u64, upload_id: Some(id.clone()), ..resumable(data.len() as u64) };
    let mut on_b = hb.begin_upload(&path, resume.clone()).await.unwrap();
    on_b.write(Bytes::copy_from_slice(&data[half..])).await.unwrap();
    on_b.commit(None).await.unwrap();
    // A learns at its next check, at the latest before a commit: it never
    // commits over the newer writer.
    let err = on_a.commit(None).await.unwrap_err();
    assert!(matches!(err, HomeError::TakenOver(ref i) if *i == id), "{err}");
    let read = ha.open_download(&path, 0).await.unwrap().read_at(0, data.len()).await.unwrap();
    assert_eq!(read, data, "the file B committed is whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_upload_through_one_server_leaves_the_others_partial_alone() {
    let Some(pg) = Postgres::start().unwrap() else { return };
    let (a, b) = two_servers(&pg);
    let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
    let (ha, hb) = (shared_home(&a, &storage).await, shared_home(&b, &storage).await);
    let path = VirtualPath::parse("/same").unwrap();

    let mut on_a = ha.begin_upload(&path, resumable(8)).await.unwrap();
    on_a.write(Bytes::from_static(b"aaaa")).await.unwrap();
    // A new upload of the same path through B starts over from old partials,
    // but only from those no server is writing.
    let mut on_b = hb.begin_upload(&path, spec(Some(4))).await.unwrap();
    on_b.write(Bytes::from_static(b"bbbb")).await.unwrap();
    on_b.commit(None).await.unwrap();
    on_a.write(Bytes::from_static(b"aaaa")).await.unwrap();
    on_a.commit(None).await.unwrap();
    assert_eq!(ha.stat(&path).await.unwrap().size, 8, "A's upload, committed last, is whole");
}
