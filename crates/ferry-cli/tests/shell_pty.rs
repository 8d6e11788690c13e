//! `ferry shell` driven as a person would: the real binary on a
//! pseudo-terminal, typing lines and Tab, reading what the terminal shows.
//! Every wait is bounded and a failure prints the whole transcript.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use ferry_testkit::{ServerProcess, add_user_cli};
use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
use rustix::termios::{Winsize, tcsetwinsize};

const WAIT: Duration = Duration::from_secs(20);

fn ferry() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

/// Drops escape sequences and carriage returns, so that what is left is
/// the text a person would read (with redraws one after another).
fn clean(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                // CSI: parameters, then one final byte in @..~.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ESC \.
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\x07' {
                            break;
                        }
                        if c == '\x1b' {
                            chars.next();
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\r' | '\x07' => {}
            c => out.push(c),
        }
    }
    out
}

/// A child process on the slave side of a pseudo-terminal.
struct Pty {
    master: File,
    output: Receiver<Vec<u8>>,
    raw: Vec<u8>,
    /// How far (in the cleaned transcript) expectations have matched.
    seen: usize,
    child: Child,
}

impl Pty {
    fn spawn(mut cmd: Command) -> Pty {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).expect("openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        tcsetwinsize(&master, Winsize { ws_row: 40, ws_col: 200, ws_xpixel: 0, ws_ypixel: 0 }).expect("winsize");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        let slave_path = PathBuf::from(name.to_str().expect("pts name"));
        let child = {
            let open = || std::fs::OpenOptions::new().read(true).write(true).open(&slave_path).expect("open pts");
            cmd.stdin(Stdio::from(open())).stdout(Stdio::from(open())).stderr(Stdio::from(open()));
            let child = cmd.spawn().expect("spawn ferry shell");
            // `cmd` keeps our copies of the slave until it is dropped: drop
            // it now, so the master reads EOF once the child is gone.
            drop(cmd);
            child
        };
        let master = File::from(master);
        let mut reader = master.try_clone().expect("clone master");
        let (tx, output) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Pty { master, output, raw: Vec::new(), seen: 0, child }
    }

    fn transcript(&self) -> String {
        format!(
            "--- transcript (cleaned) ---\n{}\n--- raw ---\n{:?}",
            clean(&self.raw),
            String::from_utf8_lossy(&self.raw)
        )
    }

    /// Waits (bounded) until `needle` shows after what was matched before.
    fn expect(&mut self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = clean(&self.raw);
            if let Some(i) = text.get(self.seen..).and_then(|t| t.find(needle)) {
                self.seen += i + needle.len();
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(bytes) => self.raw.extend_from_slice(&bytes),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("timed out waiting for {needle:?}\n{}", self.transcript())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the terminal closed while waiting for {needle:?}\n{}", self.transcript())
                }
            }
        }
    }

    fn send(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).expect("write to the terminal");
        self.master.flush().expect("flush the terminal");
    }

    /// Types `line` and Enter, then waits for `output` followed by the prompt.
    fn run(&mut self, line: &str, output: &str, prompt: &str) {
        self.send(&format!("{line}\r"));
        self.expect(&format!("{line}\n{output}{prompt}"));
    }

    /// Types `line` and Enter, then waits for the prompt, whatever comes
    /// between (progress bars).
    fn run_loose(&mut self, line: &str, prompt: &str) {
        self.send(&format!("{line}\r"));
        self.expect(&format!("{line}\n"));
        self.expect(prompt);
    }

    /// Waits (bounded) for the child to end.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                panic!("ferry shell did not exit\n{}", self.transcript());
            }
            // Keep draining the terminal so the child never blocks writing.
            if let Ok(bytes) = self.output.recv_timeout(Duration::from_millis(50)) {
                self.raw.extend_from_slice(&bytes);
            }
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn shell_command(tmp: &Path, port: u16) -> Command {
    let mut cmd = Command::new(ferry());
    cmd.args(["shell", &format!("alice@127.0.0.1:{port}"), "--accept-new", "--known-hosts"])
        .arg(tmp.join("kh"))
        .env("FERRY_PASSWORD", "pw")
        .env("FERRY_STATE_DIR", tmp)
        .env("HOME", tmp)
        .env("TERM", "xterm")
        .env_remove("XDG_STATE_HOME")
        .current_dir(tmp);
    cmd
}

