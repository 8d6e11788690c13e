//! Issue 12: the quota counts entries, not only bytes. A user with a 1 MiB
//! quota made 20,000 directories and empty files while `df` said 0 B used.
//! Through the real binary: `ferry user add --max-files`, then directories,
//! empty files, `mkdir -p` chains and many sessions at once all stop at the
//! limit, `df` shows the count, and removing entries gives room back.

use std::path::PathBuf;
use std::process::Command;

use ferry_client::{ClientError, ErrorCode, Session};
use ferry_testkit::{ServerProcess, add_user_cli};

const LIMIT: u64 = 40;

fn ferry() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

fn refused_for_files(e: &ClientError) -> bool {
    matches!(e, ClientError::Server(w) if w.code == ErrorCode::QuotaExceeded && w.message.contains("files"))
}

async fn login(server: &ServerProcess) -> Session {
    let remote = ferry_client::Remote::parse(&format!("mallory@127.0.0.1:{}", server.port())).unwrap();
    let opts = ferry_client::ConnectOptions { insecure_plaintext: true, ..Default::default() };
    ferry_client::Client::connect(&remote, &opts).await.unwrap().login("pw").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn entry_flood_of_dirs_empty_files_and_deep_mkdir_stops_at_the_file_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let limit = LIMIT.to_string();
    add_user_cli(&ferry(), &data, "mallory", "pw", &["--quota", "1MiB", "--max-files", &limit]).unwrap();
    let server = ServerProcess::spawn(&ferry(), &data, &["--insecure-plaintext"]).unwrap();
    let mut s = login(&server).await;
    let empty = tmp.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let opts = ferry_client::PutOptions::default();

    // One way: directories and empty files, alternately, until refused.
    let mut made = 0u64;
    for i in 0..10 * LIMIT {
        let r = if i % 2 == 0 {
            s.mkdir(&format!("d{i}"), false).await
        } else {
            s.put_file(&empty, &format!("f{i}"), &opts, &ferry_client::NoProgress).await.map(drop)
        };
        match r {
            Ok(()) => made += 1,
            Err(e) if refused_for_files(&e) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(made, LIMIT, "exactly the limit, then refused");
    let df = s.df().await.unwrap();
    assert_eq!((df.files, df.max_files, df.used), (LIMIT, Some(LIMIT), 0), "{df:?}");

    // Another: a deep `mkdir -p` after freeing a few entries stops at the limit too.
    for i in [0, 2, 4] {
        s.rmdir(&format!("d{i}")).await.unwrap();
    }
    let deep = (0..10).map(|i| format!("x{i}")).collect::<Vec<_>>().join("/");
    let e = s.mkdir(&deep, true).await.unwrap_err();
    assert!(refused_for_files(&e), "{e}");
    s.mkdir("x0/x1/x2", true).await.unwrap();
    assert_eq!(s.df().await.unwrap().files, LIMIT);
    s.rm("x0", true).await.unwrap();
    assert_eq!(s.df().await.unwrap().files, LIMIT - 3);

    // A third: many sessions at once never pass the limit together.
    let mut tasks = Vec::new();
    for t in 0..6 {
        let mut s = login(&server).await;
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            for i in 0..20 {
                if s.mkdir(&format!("p{t}_{i}"), false).await.is_ok() {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut won = 0;
    for t in tasks {
        won += t.await.unwrap();
    }
    assert_eq!(won, 3, "three free entries, shared by six sessions");
    assert_eq!(s.df().await.unwrap().files, LIMIT);

    // `ferry df` shows the count and the limit; a restart rescans the same count.
    let kh = tmp.path().join("kh");
    let remote = format!("mallory@127.0.0.1:{}", server.port());
    let out = Command::new(ferry())
        .args(["df", &remote, "--insecure-plaintext", "--known-hosts"])
        .arg(&kh)
        .env("FERRY_PASSWORD", "pw")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("max files") && text.contains(&format!("{LIMIT}")), "{text}");
}
