//! `ferry-load pipe` (the benchmark's floor) must move the bytes it claims:
//! each mode copies a file through a real loopback socket, identical.

use std::process::Command;

#[test]
fn the_floor_pipe_copies_a_file_identically_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.bin");
    // 3 MiB + 5 bytes: several blocks and a short last one.
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 5).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&input, &data).unwrap();
    for tls in [false, true] {
        for hash in ["none", "sha256", "blake3"] {
            let _ = std::fs::remove_file(&output);
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry-load"));
            cmd.arg("pipe").arg("--input").arg(&input).arg("--output").arg(&output).args(["--hash", hash]);
            if tls {
                cmd.arg("--tls");
            }
            let out = cmd.output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "tls={tls} hash={hash}: {stdout} {}", String::from_utf8_lossy(&out.stderr));
            assert!(stdout.contains(&format!("{} bytes", data.len())), "{stdout}");
            assert_eq!(std::fs::read(&output).unwrap(), data, "tls={tls} hash={hash}");
            let digest = match hash {
                "sha256" => {
                    use sha2::Digest;
                    hex::encode(sha2::Sha256::digest(&data))
                }
                "blake3" => blake3::hash(&data).to_hex().to_string(),
                _ => continue,
            };
            assert!(stdout.contains(&format!("digest {digest} on both ends")), "{stdout}");
        }
    }
}
