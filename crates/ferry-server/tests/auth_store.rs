//! The SQLite user store: round trip, two handles on one file, file mode,
//! schema version, and no password on disk. The PostgreSQL store (issue 16):
//! the same round trip on a real PostgreSQL, two servers' handles, the
//! shared server secret and the schema check (skipped without PostgreSQL).

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::sync::Arc;

use ferry_proto::scram::{MIN_ITERATIONS, Verifier};
use ferry_server::auth::admin::new_user;
use ferry_server::auth::{
    AuthorizedKey, MemoryUserStore, PgUserStore, SqliteUserStore, StoreError, UserRecord, UserStore, UsernameError,
};
use ferry_server::pg::{Database, PgError};

const PASSWORD: &str = "correct horse battery staple";

fn verifier(password: &str) -> Verifier {
    Verifier::new(password, b"0123456789abcdef", MIN_ITERATIONS).unwrap()
}

fn record(name: &str) -> UserRecord {
    UserRecord {
        name: name.to_owned(),
        verifier: verifier(PASSWORD),
        quota_bytes: Some(10 << 30),
        allow_exec: true,
        home: Some(PathBuf::from("/srv/ferry/homes/alice")),
        created: 1_700_000_000,
        max_files: Some(5000),
    }
}

/// The same checks for any store.
fn round_trip(store: &dyn UserStore) {
    assert!(store.get("alice").unwrap().is_none());
    store.add(record("alice")).unwrap();
    store.add(new_user("bob", verifier("other"))).unwrap();
    assert_eq!(store.get("alice").unwrap(), Some(record("alice")));

    let names: Vec<_> = store.list().unwrap().into_iter().map(|u| u.name).collect();
    assert_eq!(names, ["alice", "bob"]);

    assert!(matches!(
        store.add(record("alice")),
        Err(StoreError::AlreadyExists(n)) if n == "alice"
    ));
    assert!(matches!(store.add(record("Bad Name")), Err(StoreError::InvalidName(UsernameError::BadChar))));

    store.set_verifier("alice", verifier("new")).unwrap();
    store.set_quota("alice", None).unwrap();
    store.set_allow_exec("alice", false).unwrap();
    let alice = store.get("alice").unwrap().unwrap();
    assert_eq!(alice.verifier, verifier("new"));
    assert_eq!(alice.quota_bytes, None);
    assert!(!alice.allow_exec);
    assert_eq!(alice.created, 1_700_000_000);

    let bob = store.get("bob").unwrap().unwrap();
    assert_eq!(bob.quota_bytes, None);
    assert_eq!(bob.home, None);
    assert!(!bob.allow_exec);

    for result in [
        store.set_verifier("carol", verifier("x")),
        store.set_quota("carol", Some(1)),
        store.set_allow_exec("carol", true),
        store.delete("carol"),
    ] {
        assert!(matches!(result, Err(StoreError::NotFound(n)) if n == "carol"));
    }

    store.delete("alice").unwrap();
    assert!(store.get("alice").unwrap().is_none());
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn memory_store_round_trip() {
    round_trip(&MemoryUserStore::new());
}

#[test]
fn sqlite_store_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteUserStore::open(&dir.path().join("users.db")).unwrap();
    round_trip(&store);
}

#[test]
fn sqlite_store_is_object_safe_and_shared() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn UserStore> = Arc::new(SqliteUserStore::open(&dir.path().join("users.db")).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || store.add(new_user(&format!("u{i}"), verifier("p"))))
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    assert_eq!(store.list().unwrap().len(), 4);
}

#[test]
fn sqlite_quota_above_i64_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteUserStore::open(&dir.path().join("users.db")).unwrap();
    let mut rec = record("alice");
    rec.quota_bytes = Some(u64::MAX);
    assert!(matches!(store.add(rec), Err(StoreError::InvalidValue { .. })));
    store.add(record("alice")).unwrap();
    assert!(matches!(store.set_quota("alice", Some(u64::MAX)), Err(StoreError::InvalidValue { .. })));
    store.set_quota("alice", Some(i64::MAX as u64)).unwrap();
}

