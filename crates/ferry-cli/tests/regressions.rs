//! Regression tests, each named after what it caught.

use ferry_testkit::TestServer;

/// Found by the Python client's probe: `ls` pages were cut every 512
/// entries, so 300 long names made a header over the 64 KiB cap and the
/// session died with bad_frame.
#[tokio::test]
async fn ls_pages_of_long_names_stay_under_the_header_cap() {
    let server = TestServer::start().await.unwrap();
    server.add_user("alice", "pw", None, false).unwrap();
    let home = server.home("alice");
    let mut expected = Vec::new();
    for i in 0..1200 {
        let name = format!("{i:05}-{}", "n".repeat(240));
        std::fs::write(home.join(&name), b"").unwrap();
        expected.push(name);
    }
    let mut session = server.login("alice", "pw").await.unwrap();
    let mut pages = 0;
    let mut names = Vec::new();
    session
        .ls_pages(None, |page| {
            pages += 1;
            names.extend(page.into_iter().map(|e| e.name));
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(names, expected);
    assert!(pages > 1, "a large listing comes in several pages");
    assert_eq!(session.pwd().await.unwrap(), "/", "the session survived");
}

/// Found by the Python client's probe: a `put` with `wait` refused before
/// `ready` (the target exists) left client and server waiting for each other.
#[tokio::test]
async fn refused_wait_put_answers_and_keeps_the_session() {
    let server = TestServer::start().await.unwrap();
    server.add_user("alice", "pw", None, false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("big.bin");
    ferry_testkit::write_random_file(&local, 3 * 1024 * 1024, 1).unwrap();
    let mut session = server.login("alice", "pw").await.unwrap();
    let opts = ferry_client::PutOptions::default();
    session.put_file(&local, "big.bin", &opts, &ferry_client::NoProgress).await.unwrap();
    let again = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        session.put_file(&local, "big.bin", &opts, &ferry_client::NoProgress),
    )
    .await
    .expect("answered, not hung");
    assert_eq!(again.unwrap_err().code(), Some(ferry_client::ErrorCode::AlreadyExists));
    assert_eq!(session.pwd().await.unwrap(), "/", "the stream is still framed");
}

/// Found by the load harness: every session opened its own home and
/// partial-upload handles (3 descriptors a session), so ~6,600 sessions
/// exhausted a 20,000 descriptor limit. Sessions of one user now share them.
#[tokio::test]
async fn sessions_of_one_user_share_their_home_handles() {
    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
    }
    let server = TestServer::start_plaintext().await.unwrap();
    server.add_user("alice", "pw", None, false).unwrap();
    let first = server.login("alice", "pw").await.unwrap();
    let before = open_fds();
    let mut sessions = Vec::new();
    for _ in 0..50 {
        let mut s = server.login("alice", "pw").await.unwrap();
        s.pwd().await.unwrap();
        sessions.push(s);
    }
    // In this process: the client's socket and the server's, per session.
    let added = open_fds() - before;
    assert!(added <= 50 * 2 + 5, "{added} descriptors for 50 sessions");
    drop(first);
}

/// A client that goes silent in the middle of an upload body is cut after
/// the idle timeout (it used to hold its session, and the upload id, forever).
#[tokio::test]
async fn upload_stalled_mid_body_is_cut_after_the_idle_timeout() {
    use ferry_proto::Request;
    let server = TestServer::start_with(|c| {
        c.insecure_plaintext = true;
        c.limits.idle_timeout_secs = 1;
    })
    .await
    .unwrap();
    server.add_user("alice", "pw", None, false).unwrap();
    let mut conn = server.login_raw("alice", "pw").await.unwrap();
    // Announce 1 MiB, send 1 KiB, then nothing.
    let put = Request::Put {
        path: "stall.bin".into(),
        size: 1 << 20,
        offset: 0,
        upload_id: None,
        sha256: None,
        overwrite: false,
        wait: false,
        algo: None,
        hash: None,
    };
    conn.queue_header(&put.to_header(4, 1 << 20)).unwrap();
    conn.write_body(&[7u8; 1024]).await.unwrap();
    conn.flush().await.unwrap();
    let started = std::time::Instant::now();
    let end = tokio::time::timeout(std::time::Duration::from_secs(20), conn.read_header()).await.expect("cut in time");
    assert!(!matches!(end, Ok(Some(ref h)) if h.fields["ok"] == true), "{end:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    assert!(!server.home("alice").join("stall.bin").exists(), "nothing under the final name");
}

/// Found by the soak: a client gone right after `ready` (a `wait` upload)
/// left a new partial's sidecar on disk that the live quota never counted,
/// so `df` drifted below the disk until the next restart's rescan.
#[tokio::test]
async fn wait_upload_dropped_after_ready_keeps_the_quota_exact() {
    use ferry_proto::Request;
    let server = TestServer::start_with(|c| c.insecure_plaintext = true).await.unwrap();
    server.add_user("alice", "pw", Some(64 << 20), false).unwrap();
    let put = Request::Put {
        path: "gone.bin".into(),
        size: 1 << 20,
        offset: 0,
        upload_id: None,
        sha256: None,
        overwrite: false,
        wait: true,
        algo: None,
        hash: None,
    };
    for round in 0..3u64 {
        let mut conn = server.login_raw("alice", "pw").await.unwrap();
        conn.send(&put.to_header(10 + round, 0)).await.unwrap();
        let ready = conn.read_header().await.unwrap().unwrap();
        assert_eq!(ready.fields["ready"], true, "{ready:?}");
        drop(conn);
    }
    let mut session = server.login("alice", "pw").await.unwrap();
    // The server notices each dropped connection on its own time: wait (bounded).
    let mut df = session.df().await.unwrap();
    for _ in 0..100 {
        if df.reserved == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        df = session.df().await.unwrap();
    }
    assert_eq!(df.reserved, 0, "{df:?}");
    let home = server.home("alice");
    assert!(!files_under(&home).is_empty(), "the partials are on disk");
    assert_eq!(df.used, bytes_under(&home), "df counts every data byte the partials left");
}

/// Bytes of the regular files under `dir`, partials included; the server's
/// own bookkeeping (the partials' `.json` sidecars) is not the user's data
/// and is not charged (issue 13: the largest upload that fits is `free`).
fn bytes_under(dir: &std::path::Path) -> u64 {
    files_under(dir).iter().filter(|(p, _)| p.extension().is_none_or(|e| e != "json")).map(|(_, len)| len).sum()
}

/// Every regular file under `dir`, with its length.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = vec![];
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() { dirs.push(e.path()) } else { out.push((e.path(), m.len())) }
        }
    }
    out
}

