//! Issue 6: `sticky_vs_framed` shows messages running together on a raw
//! stream and kept apart by a length-prefixed frame.

use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Command;
use tokio::time::timeout;

/// See `examples_echo.rs`.
fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>/deps").join("examples");
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "ferry-proto", "--example", name])
            .status()
            .expect("run cargo");
        assert!(status.success(), "cargo build --example {name}");
    }
    bin
}

#[tokio::test]
async fn raw_runs_together_framed_stays_apart() {
    let out = timeout(Duration::from_secs(10), Command::new(example_bin("sticky_vs_framed")).output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(r#"raw:    "onetwothree""#), "{text}");
    assert!(text.contains(r#"framed: ["one", "two", "three"]"#), "{text}");
}
