//! The hash recorded at commit (one per algorithm) lets downloads skip a
//! second hash (and go out by sendfile on plaintext). It must never let a
//! changed file pass as the committed one.

use std::io::{Seek, SeekFrom, Write};

use ferry_client::{GetOptions, HashAlgo, NoProgress, PutOptions};
use ferry_testkit::{TestServer, hash_file, write_random_file};

async fn upload(server: &TestServer, tmp: &std::path::Path, size: u64, algo: HashAlgo) -> (std::path::PathBuf, String) {
    let local = tmp.join("src.bin");
    write_random_file(&local, size, 7).unwrap();
    let mut s = server.login_offering("alice", "pw", &[algo]).await.unwrap();
    s.put_file(&local, "f.bin", &PutOptions { overwrite: true, ..PutOptions::default() }, &NoProgress).await.unwrap();
    s.close().await.unwrap();
    let hash = hash_file(&local, algo).unwrap();
    (local, hash)
}

async fn download(
    server: &TestServer,
    to: &std::path::Path,
    algo: HashAlgo,
) -> Result<String, ferry_client::ClientError> {
    let mut s = server.login_offering("alice", "pw", &[algo]).await.unwrap();
    assert_eq!(s.hash_algo(), algo);
    let r = s.get_file("f.bin", to, &GetOptions { overwrite: true, resume: false }, &NoProgress).await;
    r.map(|summary| summary.hash)
}

#[tokio::test]
async fn cached_hash_serves_plaintext_downloads_and_catches_silent_changes() {
    for (plaintext, algo) in
        [(true, HashAlgo::Sha256), (false, HashAlgo::Sha256), (true, HashAlgo::Blake3), (false, HashAlgo::Blake3)]
    {
        let server = TestServer::start_with(|c| c.insecure_plaintext = plaintext).await.unwrap();
        server.add_user("alice", "pw", None, false).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let (_, hash) = upload(&server, tmp.path(), 3 * 1024 * 1024 + 17, algo).await;
        let stored = server.home("alice").join("f.bin");
        let got = download(&server, &tmp.path().join("a"), algo).await.unwrap();
        assert_eq!(got, hash, "plaintext={plaintext} {algo}");
        assert_eq!(hash_file(&tmp.path().join("a"), algo).unwrap(), hash);

        // Flip a byte in place and put the modification time back: the cache
        // now claims the old hash, and the client must refuse the data.
        let mtime = std::fs::metadata(&stored).unwrap().modified().unwrap();
        {
            let mut f = std::fs::OpenOptions::new().write(true).open(&stored).unwrap();
            f.seek(SeekFrom::Start(1_000_000)).unwrap();
            f.write_all(b"\x00\xff").unwrap();
            f.set_modified(mtime).unwrap();
        }
        let err = download(&server, &tmp.path().join("b"), algo).await.expect_err("a silently changed file is caught");
        assert!(matches!(err, ferry_client::ClientError::Checksum { .. }), "{err}");
        assert!(!tmp.path().join("b").exists(), "nothing committed locally");

        // A visible change (new mtime) makes the server hash again: the new content arrives verified.
        std::fs::File::options().write(true).open(&stored).unwrap().set_modified(std::time::SystemTime::now()).unwrap();
        let got = download(&server, &tmp.path().join("c"), algo).await.unwrap();
        assert_eq!(got, hash_file(&stored, algo).unwrap());
        assert_ne!(got, hash);
    }
}

/// A file put in the home by other means (an admin's copy) is hashed at its
/// first download, and that hash is kept for the next ones: seen here by
/// changing the file silently, which only a cached hash would miss on the
/// server (and the client then refuses).
#[tokio::test]
async fn first_download_of_a_file_placed_in_the_home_records_its_hash() {
    let server = TestServer::start_with(|c| c.insecure_plaintext = true).await.unwrap();
    server.add_user("alice", "pw", None, false).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // The home exists after a first login.
    server.login("alice", "pw").await.unwrap().close().await.unwrap();
    let stored = server.home("alice").join("f.bin");
    write_random_file(&stored, 2 * 1024 * 1024 + 5, 9).unwrap();
    let hash = hash_file(&stored, HashAlgo::Blake3).unwrap();
    assert_eq!(download(&server, &tmp.path().join("a"), HashAlgo::Blake3).await.unwrap(), hash);
    let again = download(&server, &tmp.path().join("b"), HashAlgo::Blake3).await.unwrap();
    assert_eq!(again, hash, "the recorded hash serves again");

    let mtime = std::fs::metadata(&stored).unwrap().modified().unwrap();
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&stored).unwrap();
        f.seek(SeekFrom::Start(5)).unwrap();
        f.write_all(b"\x01\x02").unwrap();
        f.set_modified(mtime).unwrap();
    }
    let err = download(&server, &tmp.path().join("c"), HashAlgo::Blake3)
        .await
        .expect_err("served from the recorded hash, caught");
    assert!(matches!(err, ferry_client::ClientError::Checksum { .. }), "{err}");
}
