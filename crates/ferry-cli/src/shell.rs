//! `ferry shell`: the interactive shell, in the habits of sftp and lftp.
//!
//! rustyline is synchronous and the session is async, so the line editor
//! runs on a blocking thread and talks to this task over channels: it sends
//! each line (and, for Tab, requests for remote listings) and waits for the
//! next prompt. The session is only ever touched here, one thing at a time.
//!
//! Ctrl-C at the prompt drops the line; during a remote command it stops
//! the command (exec: kills the remote process group; anything else: the
//! connection is dropped and silently re-opened for the next command, since
//! a request cut halfway leaves it in an unknown state).

mod complete;
mod lex;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use ferry_client::{ClientError, Entry, ExecStreams, GetOptions, HashAlgo, PutOptions, Remote, Session};
use rustyline::config::{CompletionType, Config};
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;

use crate::args::{ConnArgs, RemoteOnly};
use crate::oneshot::long_line;
use crate::report::{clean, eprintln_clean, error_chain, println_clean};
use crate::transfer::{download, remote_join, upload};
use complete::{Name, ShellHelper, expand_tilde};

/// Every command: name, arguments, what it does. `help` prints this table.
pub const COMMANDS: &[(&str, &str, &str)] = &[
    ("help", "[COMMAND]", "show the commands, or one command"),
    ("pwd", "", "print the remote directory"),
    ("cd", "[DIR]", "change the remote directory (no DIR: the home)"),
    ("ls", "[-l] [-a] [PATH...]", "list remote entries (-l: details, -a: dot files too)"),
    ("stat", "PATH...", "show remote entries' details"),
    ("mkdir", "[-p] DIR...", "make remote directories (-p: with parents)"),
    ("rm", "[-r] PATH...", "remove remote files (-r: whole trees)"),
    ("rmdir", "DIR...", "remove empty remote directories"),
    ("mv", "[-f] FROM TO", "rename or move a remote entry (-f: replace TO)"),
    ("put", "[-r] [-c] [-f] LOCAL... [REMOTE]", "upload (-r: folders, -c: resume, -f: overwrite)"),
    ("get", "[-r] [-c] [-f] REMOTE... [LOCAL]", "download (-r: folders, -c: resume, -f: overwrite)"),
    ("mput", "[-r] [-c] [-f] GLOB...", "upload local files matching globs here"),
    ("mget", "[-r] [-c] [-f] GLOB...", "download remote files matching globs (glob in the last part)"),
    ("hash", "[-b] PATH...", "print the server's SHA-256 (-b: BLAKE3) of remote files"),
    ("df", "", "show used space, quota and free space"),
    ("exec", "COMMAND [ARG...]", "run a command on the server (Ctrl-C stops it)"),
    ("lcd", "[DIR]", "change the local directory (no DIR: your home)"),
    ("lpwd", "", "print the local directory"),
    ("lls", "[-l] [-a] [PATH...]", "list local entries"),
    ("exit", "", "leave the shell (also quit, bye, Ctrl-D)"),
    ("quit", "", "leave the shell"),
    ("bye", "", "leave the shell"),
];

/// From the line editor to the task owning the session.
pub enum Event {
    /// A line to run (empty after Ctrl-C).
    Line(String),
    /// Tab wants the names in a remote directory (`None`: the current one).
    List { dir: Option<String>, reply: std::sync::mpsc::Sender<Vec<Name>> },
    /// Ctrl-D.
    Eof,
    /// The terminal failed.
    Error(String),
}

enum Flow {
    Continue,
    Exit,
}

struct Shell {
    remote: Remote,
    conn: ConnArgs,
    /// `None` after the connection was lost or a command interrupted; the
    /// next command logs in again.
    session: Option<Session>,
    cwd: String,
}

