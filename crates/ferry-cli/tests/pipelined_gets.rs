//! Downloads pipelined on one connection, which the server answers in
//! batches: every answer in request order, each with its own data and hash,
//! errors in place, through batch and byte-budget boundaries.

use ferry_proto::{ErrorCode, Request};
use ferry_testkit::TestServer;
use sha2::{Digest, Sha256};

/// What one request of the run should get back.
enum Expect {
    File(Vec<u8>),
    Error(ErrorCode),
}

#[tokio::test]
async fn pipelined_gets_answer_in_order_across_batches_sizes_and_errors() {
    let server = TestServer::start_with(|c| c.insecure_plaintext = true).await.unwrap();
    server.add_user("alice", "pw", None, false).unwrap();
    let home = server.home("alice");
    std::fs::create_dir(home.join("dir")).unwrap();

    // 150 files of 40 KiB (6 MB, past one batch's count and byte budget),
    // with a large file, an empty one, a directory and bad paths among them.
    let mut run: Vec<(String, Expect)> = Vec::new();
    for i in 0..150u32 {
        let name = format!("s{i:03}");
        let data: Vec<u8> = (0..40 * 1024u32).map(|b| (b.wrapping_mul(31) ^ i.wrapping_mul(7919)) as u8).collect();
        std::fs::write(home.join(&name), &data).unwrap();
        run.push((name, Expect::File(data)));
        match i {
            10 => {
                let big: Vec<u8> = (0..(1u32 << 20) + 7).map(|b| (b % 251) as u8).collect();
                std::fs::write(home.join("big.bin"), &big).unwrap();
                run.push(("big.bin".into(), Expect::File(big)));
            }
            20 => {
                std::fs::write(home.join("empty"), b"").unwrap();
                run.push(("empty".into(), Expect::File(Vec::new())));
            }
            30 => run.push(("dir".into(), Expect::Error(ErrorCode::IsADirectory))),
            40 => run.push(("missing".into(), Expect::Error(ErrorCode::NotFound))),
            50 => run.push(("../outside".into(), Expect::Error(ErrorCode::OutsideHome))),
            _ => {}
        }
    }

    let mut conn = server.login_raw("alice", "pw").await.unwrap();
    for (i, (path, _)) in run.iter().enumerate() {
        conn.queue_header(&Request::Get { path: path.clone(), offset: 0, algo: None }.to_header(100 + i as u64, 0))
            .unwrap();
    }
    conn.flush().await.unwrap();

    for (i, (path, expect)) in run.iter().enumerate() {
        let id = 100 + i as u64;
        let head = conn.read_header().await.unwrap().expect("an answer for every get");
        assert_eq!(head.get_u64("id"), Some(id), "{path}: answers come in request order: {head:?}");
        match expect {
            Expect::Error(code) => {
                let (_, answer) = ferry_proto::msg::parse_response(&head);
                assert_eq!(answer.unwrap_err().code, *code, "{path}");
            }
            Expect::File(data) => {
                assert_eq!(head.fields["ok"], true, "{path}: {head:?}");
                assert_eq!(head.body_len, data.len() as u64, "{path}");
                let body = conn.read_body_to_vec(u64::MAX).await.unwrap();
                assert!(body == *data, "{path}: the body is the file's bytes");
                let trailer = conn.read_header().await.unwrap().unwrap();
                assert_eq!(trailer.get_u64("id"), Some(id), "{path}");
                assert_eq!(trailer.fields["done"], true, "{path}: {trailer:?}");
                assert_eq!(trailer.get_str("sha256"), Some(hex::encode(Sha256::digest(data)).as_str()), "{path}");
            }
        }
    }

    // The session goes on after the run.
    conn.send(&Request::Pwd.to_header(9999, 0)).await.unwrap();
    let pwd = conn.read_header().await.unwrap().unwrap();
    assert_eq!(pwd.get_u64("id"), Some(9999));
    assert_eq!(pwd.fields["ok"], true, "{pwd:?}");
}
