//! Progress bars on stderr (indicatif): bytes, rate and ETA per file, and a
//! count for many files. Hidden when stderr is not a terminal or with -q.

use std::io::IsTerminal;
use std::time::Duration;

use ferry_client::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Bar {
    bar: ProgressBar,
    visible: bool,
}

impl Bar {
    pub fn new(quiet: bool) -> Self {
        let visible = !quiet && std::io::stderr().is_terminal();
        let bar = ProgressBar::with_draw_target(
            None,
            if visible { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() },
        );
        Bar { bar, visible }
    }

    /// A bar counting files (for many small files).
    pub fn files(quiet: bool, total: u64, what: &str) -> Self {
        let b = Bar::new(quiet);
        b.bar.set_length(total);
        b.bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} files {per_sec} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b.bar.set_message(what.to_string());
        b.bar.enable_steady_tick(Duration::from_millis(200));
        b
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Bar {
    fn begin(&self, name: &str, what: &str, total: u64) {
        self.bar.reset();
        self.bar.set_length(total);
        self.bar.set_position(0);
        self.bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        // The name is the server's or the user's: never raw on the terminal.
        self.bar.set_message(format!("{what} {}", crate::report::clean(name)));
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn note(&self, message: &str) {
        // Notes matter even without a terminal (a restarted resume, say).
        let message = crate::report::clean(message);
        if self.visible {
            self.bar.println(format!("ferry: {message}"));
        } else {
            eprintln!("ferry: {message}");
        }
    }

    fn end(&self) {
        self.bar.finish_and_clear();
    }
}