pub async fn run(a: RemoteOnly) -> Result<u8> {
    let (remote, mut session) = crate::connect::open(&a.remote, &a.conn).await?;
    let mut cwd = session.pwd().await?;
    if let Some(p) = remote.path.as_deref().filter(|p| !p.is_empty()) {
        match session.cd(p).await {
            Ok(dir) => cwd = dir,
            Err(e) => eprintln_clean!("error: cd {p}: {e}"),
        }
    }
    let mut sh = Shell { remote, conn: a.conn, session: Some(session), cwd };

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<String>();
    let helper = ShellHelper { tx: tx.clone() };
    let editor = tokio::task::spawn_blocking(move || read_lines(helper, tx, ready_rx));

    let mut code = 0;
    if ready_tx.send(sh.prompt()).is_ok() {
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::List { dir, reply } => {
                    let _ = reply.send(sh.names(dir).await);
                }
                Event::Line(line) => {
                    if let Flow::Exit = sh.execute(&line).await {
                        break;
                    }
                    if ready_tx.send(sh.prompt()).is_err() {
                        break;
                    }
                }
                Event::Eof => break,
                Event::Error(e) => {
                    eprintln_clean!("error: {e}");
                    code = crate::EXIT_FAILURE;
                    break;
                }
            }
        }
    }
    // The editor thread waits for a prompt: closing the channel ends it
    // (and it saves the history).
    drop(ready_tx);
    drop(rx);
    let _ = editor.await;
    if let Some(s) = sh.session.take() {
        let _ = s.close().await;
    }
    Ok(code)
}

/// `$FERRY_STATE_DIR/history`, else `$XDG_STATE_HOME/ferry/history`, else
/// `~/.local/state/ferry/history`.
fn history_path() -> Option<PathBuf> {
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = nonempty("FERRY_STATE_DIR") {
        return Some(d.join("history"));
    }
    let state = nonempty("XDG_STATE_HOME").or_else(|| nonempty("HOME").map(|h| h.join(".local/state")))?;
    Some(state.join("ferry").join("history"))
}

/// The line editor's thread: one line per prompt received.
fn read_lines(
    helper: ShellHelper,
    tx: tokio::sync::mpsc::UnboundedSender<Event>,
    ready: std::sync::mpsc::Receiver<String>,
) {
    let config = Config::builder()
        .completion_type(CompletionType::List)
        .auto_add_history(false)
        .max_history_size(5000)
        .and_then(|b| b.history_ignore_dups(true))
        .map(|b| b.history_ignore_space(true).build());
    let editor = config.and_then(rustyline::Editor::<ShellHelper, DefaultHistory>::with_config);
    let mut rl = match editor {
        Ok(rl) => rl,
        Err(e) => {
            let _ = tx.send(Event::Error(format!("cannot use the terminal: {e}")));
            return;
        }
    };
    rl.set_helper(Some(helper));
    let history = history_path();
    if let Some(p) = &history {
        if let Some(d) = p.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        let _ = rl.load_history(p);
    }
    while let Ok(prompt) = ready.recv() {
        let ev = match rl.readline(&prompt) {
            Ok(line) => {
                if !line.trim().is_empty()
                    && rl.add_history_entry(line.as_str()).unwrap_or(false)
                    && let Some(p) = &history
                {
                    let _ = rl.append_history(p);
                }
                Event::Line(line)
            }
            Err(ReadlineError::Interrupted) => Event::Line(String::new()),
            Err(ReadlineError::Eof) => Event::Eof,
            Err(e) => Event::Error(e.to_string()),
        };
        if tx.send(ev).is_err() {
            break;
        }
    }
}

/// A connection-level failure: the session cannot be trusted any more.
fn connection_broken(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<ClientError>(),
            Some(ClientError::Io(_) | ClientError::Frame(_) | ClientError::Protocol(_) | ClientError::Tls(_))
        )
    })
}

/// Options (`-rf`, `--force`) and the other arguments; `--` ends options.
fn parse_flags(cmd: &str, args: &[String], allowed: &str) -> Result<(HashSet<char>, Vec<String>)> {
    let mut flags = HashSet::new();
    let mut rest = Vec::new();
    let mut options_done = false;
    for a in args {
        if options_done || !a.starts_with('-') || a == "-" {
            rest.push(a.clone());
        } else if a == "--" {
            options_done = true;
        } else if let Some(long) = a.strip_prefix("--") {
            let c = match long {
                "long" => 'l',
                "all" => 'a',
                "parents" => 'p',
                "recursive" => 'r',
                "force" => 'f',
                "continue" => 'c',
                "blake3" => 'b',
                _ => bail!("{cmd}: unknown option {a} (see help {cmd})"),
            };
            if !allowed.contains(c) {
                bail!("{cmd}: unknown option {a} (see help {cmd})");
            }
            flags.insert(c);
        } else {
            for c in a.chars().skip(1) {
                if !allowed.contains(c) {
                    bail!("{cmd}: unknown option -{c} (see help {cmd})");
                }
                flags.insert(c);
            }
        }
    }
    Ok((flags, rest))
}