/// Found by the soak: partials of uploads that were cut and never resumed
/// piled up until they expired and filled the quota, so later uploads of the
/// same names were refused. A fresh upload of a path now replaces them.
#[tokio::test]
async fn fresh_upload_replaces_abandoned_partials_of_its_path() {
    use ferry_proto::Request;
    let server = TestServer::start_with(|c| c.insecure_plaintext = true).await.unwrap();
    let quota = 8 << 20;
    server.add_user("alice", "pw", Some(quota), false).unwrap();
    let cut = |n: u64| Request::Put {
        path: format!("f{}.bin", n % 2),
        size: 3 << 20,
        offset: 0,
        upload_id: None,
        sha256: None,
        overwrite: true,
        wait: false,
        algo: None,
        hash: None,
    };
    let partial_dir = server.home("alice").join(".ferry-partial");
    let parts = || -> std::collections::BTreeSet<std::path::PathBuf> {
        let Ok(dir) = std::fs::read_dir(&partial_dir) else { return Default::default() };
        dir.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "part")).collect()
    };
    let mut session = server.login("alice", "pw").await.unwrap();
    // Two cut uploads of f0.bin and one of f1.bin, each leaving 1 MiB.
    let mut before = parts();
    for n in [0, 2, 1] {
        let mut conn = server.login_raw("alice", "pw").await.unwrap();
        conn.queue_header(&cut(n).to_header(10, 3 << 20)).unwrap();
        conn.write_body(&vec![1u8; 1 << 20]).await.unwrap();
        conn.flush().await.unwrap();
        drop(conn);
        // Wait (bounded) until the server has settled this cut: a new partial
        // holding the whole MiB, and nothing reserved.
        for _ in 0..400 {
            let now = parts();
            let landed = now.difference(&before).any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() == 1 << 20));
            if landed && session.df().await.unwrap().reserved == 0 {
                before = now;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }
    let partials = || std::fs::read_dir(&partial_dir).unwrap().count();
    assert_eq!(partials(), 4, "the second cut of f0.bin replaced the first: two partials and their sidecars");
    // 6 MiB more would not fit beside the 2 MiB of partials: it fits because
    // the fresh upload of f0.bin frees the abandoned one of its path.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("big.bin");
    ferry_testkit::write_random_file(&local, 6 << 20, 3).unwrap();
    let opts = ferry_client::PutOptions { overwrite: true, ..Default::default() };
    session.put_file(&local, "f0.bin", &opts, &ferry_client::NoProgress).await.unwrap();
    assert_eq!(partials(), 2, "only the partial of f1.bin is left");
    let df = session.df().await.unwrap();
    assert_eq!(df.used, bytes_under(&server.home("alice")));
    assert_eq!(
        ferry_testkit::sha256_file(&server.home("alice").join("f0.bin")).unwrap(),
        ferry_testkit::sha256_file(&local).unwrap()
    );
}

