//! Tab completion: command names first, then remote or local paths
//! depending on the command and the argument's position. Remote listings
//! are asked of the async side (which owns the session) over a channel, with
//! a bounded wait so a slow server never freezes the prompt.

use std::path::PathBuf;
use std::time::Duration;

use rustyline::completion::{Completer, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Helper};

use super::lex::{self, Quote, Word};
use super::{COMMANDS, Event};

/// How long Tab waits for a remote listing.
const REMOTE_WAIT: Duration = Duration::from_secs(2);

/// What an argument of a command names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgKind {
    Command,
    Remote { dirs_only: bool },
    Local { dirs_only: bool },
    Nothing,
}

/// The kind of the `pos`-th non-option argument of `cmd` (0 = first).
pub fn arg_kind(cmd: &str, pos: usize) -> ArgKind {
    match cmd {
        "cd" | "rmdir" => ArgKind::Remote { dirs_only: true },
        "ls" | "stat" | "mkdir" | "rm" | "mv" | "hash" | "mget" => ArgKind::Remote { dirs_only: false },
        "get" if pos == 0 => ArgKind::Remote { dirs_only: false },
        "get" => ArgKind::Local { dirs_only: false },
        "put" if pos == 0 => ArgKind::Local { dirs_only: false },
        "put" => ArgKind::Remote { dirs_only: false },
        "mput" | "lls" => ArgKind::Local { dirs_only: false },
        "lcd" => ArgKind::Local { dirs_only: true },
        "help" if pos == 0 => ArgKind::Command,
        _ => ArgKind::Nothing,
    }
}

/// A name in a directory, for completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub name: String,
    pub is_dir: bool,
}

pub struct ShellHelper {
    pub tx: tokio::sync::mpsc::UnboundedSender<Event>,
}

impl ShellHelper {
    fn remote_names(&self, dir: Option<String>) -> Vec<Name> {
        let (reply, answer) = std::sync::mpsc::channel();
        if self.tx.send(Event::List { dir, reply }).is_err() {
            return Vec::new();
        }
        answer.recv_timeout(REMOTE_WAIT).unwrap_or_default()
    }
}

/// Splits a partly typed path into the directory part (kept as typed, with
/// its slash) and the name being typed.
fn split_dir(text: &str) -> (&str, &str) {
    match text.rfind('/') {
        Some(i) => (&text[..=i], &text[i + 1..]),
        None => ("", text),
    }
}

/// The directory to list for a typed directory part ("" is the current one).
pub fn remote_dir_to_list(dir_part: &str) -> Option<String> {
    if dir_part.is_empty() {
        return None;
    }
    let trimmed = dir_part.trim_end_matches('/');
    Some(if trimmed.is_empty() { "/".to_string() } else { trimmed.to_string() })
}

/// `~` and `~/...` to the home folder, for local paths.
pub fn expand_tilde(path: &str) -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    match (path, home) {
        ("~", Some(h)) => h,
        (p, Some(h)) if p.starts_with("~/") => h.join(&p[2..]),
        (p, _) => PathBuf::from(p),
    }
}

fn local_names(dir_part: &str) -> Vec<Name> {
    let dir = if dir_part.is_empty() { PathBuf::from(".") } else { expand_tilde(dir_part) };
    let Ok(rd) = std::fs::read_dir(&dir) else { return Vec::new() };
    rd.filter_map(|e| {
        let e = e.ok()?;
        let name = e.file_name().into_string().ok()?;
        // Follow symlinks: a link to a folder completes as a folder.
        let is_dir = std::fs::metadata(e.path()).map(|m| m.is_dir()).unwrap_or(false);
        Some(Name { name, is_dir })
    })
    .collect()
}

/// Candidates for the word `word` (quote state `open`) among `names`.
pub fn path_candidates(word: &Word, open: Quote, names: Vec<Name>, dirs_only: bool) -> Vec<Pair> {
    let (dir_part, prefix) = split_dir(&word.text);
    let mut out: Vec<Pair> = names
        .into_iter()
        .filter(|n| n.name.starts_with(prefix))
        .filter(|n| prefix.starts_with('.') || !n.name.starts_with('.'))
        .filter(|n| n.is_dir || !dirs_only)
        .map(|n| {
            let slash = if n.is_dir { "/" } else { "" };
            let full = format!("{dir_part}{}{slash}", n.name);
            Pair { display: format!("{}{slash}", n.name), replacement: lex::quote_as(&full, open) }
        })
        .collect();
    out.sort_by(|a, b| a.display.cmp(&b.display));
    out
}