fn usage(cmd: &str) -> anyhow::Error {
    let args = COMMANDS.iter().find(|(n, _, _)| *n == cmd).map(|(_, a, _)| *a).unwrap_or("");
    anyhow!("usage: {cmd} {args}")
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn print_help(topic: Option<&str>) -> Result<()> {
    match topic {
        Some(t) => {
            let (n, a, d) = COMMANDS.iter().find(|(n, _, _)| *n == t).ok_or_else(|| anyhow!("help: no command {t}"))?;
            println!("{n} {a}\n    {d}");
        }
        None => {
            println!("Commands (Tab completes commands and paths; quote names with spaces):");
            for (n, a, d) in COMMANDS {
                let synopsis = if a.is_empty() { n.to_string() } else { format!("{n} {a}") };
                println!("  {synopsis:<36} {d}");
            }
        }
    }
    Ok(())
}

/// A local entry in the shape of a remote one, for `lls -l`.
fn local_entry(path: &Path, name: String) -> std::io::Result<Entry> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)?;
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_symlink() {
        "symlink"
    } else {
        "other"
    };
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok(Entry { name, kind: kind.into(), size: meta.len(), mtime, mode: meta.permissions().mode() & 0o7777 })
}

fn lls(args: &[String]) -> Result<()> {
    let (flags, paths) = parse_flags("lls", args, "la")?;
    let paths = if paths.is_empty() { vec![".".to_string()] } else { paths };
    let many = paths.len() > 1;
    for (i, p) in paths.iter().enumerate() {
        let path = expand_tilde(p);
        let meta = std::fs::metadata(&path).map_err(|e| anyhow!("{p}: {e}"))?;
        let mut entries = Vec::new();
        if meta.is_dir() {
            for e in std::fs::read_dir(&path).map_err(|e| anyhow!("{p}: {e}"))? {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                if flags.contains(&'a') || !name.starts_with('.') {
                    entries.push(local_entry(&e.path(), name)?);
                }
            }
        } else {
            entries.push(local_entry(&path, p.clone())?);
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        if many {
            if i > 0 {
                println!();
            }
            println_clean!("{p}:");
        }
        for e in &entries {
            if flags.contains(&'l') {
                println_clean!("{}", long_line(e));
            } else {
                println_clean!("{}{}", e.name, if e.kind == "dir" { "/" } else { "" });
            }
        }
    }
    Ok(())
}

fn lcd(args: &[String]) -> Result<()> {
    let dir = match args {
        [] => expand_tilde("~"),
        [d] => expand_tilde(d),
        _ => return Err(usage("lcd")),
    };
    std::env::set_current_dir(&dir).map_err(|e| anyhow!("lcd {}: {e}", dir.display()))
}

impl Shell {
    /// The prompt; the directory is the server's word, so it is escaped.
    fn prompt(&self) -> String {
        clean(&format!("{}@{}:{}> ", self.remote.user, self.remote.host, self.cwd)).into_owned()
    }

    /// The session, logging in again if it was dropped.
    async fn session(&mut self) -> Result<&mut Session> {
        if self.session.is_none() {
            eprintln_clean!("reconnecting to {}...", self.remote.host_port());
            let mut s = crate::connect::login(&self.remote, &self.conn).await?;
            match s.cd(&self.cwd).await {
                Ok(dir) => self.cwd = dir,
                Err(e) => {
                    eprintln_clean!("error: cd {}: {e}", self.cwd);
                    self.cwd = s.pwd().await?;
                }
            }
            self.session = Some(s);
        }
        self.session.as_mut().ok_or_else(|| anyhow!("not connected"))
    }

    /// Names in a remote directory, for Tab; never reconnects. A name that
    /// could not be used as a path, or that holds control characters, is not
    /// offered: the line editor would echo it raw to the terminal.
    async fn names(&mut self, dir: Option<String>) -> Vec<Name> {
        let Some(s) = self.session.as_mut() else { return Vec::new() };
        match s.ls(dir.as_deref()).await {
            Ok(entries) => entries
                .into_iter()
                .filter(|e| {
                    ferry_client::names::unsafe_name_reason(&e.name).is_none()
                        && matches!(clean(&e.name), std::borrow::Cow::Borrowed(_))
                })
                .map(|e| Name { is_dir: e.kind == "dir", name: e.name })
                .collect(),
            Err(e) => {
                if connection_broken(&anyhow::Error::from(e)) {
                    self.session = None;
                }
                Vec::new()
            }
        }
    }

    async fn execute(&mut self, line: &str) -> Flow {
        let words = match lex::split(line) {
            Ok(w) => w,
            Err(e) => {
                eprintln_clean!("error: {e}");
                return Flow::Continue;
            }
        };
        let Some((cmd, args)) = words.split_first() else { return Flow::Continue };
        let result = match cmd.as_str() {
            "exit" | "quit" | "bye" => return Flow::Exit,
            "help" | "?" => print_help(args.first().map(String::as_str)),
            "lpwd" => std::env::current_dir().map(|d| println!("{}", d.display())).map_err(Into::into),
            "lcd" => lcd(args),
            "lls" => lls(args),
            "exec" => self.exec(args).await,
            c if COMMANDS.iter().any(|(n, _, _)| *n == c) => self.remote_command(cmd, args).await,
            c => Err(anyhow!("unknown command {c} (type help for the list)")),
        };
        if let Err(e) = result {
            eprintln!("error: {}", error_chain(&e));
            if connection_broken(&e) {
                self.session = None;
            }
        }
        Flow::Continue
    }

    /// A remote command, stopped by Ctrl-C (which drops the connection).
    async fn remote_command(&mut self, cmd: &str, args: &[String]) -> Result<()> {
        let quiet = self.conn.quiet;
        let mut cwd = self.cwd.clone();
        let outcome = {
            let session = self.session().await?;
            tokio::select! {
                r = remote(session, &mut cwd, cmd, args, quiet) => Some(r),
                _ = tokio::signal::ctrl_c() => None,
            }
        };
        match outcome {
            Some(r) => {
                self.cwd = cwd;
                r
            }
            None => {
                self.session = None;
                bail!("interrupted")
            }
        }
    }

    async fn exec(&mut self, args: &[String]) -> Result<()> {
        let argv = match args {
            [dashes, rest @ ..] if dashes == "--" => rest,
            _ => args,
        };
        if argv.is_empty() {
            return Err(usage("exec"));
        }
        let session = self.session().await?;
        // The terminal stays with the shell: the command's stdin is closed.
        let streams =
            ExecStreams { stdin: None::<tokio::io::Empty>, stdout: tokio::io::stdout(), stderr: tokio::io::stderr() };
        let cancel = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        let outcome = session.exec(argv, streams, cancel).await?;
        if outcome.timed_out {
            eprintln!("the remote command ran past its time limit and was killed");
        } else if let Some(sig) = outcome.signal {
            eprintln!("the remote command was killed by signal {sig}");
        } else if outcome.shell_code() != 0 {
            eprintln!("exit status {}", outcome.shell_code());
        }
        Ok(())
    }
}

/// One failure about `path`, naming it unless the message already does.
fn path_error(path: &str, e: &anyhow::Error) -> String {
    let msg = error_chain(e);
    let path = clean(path);
    if msg.contains(path.trim_matches('/')) { format!("error: {msg}") } else { format!("error: {path}: {msg}") }
}

/// Runs `op` on each path, printing each failure on its own line.
async fn each<F>(session: &mut Session, paths: &[String], mut op: F) -> Result<()>
where
    F: AsyncFnMut(&mut Session, &str) -> Result<(), ClientError>,
{
    for p in paths {
        if let Err(e) = op(session, p).await {
            let e = anyhow::Error::from(e);
            if connection_broken(&e) {
                return Err(e);
            }
            eprintln!("{}", path_error(p, &e));
        }
    }
    Ok(())
}

/// Local sources matching globs; folders only with -r.
fn local_globs(patterns: &[String], recursive: bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for pat in patterns {
        let expanded = expand_tilde(pat);
        let Some(pat_str) = expanded.to_str() else { continue };
        let matches: Vec<PathBuf> = if has_glob(pat) {
            match glob::glob(pat_str) {
                Ok(paths) => paths.filter_map(Result::ok).collect(),
                Err(e) => {
                    eprintln_clean!("error: {pat}: {e}");
                    continue;
                }
            }
        } else {
            vec![expanded.clone()]
        };
        if matches.is_empty() {
            eprintln_clean!("error: {pat}: no match");
        }
        for m in matches {
            if m.is_dir() && !recursive {
                eprintln_clean!("skipping folder {} (use -r)", m.display());
            } else {
                out.push(m);
            }
        }
    }
    out
}

/// Remote sources matching globs (a glob only in the last part of a path).
async fn remote_globs(session: &mut Session, patterns: &[String], recursive: bool) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for pat in patterns {
        if !has_glob(pat) {
            out.push(pat.clone());
            continue;
        }
        let (dir, last) = match pat.rfind('/') {
            Some(i) => (&pat[..=i], &pat[i + 1..]),
            None => ("", pat.as_str()),
        };
        if has_glob(dir) {
            eprintln_clean!("error: {pat}: globs work only in the last part of a path");
            continue;
        }
        let pattern = match glob::Pattern::new(last) {
            Ok(p) => p,
            Err(e) => {
                eprintln_clean!("error: {pat}: {e}");
                continue;
            }
        };
        let opts = glob::MatchOptions { require_literal_leading_dot: true, ..Default::default() };
        let entries = session.ls(complete::remote_dir_to_list(dir).as_deref()).await?;
        let mut found = 0;
        let mut names: Vec<_> = entries.into_iter().filter(|e| pattern.matches_with(&e.name, opts)).collect();
        names.sort_by(|a, b| a.name.cmp(&b.name));
        for e in names {
            found += 1;
            // The name becomes a local file name in `download`: refuse here
            // what could not be one (issue 12, item 5).
            if let Some(why) = ferry_client::names::unsafe_name_reason(&e.name) {
                eprintln_clean!("error: {pat}: refusing the server's name \"{}\": {why}", e.name);
                continue;
            }
            let path = remote_join(dir, &e.name);
            if e.kind == "dir" && !recursive {
                eprintln_clean!("skipping folder {path} (use -r)");
            } else if e.kind == "file" || e.kind == "dir" {
                out.push(path);
            }
        }
        if found == 0 {
            eprintln_clean!("error: {pat}: no match");
        }
    }
    Ok(out)
}