#[test]
fn shell_completes_remote_paths_and_manages_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    add_user_cli(&ferry(), &data, "alice", "pw", &[]).unwrap();
    let server = ServerProcess::spawn(&ferry(), &data, &[]).unwrap();

    let mut t = Pty::spawn(shell_command(tmp.path(), server.port()));
    let root = "alice@127.0.0.1:/> ";
    let docs = "alice@127.0.0.1:/docs> ";
    t.expect(root);
    t.run("mkdir docs", "", root);
    t.run("mkdir docs/inner", "", root);

    // Tab completes the remote directory, with its slash.
    t.send("cd do\t");
    t.expect("cd docs/");
    t.run("", "", docs);
    t.run("pwd", "/docs\n", docs);
    t.run("ls", "inner/\n", docs);
    t.run("rmdir inner", "", docs);
    t.run("ls", "", docs);

    // Errors are one line and the shell goes on.
    t.send("rmdir nothing-here\r");
    t.expect("rmdir nothing-here\nerror: ");
    t.expect("nothing-here: no such file or directory");
    t.expect(&format!("\n{docs}"));
    t.run("cd ..", "", root);

    // help names every command.
    t.send("help\r");
    for cmd in ["pwd ", "cd ", "ls ", "mkdir ", "rmdir ", "put ", "mget ", "exec ", "lcd ", "lls ", "exit "] {
        t.expect(&format!("\n  {cmd}"));
    }
    t.expect(root);

    t.send("exit\r");
    let status = t.wait_exit();
    assert!(status.success(), "{status:?}\n{}", t.transcript());
    let history = std::fs::read_to_string(tmp.path().join("history")).unwrap_or_default();
    assert!(history.contains("mkdir docs/inner") && history.contains("cd docs/"), "history: {history}");
}

#[test]
fn shell_transfers_with_globs_and_local_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    add_user_cli(&ferry(), &data, "alice", "pw", &[]).unwrap();
    let server = ServerProcess::spawn(&ferry(), &data, &[]).unwrap();
    let local = tmp.path().join("local");
    std::fs::create_dir(&local).unwrap();
    std::fs::write(local.join("a one.txt"), b"first").unwrap();
    std::fs::write(local.join("b.txt"), b"second").unwrap();
    std::fs::write(local.join("c.log"), b"third").unwrap();
    let back = tmp.path().join("back");
    std::fs::create_dir(&back).unwrap();

    let mut t = Pty::spawn(shell_command(tmp.path(), server.port()));
    let root = "alice@127.0.0.1:/> ";
    t.expect(root);
    t.run("lcd local", "", root);
    // Local completion, with the space escaped.
    t.send("put a\t");
    t.expect(r"put a\ one.txt");
    t.run("", "", root);
    t.run_loose("mput *.txt *.log", root);
    t.run("ls", "a one.txt\nb.txt\nc.log\n", root);
    t.run("lcd ../back", "", root);
    t.run("lpwd", &format!("{}\n", back.display()), root);
    t.run_loose("mget *.txt", root);
    t.run_loose("get 'a one.txt' copy.txt", root);
    t.run("lls", "a one.txt\nb.txt\ncopy.txt\n", root);
    t.send("exit\r");
    assert!(t.wait_exit().success(), "{}", t.transcript());
    assert_eq!(std::fs::read(back.join("a one.txt")).unwrap(), b"first");
    assert_eq!(std::fs::read(back.join("b.txt")).unwrap(), b"second");
    assert_eq!(std::fs::read(back.join("copy.txt")).unwrap(), b"first");
    assert!(!back.join("c.log").exists());
}

#[test]
fn shell_exec_file_commands_errors_ctrl_c_and_ctrl_d() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    add_user_cli(&ferry(), &data, "alice", "pw", &["--allow-exec"]).unwrap();
    let server = ServerProcess::spawn(&ferry(), &data, &[]).unwrap();
    std::fs::write(tmp.path().join("f.txt"), b"hello\n").unwrap();

    let mut t = Pty::spawn(shell_command(tmp.path(), server.port()));
    let root = "alice@127.0.0.1:/> ";
    t.expect(root);
    t.run("exec echo 'hello  world'", "hello  world\n", root);
    t.run("exec sh -c 'exit 3'", "exit status 3\n", root);
    t.run_loose("put f.txt", root);
    t.send("ls -l\r");
    t.expect("ls -l\n-rw");
    t.expect(" f.txt\n");
    t.expect(root);
    // sha256("hello\n")
    t.run("hash f.txt", "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03  f.txt\n", root);
    t.run("mv f.txt 'g h.txt'", "", root);
    t.run("ls", "g h.txt\n", root);
    t.send("stat g\\ h.txt\r");
    t.expect(" 6 ");
    t.expect(" g h.txt\n");
    t.expect(root);
    t.run("rm \"g h.txt\"", "", root);
    t.run("ls", "", root);
    t.send("df\r");
    t.expect("used");
    t.expect(root);
    t.run("bogus", "error: unknown command bogus (type help for the list)\n", root);
    t.run("cd 'open", "error: missing closing single quote (')\n", root);
    // Ctrl-C drops the line being typed; the shell goes on.
    t.send("ls nowhere\x03");
    t.expect(root);
    t.run("pwd", "/\n", root);
    // Ctrl-D leaves.
    t.send("\x04");
    assert!(t.wait_exit().success(), "{}", t.transcript());
}
