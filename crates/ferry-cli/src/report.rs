//! What the CLI prints that it did not write itself: names and messages from
//! the server, and error chains.
//!
//! Everything that can quote a server's name or message goes through
//! [`clean`] (issue 12, item 5: a name must not reach the terminal as raw
//! escape sequences).

use std::borrow::Cow;

/// `s` with control characters shown as escapes (`\x1b`, `\n`, ...).
pub fn clean(s: &str) -> Cow<'_, str> {
    ferry_client::names::escape_controls(s)
}

/// The error and its causes, as anyhow's `{:#}` prints them; escaped.
pub fn error_chain(e: &anyhow::Error) -> String {
    clean(&format!("{e:#}")).into_owned()
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

    #[test]
    fn error_lines_are_escaped() {
        let e = anyhow::anyhow!("name \u{1b}[31mred");
        assert_eq!(error_chain(&e), "name \\x1b[31mred");
    }
}