/// The commands that need the session.
async fn remote(session: &mut Session, cwd: &mut String, cmd: &str, args: &[String], quiet: bool) -> Result<()> {
    match cmd {
        "pwd" => {
            if !args.is_empty() {
                return Err(usage(cmd));
            }
            *cwd = session.pwd().await?;
            println_clean!("{cwd}");
        }
        "cd" => {
            let dir = match args {
                [] => "/",
                [d] => d.as_str(),
                _ => return Err(usage(cmd)),
            };
            *cwd = session.cd(dir).await.with_context(|| format!("cd {dir}"))?;
        }
        "ls" => {
            let (flags, paths) = parse_flags(cmd, args, "la")?;
            let targets: Vec<Option<&str>> =
                if paths.is_empty() { vec![None] } else { paths.iter().map(|p| Some(p.as_str())).collect() };
            let many = targets.len() > 1;
            for (i, t) in targets.iter().enumerate() {
                let mut entries = match session.ls(*t).await {
                    Ok(e) => e,
                    Err(e) => {
                        let e = anyhow::Error::from(e);
                        if connection_broken(&e) {
                            return Err(e);
                        }
                        eprintln!("{}", path_error(t.unwrap_or("."), &e));
                        continue;
                    }
                };
                entries.retain(|e| flags.contains(&'a') || !e.name.starts_with('.'));
                entries.sort_by(|a, b| a.name.cmp(&b.name));
                if many {
                    if i > 0 {
                        println!();
                    }
                    println_clean!("{}:", t.unwrap_or("."));
                }
                for e in &entries {
                    if flags.contains(&'l') {
                        println_clean!("{}", long_line(e));
                    } else {
                        println_clean!("{}{}", e.name, if e.kind == "dir" { "/" } else { "" });
                    }
                }
            }
        }
        "stat" => {
            if args.is_empty() {
                return Err(usage(cmd));
            }
            each(session, args, async |s, p| {
                println_clean!("{}", long_line(&s.stat(p).await?));
                Ok(())
            })
            .await?;
        }
        "mkdir" => {
            let (flags, paths) = parse_flags(cmd, args, "p")?;
            if paths.is_empty() {
                return Err(usage(cmd));
            }
            let parents = flags.contains(&'p');
            each(session, &paths, async |s, p| s.mkdir(p, parents).await).await?;
        }
        "rm" => {
            let (flags, paths) = parse_flags(cmd, args, "r")?;
            if paths.is_empty() {
                return Err(usage(cmd));
            }
            let recursive = flags.contains(&'r');
            each(session, &paths, async |s, p| s.rm(p, recursive).await).await?;
        }
        "rmdir" => {
            if args.is_empty() {
                return Err(usage(cmd));
            }
            each(session, args, async |s, p| s.rmdir(p).await).await?;
        }
        "mv" => {
            let (flags, paths) = parse_flags(cmd, args, "f")?;
            let [from, to] = paths.as_slice() else { return Err(usage(cmd)) };
            session.mv(from, to, flags.contains(&'f')).await?;
        }
        "hash" => {
            let (flags, paths) = parse_flags(cmd, args, "b")?;
            if paths.is_empty() {
                return Err(usage(cmd));
            }
            let algo = if flags.contains(&'b') { HashAlgo::Blake3 } else { HashAlgo::Sha256 };
            each(session, &paths, async |s, p| {
                println_clean!("{}  {p}", s.hash_as(p, None, algo).await?.0);
                Ok(())
            })
            .await?;
        }
        "df" => crate::oneshot::print_df(&session.df().await?),
        "put" | "mput" => {
            let (flags, paths) = parse_flags(cmd, args, "rcf")?;
            let recursive = flags.contains(&'r');
            let opts = PutOptions { overwrite: flags.contains(&'f'), resume: flags.contains(&'c'), state_dir: None };
            let (sources, target): (Vec<PathBuf>, &str) = if cmd == "mput" {
                if paths.is_empty() {
                    return Err(usage(cmd));
                }
                (local_globs(&paths, recursive), ".")
            } else {
                match paths.as_slice() {
                    [] => return Err(usage(cmd)),
                    [one] => (vec![expand_tilde(one)], "."),
                    [sources @ .., target] => (sources.iter().map(|s| expand_tilde(s)).collect(), target.as_str()),
                }
            };
            if sources.is_empty() {
                return Ok(());
            }
            upload(session, &sources, target, recursive, &opts, quiet).await?;
        }
        "get" | "mget" => {
            let (flags, paths) = parse_flags(cmd, args, "rcf")?;
            let recursive = flags.contains(&'r');
            let opts = GetOptions { overwrite: flags.contains(&'f'), resume: flags.contains(&'c') };
            let (sources, target): (Vec<String>, PathBuf) = if cmd == "mget" {
                if paths.is_empty() {
                    return Err(usage(cmd));
                }
                (remote_globs(session, &paths, recursive).await?, PathBuf::from("."))
            } else {
                match paths.as_slice() {
                    [] => return Err(usage(cmd)),
                    [one] => (vec![one.clone()], PathBuf::from(".")),
                    [sources @ .., target] => (sources.to_vec(), expand_tilde(target)),
                }
            };
            if sources.is_empty() {
                return Ok(());
            }
            download(session, &sources, &target, recursive, &opts, quiet).await?;
        }
        _ => bail!("unknown command {cmd} (type help for the list)"),
    }
    Ok(())
}