/// The server keeps its handle open while an admin command opens another on
/// the same file; each sees the other's writes.
#[test]
fn two_handles_on_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.db");
    let server = SqliteUserStore::open(&path).unwrap();
    let admin = SqliteUserStore::open(&path).unwrap();

    admin.add(record("alice")).unwrap();
    assert_eq!(server.get("alice").unwrap(), Some(record("alice")));

    server.set_quota("alice", Some(5)).unwrap();
    assert_eq!(admin.get("alice").unwrap().unwrap().quota_bytes, Some(5));

    assert!(matches!(server.add(record("alice")), Err(StoreError::AlreadyExists(_))));

    // Writers from both handles at once wait for each other (busy timeout)
    // instead of failing with SQLITE_BUSY.
    let server = Arc::new(server);
    let admin = Arc::new(admin);
    let mut threads = Vec::new();
    for (h, store) in [Arc::clone(&server), Arc::clone(&admin)].into_iter().enumerate() {
        threads.push(std::thread::spawn(move || {
            for i in 0..25 {
                store.add(new_user(&format!("h{h}-{i}"), verifier("p")))?;
                store.set_allow_exec("alice", i % 2 == 0)?;
            }
            Ok::<_, StoreError>(())
        }));
    }
    for t in threads {
        t.join().unwrap().unwrap();
    }
    assert_eq!(server.list().unwrap().len(), 51);

    admin.delete("alice").unwrap();
    assert!(server.get("alice").unwrap().is_none());

    // A third open after the fact (a new admin command) sees it all too.
    drop((server, admin));
    assert_eq!(SqliteUserStore::open(&path).unwrap().list().unwrap().len(), 50);
}

#[test]
fn db_file_is_private_and_holds_no_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.db");
    let store = SqliteUserStore::open(&path).unwrap();
    store.add(record("alice")).unwrap();

    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    let mut bytes = std::fs::read(&path).unwrap();
    if let Ok(wal) = std::fs::read(dir.path().join("users.db-wal")) {
        bytes.extend(wal);
    }
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains(PASSWORD));
    assert!(text.contains("SCRAM-SHA-256$4096:"));
}

#[test]
fn schema_version_is_set_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.db");
    drop(SqliteUserStore::open(&path).unwrap());

    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 3);
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");

    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    assert!(matches!(SqliteUserStore::open(&path), Err(StoreError::UnsupportedSchema { found: 99, supported: 3 })));
}

/// Issue 12: a version-1 database (before the per-user file limit) opens,
/// is migrated, keeps its users, and takes the new setting.
#[test]
fn version_1_database_is_migrated_and_keeps_its_users() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE users (name TEXT PRIMARY KEY NOT NULL, verifier TEXT NOT NULL, quota_bytes INTEGER,
         allow_exec INTEGER NOT NULL DEFAULT 0, home TEXT, created INTEGER NOT NULL); PRAGMA user_version = 1;",
    )
    .unwrap();
    conn.execute("INSERT INTO users VALUES ('old', ?1, 100, 1, NULL, 5)", [verifier(PASSWORD).to_string()]).unwrap();
    drop(conn);
    let store = SqliteUserStore::open(&path).unwrap();
    let old = store.get("old").unwrap().unwrap();
    assert_eq!((old.quota_bytes, old.allow_exec, old.max_files), (Some(100), true, None));
    store.set_max_files("old", Some(7)).unwrap();
    assert_eq!(store.get("old").unwrap().unwrap().max_files, Some(7));
    store.set_max_files("old", Some(u64::MAX)).unwrap();
    assert_eq!(store.get("old").unwrap().unwrap().max_files, Some(u64::MAX), "unlimited survives the i64 column");
}