/// Where completion of `line` at `pos` starts and what it offers;
/// `remote` lists a remote directory (`None`: the current one).
pub fn complete_line(line: &str, pos: usize, remote: impl FnOnce(Option<String>) -> Vec<Name>) -> (usize, Vec<Pair>) {
    let Some(head) = line.get(..pos) else { return (pos, Vec::new()) };
    let lexed = lex::lex(head);
    let mut words = lexed.words;
    let current = if lexed.in_word {
        words.pop().unwrap_or(Word { start: pos, text: String::new() })
    } else {
        Word { start: pos, text: String::new() }
    };
    let open = if lexed.in_word { lexed.open } else { Quote::None };
    let kind = match words.split_first() {
        None => ArgKind::Command,
        Some(_) if current.text.starts_with('-') => ArgKind::Nothing,
        Some((cmd, rest)) => {
            let mut after_dashes = false;
            let pos_index = rest
                .iter()
                .filter(|w| {
                    if after_dashes {
                        return true;
                    }
                    if w.text == "--" {
                        after_dashes = true;
                        return false;
                    }
                    !(w.text.starts_with('-') && w.text.len() > 1)
                })
                .count();
            arg_kind(&cmd.text, pos_index)
        }
    };
    let candidates = match kind {
        ArgKind::Command => {
            let mut v: Vec<Pair> = COMMANDS
                .iter()
                .filter(|(name, _, _)| name.starts_with(current.text.as_str()))
                .map(|(name, _, _)| Pair { display: name.to_string(), replacement: format!("{name} ") })
                .collect();
            v.dedup_by(|a, b| a.display == b.display);
            v
        }
        ArgKind::Remote { dirs_only } => {
            let (dir_part, _) = split_dir(&current.text);
            let names = remote(remote_dir_to_list(dir_part));
            path_candidates(&current, open, names, dirs_only)
        }
        ArgKind::Local { dirs_only } => {
            let (dir_part, _) = split_dir(&current.text);
            path_candidates(&current, open, local_names(dir_part), dirs_only)
        }
        ArgKind::Nothing => Vec::new(),
    };
    (current.start, candidates)
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        Ok(complete_line(line, pos, |dir| self.remote_names(dir)))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;
}
impl Highlighter for ShellHelper {}
impl Validator for ShellHelper {}
impl Helper for ShellHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<Name> {
        vec![
            Name { name: "docs".into(), is_dir: true },
            Name { name: "dots.txt".into(), is_dir: false },
            Name { name: "my dir".into(), is_dir: true },
            Name { name: ".hidden".into(), is_dir: false },
        ]
    }

    fn replacements(line: &str) -> (usize, Vec<String>, Option<String>) {
        let mut asked = None;
        let (start, c) = complete_line(line, line.len(), |d| {
            asked = Some(d.unwrap_or_else(|| ".".into()));
            names()
        });
        (start, c.into_iter().map(|p| p.replacement).collect(), asked)
    }

    #[test]
    fn commands_complete_first() {
        let (start, c, _) = replacements("mk");
        assert_eq!((start, c), (0, vec!["mkdir ".to_string()]));
        let (_, c, _) = replacements("l");
        assert!(c.contains(&"ls ".to_string()) && c.contains(&"lcd ".to_string()));
        let (_, c, _) = replacements("help rmd");
        assert_eq!(c, ["rmdir "]);
    }

    #[test]
    fn remote_paths_with_slashes_and_quotes() {
        assert_eq!(replacements("cd do"), (3, vec!["docs/".to_string()], Some(".".into())));
        let (_, c, _) = replacements("ls do");
        assert_eq!(c, ["docs/", "dots.txt"]);
        assert_eq!(replacements("ls a/b/d").1, ["a/b/docs/", "a/b/dots.txt"]);
        assert_eq!(replacements("ls a/b/d").2, Some("a/b".into()));
        assert_eq!(replacements("ls /d").2, Some("/".into()));
        assert_eq!(replacements("cd my").1, [r"my\ dir/"]);
        assert_eq!(replacements("cd \"my").1, ["\"my dir/"]);
        assert_eq!(replacements("ls .").1, [".hidden"]);
        assert_eq!(replacements("rm -r do").1, ["docs/", "dots.txt"]);
        assert!(replacements("rm -").1.is_empty());
        // put: the first argument is local, the second remote.
        assert_eq!(replacements("put x do").1, ["docs/", "dots.txt"]);
        assert_eq!(replacements("put -f x do").2, Some(".".into()));
        assert_eq!(replacements("put do").2, None);
    }

    #[test]
    fn local_paths_complete_from_disk() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("alpha dir")).unwrap();
        std::fs::write(tmp.path().join("alpha.txt"), b"x").unwrap();
        let base = tmp.path().to_str().unwrap();
        let line = format!("lls {base}/al");
        let (_, c) = complete_line(&line, line.len(), |_| panic!("no remote listing for lls"));
        let got: Vec<_> = c.into_iter().map(|p| p.replacement).collect();
        assert_eq!(got, [format!("{}/alpha\\ dir/", lex::quote_as(base, Quote::None)), format!("{base}/alpha.txt")]);
        let line = format!("lcd {base}/al");
        let (_, c) = complete_line(&line, line.len(), |_| Vec::new());
        assert_eq!(c.len(), 1, "lcd offers folders only");
    }
}