/// Found by the soak: sessions of one user replacing and removing the same
/// names at once made the quota drift from the disk. A file removed by one
/// session before another had counted its upload in took the usage below
/// zero for a moment, which was clamped, and those bytes were counted twice
/// from then on (the user could no longer use all of the quota); a stat and
/// the rename or unlink it measured for could also interleave.
#[tokio::test]
async fn concurrent_overwrites_and_removals_of_the_same_names_keep_the_quota_exact() {
    let server = TestServer::start_with(|c| c.insecure_plaintext = true).await.unwrap();
    server.add_user("alice", "pw", Some(1 << 30), false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sizes = [1_000u64, 40_000, 300_000, 700_000];
    for (i, size) in sizes.iter().enumerate() {
        ferry_testkit::write_random_file(&dir.path().join(format!("l{i}")), *size, i as u64).unwrap();
    }
    let mut tasks = Vec::new();
    for worker in 0..6u64 {
        let mut s = server.login("alice", "pw").await.unwrap();
        let local = dir.path().to_path_buf();
        tasks.push(tokio::spawn(async move {
            let opts = ferry_client::PutOptions { overwrite: true, ..Default::default() };
            for step in 0..150u64 {
                let pick = (worker * 7 + step * 13) % 10;
                let name = format!("n{}", (worker + step) % 3);
                let other = format!("n{}", (worker + step + 1) % 3);
                // Refusals (not found, a race lost) are expected: only the accounting matters.
                let _ = match pick {
                    0..=4 => {
                        let l = local.join(format!("l{}", (step + worker) % 4));
                        s.put_file(&l, &name, &opts, &ferry_client::NoProgress).await.map(|_| ())
                    }
                    5..=7 => s.mv(&name, &other, true).await,
                    _ => s.rm(&name, false).await,
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut session = server.login("alice", "pw").await.unwrap();
    let df = session.df().await.unwrap();
    assert_eq!(df.reserved, 0);
    let listing = files_under(&server.home("alice"));
    assert_eq!(df.used, bytes_under(&server.home("alice")), "df equals the bytes on disk: {listing:?}");
}

/// Found by the soak: a connection lost after a whole upload body but before
/// its `put_end` left a complete partial on disk that the quota never
/// counted (the reservation was dropped, not settled).
#[tokio::test]
async fn upload_cut_before_put_end_counts_its_partial() {
    use ferry_proto::Request;
    let server = TestServer::start_with(|c| c.insecure_plaintext = true).await.unwrap();
    server.add_user("alice", "pw", Some(64 << 20), false).unwrap();
    let size = 1u64 << 20;
    let put = Request::Put {
        path: "cut.bin".into(),
        size,
        offset: 0,
        upload_id: None,
        sha256: None,
        overwrite: false,
        wait: false,
        algo: None,
        hash: None,
    };
    let mut conn = server.login_raw("alice", "pw").await.unwrap();
    conn.queue_header(&put.to_header(10, size)).unwrap();
    conn.write_body(&vec![5u8; size as usize]).await.unwrap();
    conn.flush().await.unwrap();
    drop(conn);
    let part_len = || {
        files_under(&server.home("alice"))
            .into_iter()
            .filter(|(p, _)| p.extension().is_some_and(|e| e == "part"))
            .map(|(_, len)| len)
            .sum::<u64>()
    };
    let mut session = server.login("alice", "pw").await.unwrap();
    let mut df = session.df().await.unwrap();
    for _ in 0..200 {
        if part_len() == size && df.reserved == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        df = session.df().await.unwrap();
    }
    assert_eq!(part_len(), size, "the whole body is in the partial");
    assert_eq!(df.reserved, 0);
    assert_eq!(df.used, bytes_under(&server.home("alice")), "the partial is counted");
}

/// Found while chasing a soak client that never finished (that one was the
/// harness's own clock): the connect timeout covered only TCP, so a server
/// that accepts and then never speaks (a stuck or draining process) held the
/// client forever in the TLS handshake or the hello.
#[tokio::test]
async fn connect_gives_up_on_a_server_that_accepts_and_never_speaks() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        for _ in 0..2 {
            if let Ok((s, _)) = listener.accept().await {
                open.push(s);
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        drop(open);
    });
    for plaintext in [false, true] {
        let remote = ferry_client::Remote::parse(&format!("alice@127.0.0.1:{port}")).unwrap();
        let opts = ferry_client::ConnectOptions {
            insecure_plaintext: plaintext,
            connect_timeout: std::time::Duration::from_secs(1),
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), ferry_client::Client::connect(&remote, &opts))
            .await
            .expect("the client gives up by itself");
        assert!(r.is_err(), "plaintext={plaintext}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    }
    held.abort();
}

/// Issue 13: `df` tells the truth. With `free` bytes left, an upload of
/// exactly `free` bytes succeeds (the partial's bookkeeping is not charged),
/// one byte more is refused; by the streaming path and the small-file path.
#[tokio::test]
async fn an_upload_of_exactly_free_bytes_fits() {
    let server = TestServer::start_with(|c| c.insecure_plaintext = true).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = ferry_client::PutOptions::default();
    for (user, quota) in [("big", 1u64 << 20), ("small", 64 << 10)] {
        server.add_user(user, "pw", Some(quota), false).unwrap();
        let mut session = server.login(user, "pw").await.unwrap();
        assert_eq!(session.df().await.unwrap().free, Some(quota));
        let over = dir.path().join(format!("{user}-over.bin"));
        ferry_testkit::write_random_file(&over, quota + 1, 1).unwrap();
        let refused = session.put_file(&over, "over.bin", &opts, &ferry_client::NoProgress).await.unwrap_err();
        assert!(refused.to_string().contains("quota"), "{refused}");
        let exact = dir.path().join(format!("{user}-exact.bin"));
        ferry_testkit::write_random_file(&exact, quota, 2).unwrap();
        session.put_file(&exact, "exact.bin", &opts, &ferry_client::NoProgress).await.unwrap();
        let df = session.df().await.unwrap();
        assert_eq!((df.used, df.free, df.reserved), (quota, Some(0), 0), "{user}: {df:?}");
    }
}

/// Issue 13: a `put` whose header `sha256` differs from the data is
/// `checksum_mismatch` (it was `bad_request`), for small and large files,
/// and nothing is committed.
#[tokio::test]
async fn put_header_hash_that_differs_from_the_data_is_checksum_mismatch() {
    use ferry_proto::Request;
    use sha2::Digest;
    let server = TestServer::start_with(|c| c.insecure_plaintext = true).await.unwrap();
    server.add_user("alice", "pw", None, false).unwrap();
    let mut conn = server.login_raw("alice", "pw").await.unwrap();
    for (n, size) in [(1u64, 1000usize), (2, 600_000)] {
        let data = vec![n as u8; size];
        let right = hex::encode(sha2::Sha256::digest(&data));
        let put = Request::Put {
            path: format!("f{n}"),
            size: size as u64,
            offset: 0,
            upload_id: None,
            sha256: Some("0".repeat(64)),
            overwrite: false,
            wait: false,
            algo: None,
            hash: None,
        };
        conn.queue_header(&put.to_header(n, size as u64)).unwrap();
        conn.write_body(&data).await.unwrap();
        conn.send(&Request::PutEnd { sha256: Some(right), algo: None, hash: None }.to_header(n, 0)).await.unwrap();
        let answer = conn.read_header().await.unwrap().unwrap();
        assert_eq!(answer.fields["error"]["code"], "checksum_mismatch", "{answer:?}");
        assert!(!server.home("alice").join(format!("f{n}")).exists());
    }
}

/// Issue 13: the server's own answers respect the header cap. At the
/// documented minimum (1 KiB): `ls` of long names comes in pages that fit,
/// an error quoting a long path is shortened to fit, and every operation
/// works on long names; a path too long for any answer is refused up front.
#[tokio::test]
async fn every_operation_works_at_the_minimum_header_cap() {
    let server = TestServer::start_with(|c| {
        c.insecure_plaintext = true;
        c.limits.max_header_bytes = 1024;
    })
    .await
    .unwrap();
    server.add_user("alice", "pw", None, false).unwrap();
    let mut s = server.login("alice", "pw").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("f");
    ferry_testkit::write_random_file(&local, 300_000, 4).unwrap();
    let opts = ferry_client::PutOptions::default();
    let long = |c: char| c.to_string().repeat(240);
    s.mkdir(&long('d'), false).await.unwrap();
    s.cd(&long('d')).await.unwrap();
    assert_eq!(s.pwd().await.unwrap(), format!("/{}", long('d')));
    for c in ['a', 'b', 'c', '"'] {
        s.put_file(&local, &long(c), &opts, &ferry_client::NoProgress).await.unwrap();
    }
    let names: Vec<String> = s.ls(None).await.unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    s.stat(&long('"')).await.unwrap();
    s.mv(&long('a'), &long('e'), false).await.unwrap();
    let got = dir.path().join("g");
    s.get_file(&long('e'), &got, &ferry_client::GetOptions::default(), &ferry_client::NoProgress).await.unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&local).unwrap());
    s.rm(&long('e'), false).await.unwrap();
    // A missing long path: the error quotes it shortened, and the session lives on.
    let missing = format!("{}/{}", long('x'), long('y'));
    let e = s.stat(&missing).await.unwrap_err();
    assert!(e.to_string().contains("no such file") || e.to_string().contains("longer"), "{e}");
    // An error naming two long paths would not fit: it comes shortened.
    // (relative paths: the request itself must fit the cap too)
    let inside = format!("{}/{}/{}", long('x'), long('y'), "z".repeat(150));
    match s.mv(".", &inside, false).await.unwrap_err() {
        ferry_client::ClientError::Server(w) => {
            assert_eq!(w.code, ferry_client::ErrorCode::InvalidMove);
            assert!(w.message.ends_with('…'), "{}", w.message);
        }
        e => panic!("{e}"),
    }
    let too_long = format!("{}/{}/{}", long('x'), long('y'), long('z'));
    let e = s.mkdir(&too_long, true).await.unwrap_err();
    assert!(e.to_string().contains("longer than"), "{e}");
    assert_eq!(s.pwd().await.unwrap(), format!("/{}", long('d')));
}

/// Issue 13: listings show every name that exists. Names holding a tab, a
/// newline, a backslash or bytes that are not UTF-8 (made behind the
/// server's back) are listed in the escaped form, and that form stats,
/// downloads, renames and removes them.
#[tokio::test]
async fn names_with_control_characters_or_raw_bytes_are_listed_escaped_and_usable() {
    use std::os::unix::ffi::OsStrExt;
    let server = TestServer::start_with(|c| c.insecure_plaintext = true).await.unwrap();
    server.add_user("alice", "pw", None, false).unwrap();
    let mut s = server.login("alice", "pw").await.unwrap();
    let home = server.home("alice");
    let odd: [(&[u8], &str); 4] = [
        (b"tab\there", "tab\\x09here"),
        (b"new\nline", "new\\x0aline"),
        (b"raw\xffbyte", "raw\\xffbyte"),
        (b"back\\slash", "back\\\\slash"),
    ];
    for (i, (bytes, _)) in odd.iter().enumerate() {
        std::fs::write(home.join(std::ffi::OsStr::from_bytes(bytes)), vec![i as u8; 10 + i]).unwrap();
    }
    let mut names: Vec<String> = s.ls(None).await.unwrap().into_iter().map(|e| e.name).collect();
    names.sort();
    let mut want: Vec<String> = odd.iter().map(|(_, e)| e.to_string()).collect();
    want.sort();
    assert_eq!(names, want);
    let dir = tempfile::tempdir().unwrap();
    for (i, (bytes, escaped)) in odd.iter().enumerate() {
        assert_eq!(s.stat(escaped).await.unwrap().size, 10 + i as u64, "{escaped}");
        let local = dir.path().join(format!("got{i}"));
        s.get_file(escaped, &local, &ferry_client::GetOptions::default(), &ferry_client::NoProgress).await.unwrap();
        assert_eq!(std::fs::read(&local).unwrap(), vec![i as u8; 10 + i]);
        let renamed = format!("{escaped}.moved");
        s.mv(escaped, &renamed, false).await.unwrap();
        let mut on_disk = bytes.to_vec();
        on_disk.extend_from_slice(b".moved");
        assert!(home.join(std::ffi::OsStr::from_bytes(&on_disk)).exists(), "{renamed}");
        s.rm(&renamed, false).await.unwrap();
        assert!(!home.join(std::ffi::OsStr::from_bytes(&on_disk)).exists());
    }
    assert!(s.ls(None).await.unwrap().is_empty());
    // A raw control character is still refused; a lone backslash starts no escape.
    for bad in ["a\nb", "a\\b"] {
        let e = s.mkdir(bad, false).await.unwrap_err();
        assert!(e.to_string().contains("invalid name"), "{bad:?}: {e}");
    }
}

/// Found by profiling a TLS download: on AMD processors glibc copied each
/// TLS record with `rep movsb`, at a twentieth of the vector loop's speed
/// when the buffers lined up badly (`ferry_client::copy_tuning`). The real
/// binary restarts itself once with the tunable, keeping its process ID, and
/// leaves a tunable the caller set alone.
#[test]
fn the_binary_restarts_with_fast_copies_on_amd_only() {
    let ferry = std::path::PathBuf::from(env!("CARGO_BIN_EXE_ferry"));
    let amd = cfg!(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))
        && std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().contains("AuthenticAMD");
    let environ = |pid: u32| -> Vec<String> {
        let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        raw.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect()
    };
    let dir = tempfile::tempdir().unwrap();

    let mut server = ferry_testkit::ServerProcess::spawn(&ferry, &dir.path().join("a"), &["--no-sftp"]).unwrap();
    let env = environ(server.child.id());
    let tuned = env.iter().any(|v| v == "GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=0xffffffffff");
    assert_eq!(tuned, amd, "restarted with the tunable exactly on AMD: {env:?}");
    assert_eq!(env.iter().any(|v| v == "FERRY_COPY_TUNED=1"), amd);
    // The restarted process is the one that serves (same PID, listening).
    std::net::TcpStream::connect(server.addr).expect("the restarted server listens");
    server.child.kill().unwrap();
    let _ = server.child.wait();

    let mut server = ferry_testkit::ServerProcess::spawn_env(
        &ferry,
        &dir.path().join("b"),
        &["--no-sftp"],
        &[("GLIBC_TUNABLES", "glibc.cpu.x86_rep_movsb_threshold=4096")],
    )
    .unwrap();
    let env = environ(server.child.id());
    assert!(env.iter().any(|v| v == "GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=4096"), "{env:?}");
    assert!(!env.iter().any(|v| v.starts_with("FERRY_COPY_TUNED")), "the caller's choice stands: {env:?}");
    server.child.kill().unwrap();
    let _ = server.child.wait();
}