/// Issue 14: a version-1 database (no key table) is migrated in place, its
/// users kept, and keys work after.
#[test]
fn v1_database_migrates_to_ssh_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.db");
    let store = SqliteUserStore::open(&path).unwrap();
    store.add(record("alice")).unwrap();
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("DROP TABLE ssh_keys; PRAGMA user_version = 1;").unwrap();
    drop(conn);

    let store = SqliteUserStore::open(&path).unwrap();
    assert!(store.get("alice").unwrap().is_some());
    let key = AuthorizedKey {
        fingerprint: "SHA256:abc".into(),
        key: "ssh-ed25519 AAAA".into(),
        comment: "c".into(),
        added: 1,
    };
    store.add_key("alice", key.clone()).unwrap();
    assert!(matches!(store.add_key("alice", key.clone()), Err(StoreError::AlreadyExists(_))));
    assert!(matches!(store.add_key("bob", key.clone()), Err(StoreError::NotFound(_))));
    assert_eq!(store.keys("alice").unwrap(), vec![key]);
    assert!(matches!(store.delete_key("alice", "SHA256:nope"), Err(StoreError::NotFound(_))));
    store.delete_key("alice", "SHA256:abc").unwrap();
    assert!(store.keys("alice").unwrap().is_empty());
}

#[test]
fn corrupt_rows_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.db");
    let store = SqliteUserStore::open(&path).unwrap();
    store.add(record("alice")).unwrap();

    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE users SET verifier = 'plaintext?'", []).unwrap();
    let err = store.get("alice").unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { ref name, .. } if name == "alice"));
    // The message names the user and the problem, not the stored value.
    assert!(!err.to_string().contains("plaintext?"), "{err}");
}

/// SSH keys: added in order, duplicates and unknown users refused, removed.
fn keys_round_trip(store: &dyn UserStore) {
    store.add(record("kim")).unwrap();
    let key = |fp: &str, added| AuthorizedKey {
        fingerprint: fp.into(),
        key: format!("ssh-ed25519 AAAA{fp}"),
        comment: "c".into(),
        added,
    };
    store.add_key("kim", key("SHA256:b", 1)).unwrap();
    store.add_key("kim", key("SHA256:a", 1)).unwrap();
    assert!(matches!(store.add_key("kim", key("SHA256:a", 2)), Err(StoreError::AlreadyExists(_))));
    assert!(matches!(store.add_key("nobody", key("SHA256:c", 1)), Err(StoreError::NotFound(_))));
    assert_eq!(store.keys("kim").unwrap(), vec![key("SHA256:b", 1), key("SHA256:a", 1)], "in the order added");
    assert!(matches!(store.delete_key("kim", "SHA256:nope"), Err(StoreError::NotFound(_))));
    store.delete_key("kim", "SHA256:b").unwrap();
    assert_eq!(store.keys("kim").unwrap(), vec![key("SHA256:a", 1)]);
    // A user's keys go with the user.
    store.delete("kim").unwrap();
    store.add(record("kim")).unwrap();
    assert!(store.keys("kim").unwrap().is_empty());
    store.delete("kim").unwrap();
}

