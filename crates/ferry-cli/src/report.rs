//! What the CLI prints that it did not write itself: names and messages from
//! the server, and error chains.
//!
//! Everything that can quote a server's name or message goes through
//! [`clean`] (issue 12, item 5: a name must not reach the terminal as raw
//! escape sequences), and an error is printed as its chain with each cause
//! once (issue 13, item 8: an error whose message already quotes its source
//! printed "Connection refused (os error 111): Connection refused (os error 111)").

use std::borrow::Cow;

/// `s` with control characters shown as escapes (`\x1b`, `\n`, ...).
pub fn clean(s: &str) -> Cow<'_, str> {
    ferry_client::names::escape_controls(s)
}

/// The error and its causes joined by ": ", as anyhow's `{:#}` does, except
/// that a cause whose text the line already holds is left out; escaped.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    clean(&line).into_owned()
}

/// `eprintln!` for a line that may quote the server: escaped.
macro_rules! eprintln_clean {
    ($($arg:tt)*) => {
        eprintln!("{}", $crate::report::clean(&format!($($arg)*)))
    };
}

/// `println!` for a line that may quote the server: escaped.
macro_rules! println_clean {
    ($($arg:tt)*) => {
        println!("{}", $crate::report::clean(&format!($($arg)*)))
    };
}

pub(crate) use {eprintln_clean, println_clean};

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn each_cause_once_and_escaped() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let shown = refused.to_string();
        let e = anyhow::Error::from(ferry_client::ClientError::Connect { addr: "h:1".into(), source: refused });
        assert_eq!(error_chain(&e), format!("cannot connect to h:1: {shown}"));
        let e = Err::<(), _>(std::io::Error::other("disk on fire")).context("writing \x1b").unwrap_err();
        assert_eq!(error_chain(&e), "writing \\x1b: disk on fire");
        let e = anyhow::anyhow!("name \u{1b}[31mred");
        assert_eq!(error_chain(&e), "name \\x1b[31mred");
    }
}
