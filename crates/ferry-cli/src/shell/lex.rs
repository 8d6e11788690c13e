//! Splitting a shell line into words, as sh does: whitespace separates,
//! single quotes keep everything literal, double quotes keep everything but
//! `\"` and `\\`, and a backslash outside quotes escapes the next character.
//! Quoted parts join their neighbours (`a"b c"d` is one word, `ab cd`).

/// Which quote is open at a point of the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quote {
    None,
    Single,
    Double,
}

/// One word: where it starts in the line (byte offset) and its text with
/// quotes and escapes removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub start: usize,
    pub text: String,
}

/// A line (or the part of it before the cursor), split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lexed {
    pub words: Vec<Word>,
    /// The quote still open at the end.
    pub open: Quote,
    /// The input ends inside a word (not after whitespace, not empty).
    pub in_word: bool,
    /// The input ends with an unpaired backslash.
    pub trailing_backslash: bool,
}

pub fn lex(line: &str) -> Lexed {
    let mut words = Vec::new();
    let mut cur: Option<Word> = None;
    let mut quote = Quote::None;
    let mut trailing_backslash = false;
    let mut chars = line.char_indices().peekable();

    fn push(cur: &mut Option<Word>, at: usize, c: Option<char>) {
        let w = cur.get_or_insert_with(|| Word { start: at, text: String::new() });
        if let Some(c) = c {
            w.text.push(c);
        }
    }

    while let Some((i, c)) = chars.next() {
        match quote {
            Quote::Single => {
                if c == '\'' {
                    quote = Quote::None;
                } else {
                    push(&mut cur, i, Some(c));
                }
            }
            Quote::Double => match c {
                '"' => quote = Quote::None,
                '\\' => match chars.peek() {
                    Some(&(_, n)) if n == '"' || n == '\\' => {
                        push(&mut cur, i, Some(n));
                        chars.next();
                    }
                    None => trailing_backslash = true,
                    Some(_) => push(&mut cur, i, Some('\\')),
                },
                _ => push(&mut cur, i, Some(c)),
            },
            Quote::None => match c {
                c if c.is_whitespace() => {
                    if let Some(w) = cur.take() {
                        words.push(w);
                    }
                }
                '\'' => {
                    push(&mut cur, i, None);
                    quote = Quote::Single;
                }
                '"' => {
                    push(&mut cur, i, None);
                    quote = Quote::Double;
                }
                '\\' => match chars.next() {
                    Some((_, n)) => push(&mut cur, i, Some(n)),
                    None => {
                        push(&mut cur, i, None);
                        trailing_backslash = true;
                    }
                },
                _ => push(&mut cur, i, Some(c)),
            },
        }
    }
    let in_word = cur.is_some();
    if let Some(w) = cur {
        words.push(w);
    }
    Lexed { words, open: quote, in_word, trailing_backslash }
}

/// The words of a whole line; an open quote or a final lone backslash is an error.
pub fn split(line: &str) -> Result<Vec<String>, String> {
    let l = lex(line);
    match l.open {
        Quote::Single => return Err("missing closing single quote (')".into()),
        Quote::Double => return Err("missing closing double quote (\")".into()),
        Quote::None => {}
    }
    if l.trailing_backslash {
        return Err("the line ends with a lone backslash".into());
    }
    Ok(l.words.into_iter().map(|w| w.text).collect())
}

/// Writes `text` back as one word that [`lex`] reads as `text`, opening the
/// quote `style` (left open, so that completion can go on typing). With no
/// quote, special characters get a backslash.
pub fn quote_as(text: &str, style: Quote) -> String {
    match style {
        Quote::Single if !text.contains('\'') => format!("'{text}"),
        Quote::Double => {
            let mut s = String::from("\"");
            for c in text.chars() {
                if c == '"' || c == '\\' {
                    s.push('\\');
                }
                s.push(c);
            }
            s
        }
        _ => {
            let mut s = String::new();
            for c in text.chars() {
                if c.is_whitespace() || matches!(c, '\'' | '"' | '\\') {
                    s.push('\\');
                }
                s.push(c);
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        split(line).unwrap()
    }

    #[test]
    fn plain_words_and_whitespace() {
        assert_eq!(words("  ls   -l\tdocs  "), ["ls", "-l", "docs"]);
        assert!(words("").is_empty());
        assert!(words("   ").is_empty());
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(words(r#"put "my file.txt" 'other dir/'"#), ["put", "my file.txt", "other dir/"]);
        assert_eq!(words(r"cd my\ docs"), ["cd", "my docs"]);
        assert_eq!(words(r#"a"b c"d"#), ["ab cd"]);
        assert_eq!(words(r#"rm "" x"#), ["rm", "", "x"]);
        assert_eq!(words(r#"echo 'it''s' "say \"hi\"" "a\b" 'x\y'"#), ["echo", "its", r#"say "hi""#, r"a\b", r"x\y"]);
        assert_eq!(words(r#"echo "don't" 'say "no"'"#), ["echo", "don't", r#"say "no""#]);
        assert_eq!(words(r"a\\b \'"), [r"a\b", "'"]);
        assert_eq!(words("naïve 'ünï cödé'"), ["naïve", "ünï cödé"]);
    }

    #[test]
    fn unterminated_is_an_error() {
        assert!(split("cd 'docs").is_err());
        assert!(split("cd \"docs").is_err());
        assert!(split("cd docs\\").is_err());
    }

    #[test]
    fn positions_and_open_state() {
        let l = lex("cd \"my do");
        assert_eq!(l.words[1], Word { start: 3, text: "my do".into() });
        assert_eq!(l.open, Quote::Double);
        assert!(l.in_word);
        let l = lex("ls ");
        assert!(!l.in_word);
        assert_eq!(l.words.len(), 1);
        let l = lex("ls ''");
        assert!(l.in_word);
        assert_eq!(l.words[1], Word { start: 3, text: String::new() });
    }

    #[test]
    fn quote_as_round_trips() {
        for text in ["plain", "with space", "it's", r#"say "hi""#, r"back\slash", "tab\there", ""] {
            for style in [Quote::None, Quote::Single, Quote::Double] {
                let mut q = quote_as(text, style);
                // Close whatever quote was left open.
                match lex(&q).open {
                    Quote::Single => q.push('\''),
                    Quote::Double => q.push('"'),
                    Quote::None => {}
                }
                let got = split(&q).unwrap();
                if text.is_empty() && style == Quote::None {
                    assert!(got.is_empty());
                } else {
                    assert_eq!(got, [text], "{text:?} as {style:?}: {q}");
                }
            }
        }
        assert_eq!(quote_as("my docs/", Quote::None), r"my\ docs/");
        assert_eq!(quote_as("my docs/", Quote::Double), "\"my docs/");
    }
}