/// Issue 16: the PostgreSQL store passes the same round trip; two handles
/// (two servers) see each other's writes at once, including from many
/// threads; every server reads the same server secret; a database migrated
/// by a newer ferry is refused, naming the database.
#[test]
fn postgres_store_round_trip_two_servers_secret_and_schema() {
    let Some(pg) = ferry_testkit::Postgres::start().unwrap() else { return };
    let a = Arc::new(Database::open(&pg.url).unwrap());
    let b = Arc::new(Database::open(&pg.url).unwrap());
    let server_a = PgUserStore::new(Arc::clone(&a));
    let server_b: Arc<dyn UserStore> = Arc::new(PgUserStore::new(Arc::clone(&b)));
    round_trip(&server_a);
    keys_round_trip(&server_a);

    server_b.add(record("alice")).unwrap();
    assert_eq!(server_a.get("alice").unwrap(), Some(record("alice")));
    server_a.set_max_files("alice", Some(u64::MAX)).unwrap();
    assert_eq!(server_b.get("alice").unwrap().unwrap().max_files, Some(u64::MAX), "unlimited survives BIGINT");
    let mut too_big = record("zed");
    too_big.quota_bytes = Some(u64::MAX);
    assert!(matches!(server_b.add(too_big), Err(StoreError::InvalidValue { .. })));

    let threads: Vec<_> = (0..8)
        .map(|i| {
            let store = Arc::clone(&server_b);
            std::thread::spawn(move || store.add(new_user(&format!("t{i}"), verifier("p"))))
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    assert_eq!(server_a.list().unwrap().len(), 10, "bob, alice and eight more");

    // Connections ended under the store (a database restart, an
    // administrator) are reopened: no call fails for it.
    let ended = b
        .block(|c| async move {
            c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = 'ferry' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
        })
        .unwrap();
    assert!(ended >= 4, "A's four connections were ended ({ended})");
    for _ in 0..8 {
        assert_eq!(server_a.get("alice").unwrap().map(|u| u.name).as_deref(), Some("alice"));
    }

    let secret = ferry_server::auth::postgres::shared_server_secret(&a).unwrap();
    assert_eq!(ferry_server::auth::postgres::shared_server_secret(&b).unwrap(), secret);

    // A third open finds the schema in place; a newer one is refused.
    drop(Database::open(&pg.url).unwrap());
    a.block(
        |c| async move { c.batch_execute("INSERT INTO ferry_migrations (version, name) VALUES (99, 'future')").await },
    )
    .unwrap();
    let err = Database::open(&pg.url).unwrap_err();
    assert!(matches!(err, PgError::NewerSchema { found: 99, .. }), "{err}");
    assert!(err.to_string().contains("PostgreSQL database"), "{err}");
}

/// Issue 16: two servers' throttles on one database count together. A
/// flood through one bans the address on the other; a success forgives only
/// that pair's failures; names with any byte are keys; IPv6 counts by /64;
/// a ban ends on the database's clock.
#[test]
fn postgres_failure_counts_are_shared_by_servers() {
    use ferry_server::auth::postgres::PgFailureCounts;
    use ferry_server::auth::{Decision, Throttle, ThrottleConfig};
    use std::net::IpAddr;
    use std::time::{Duration, Instant};

    let Some(pg) = ferry_testkit::Postgres::start().unwrap() else { return };
    let config = ThrottleConfig { free_failures: 2, ban_after: 6, ..ThrottleConfig::default() };
    let throttle = |config: &ThrottleConfig| {
        let db = Arc::new(Database::open(&pg.url).unwrap());
        Throttle::with_counts(config.clone(), Arc::new(PgFailureCounts::new(db)))
    };
    let (a, b) = (throttle(&config), throttle(&config));
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let now = Instant::now();
    let attacker = ip("192.0.2.1");

    // Failures alternate between the servers and add up.
    for i in 0..2 {
        [&a, &b][i % 2].record_failure("alice", attacker, now);
    }
    assert_eq!(b.check("alice", attacker, now).unwrap(), Decision::Delay(Duration::from_millis(250)));
    // A success on A forgives the pair's failures for B too.
    a.record_success("alice", attacker, now);
    assert_eq!(b.check("alice", attacker, now).unwrap(), Decision::Allow);

    // A flood through A (under many names, one with a NUL) bans on B.
    for i in 0..6 {
        a.record_failure(&format!("u{i}\0x"), attacker, now);
    }
    assert!(matches!(b.check("bob", attacker, now).unwrap(), Decision::Banned { .. }));
    assert!(matches!(a.check("bob", attacker, now).unwrap(), Decision::Banned { .. }));
    // Other addresses are not banned; the per-user count stays a delay.
    assert_eq!(b.check("bob", ip("198.51.100.7"), now).unwrap(), Decision::Allow);

    // IPv6 by /64, across servers.
    for i in 0..6u16 {
        a.record_failure("eve", std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, i, i, i, i).into(), now);
    }
    assert!(matches!(b.check("x", ip("2001:db8:0:1::ffff"), now).unwrap(), Decision::Banned { .. }));
    assert_eq!(b.check("x", ip("2001:db8:0:2::1"), now).unwrap(), Decision::Allow);

    // A short ban ends on the database's clock (bounded wait).
    let quick = ThrottleConfig { ban_after: 1, ban_for: Duration::from_millis(300), ..config };
    let (qa, qb) = (throttle(&quick), throttle(&quick));
    qa.record_failure("carol", ip("203.0.113.9"), now);
    assert!(matches!(qb.check("carol", ip("203.0.113.9"), now).unwrap(), Decision::Banned { .. }));
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(qb.check("carol", ip("203.0.113.9"), now).unwrap(), Decision::Banned { .. }) {
        assert!(Instant::now() < deadline, "the ban did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
}
