//! The server's metrics (issue 16): one Prometheus registry per `Core`
//! (`core.metrics`), the metrics in it, and small handles the front ends and
//! the core hold to record into it. `monitor.rs` serves them as Prometheus
//! text on `/metrics`; the `prometheus` crate encodes them.
//!
//! What is recorded where, each once:
//! - sessions: an [`OpenSession`] held for a connection's life, by each
//!   front end's connection task;
//! - logins: [`Metrics::login`], where each front end learns the outcome
//!   from the core's authenticator; the outcome is named here, once;
//! - file data and transfer durations: a [`Transfer`] per upload or
//!   download, fed by the front end as bytes move, observed when it ends well;
//! - quota refusals and upload takeovers: [`HomeMetrics`], held by `Home`;
//! - storage latency and errors: [`StorageMetrics`], held by
//!   `storage/metered.rs`, the decorator around every home's storage.
//!
//! Label values are fixed sets (front ends, outcomes, directions, storage
//! operations): nothing from a peer becomes a label, so the series stay few.

use std::time::{Duration, Instant};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::auth::AuthError;

/// The `frontend` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frontend {
    Framed,
    Sftp,
    Ftp,
}

impl Frontend {
    pub const ALL: [Frontend; 3] = [Frontend::Framed, Frontend::Sftp, Frontend::Ftp];

    pub fn as_str(self) -> &'static str {
        match self {
            Frontend::Framed => "framed",
            Frontend::Sftp => "sftp",
            Frontend::Ftp => "ftp",
        }
    }
}

/// The `direction` label of transfer durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Upload,
    Download,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Upload => "upload",
            Direction::Download => "download",
        }
    }
}

/// The `outcome` label of logins.
const OUTCOMES: [&str; 4] = ["ok", "failed", "throttled", "error"];

/// Every metric of one server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sessions_open: IntGaugeVec,
    sessions: IntCounterVec,
    logins: IntCounterVec,
    received: IntCounterVec,
    sent: IntCounterVec,
    transfer_seconds: HistogramVec,
    home: HomeMetrics,
    storage: StorageMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry holding every metric, each labelled series of a
    /// fixed label set present from the start (at 0), so that a rate over
    /// it needs no first event.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        // The names and labels below are constants: registering them can
        // only fail on a programming error, which the unit test below catches.
        let register = |c: Box<dyn prometheus::core::Collector>| registry.register(c).expect("constant, unique metric");
        let frontend = &["frontend"];
        let sessions_open = IntGaugeVec::new(
            Opts::new("ferry_sessions_open", "Connections open now, logged in or not, per front end."),
            frontend,
        )
        .expect("valid metric");
        let sessions = IntCounterVec::new(
            Opts::new("ferry_sessions_total", "Connections accepted and admitted since the start, per front end."),
            frontend,
        )
        .expect("valid metric");
        let logins = IntCounterVec::new(
            Opts::new(
                "ferry_logins_total",
                "Login attempts by outcome: ok, failed (wrong password, unknown user, bad exchange), \
                 throttled (address banned), error (user store unavailable).",
            ),
            &["frontend", "outcome"],
        )
        .expect("valid metric");
        let received = IntCounterVec::new(
            Opts::new("ferry_received_bytes_total", "File data received from clients in uploads, per front end."),
            frontend,
        )
        .expect("valid metric");
        let sent = IntCounterVec::new(
            Opts::new("ferry_sent_bytes_total", "File data sent to clients in downloads, per front end."),
            frontend,
        )
        .expect("valid metric");
        let transfer_seconds = HistogramVec::new(
            HistogramOpts::new(
                "ferry_transfer_duration_seconds",
                "Duration of uploads and downloads that completed, from their start to their last byte.",
            )
            // 10 ms to about 45 min.
            .buckets(prometheus::exponential_buckets(0.01, 4.0, 10).expect("valid buckets")),
            &["frontend", "direction"],
        )
        .expect("valid metric");
        let quota_refusals = IntCounter::new(
            "ferry_quota_refusals_total",
            "Operations refused because the user's byte quota or file limit was reached.",
        )
        .expect("valid metric");
        let takeovers = IntCounter::new(
            "ferry_upload_takeovers_total",
            "Resumed uploads that took the upload over from a session still holding it.",
        )
        .expect("valid metric");
        let storage_seconds = HistogramVec::new(
            HistogramOpts::new(
                "ferry_storage_operation_duration_seconds",
                "Duration of each storage call of the homes, by operation.",
            )
            // 100 µs to about 26 s.
            .buckets(prometheus::exponential_buckets(0.0001, 4.0, 10).expect("valid buckets")),
            &["operation"],
        )
        .expect("valid metric");
        let storage_errors = IntCounterVec::new(
            Opts::new(
                "ferry_storage_errors_total",
                "Storage calls that failed with an I/O error (not the answers a request earns, such as not found).",
            ),
            &["operation"],
        )
        .expect("valid metric");
        for fe in Frontend::ALL {
            let fe = fe.as_str();
            sessions_open.with_label_values(&[fe]);
            sessions.with_label_values(&[fe]);
            received.with_label_values(&[fe]);
            sent.with_label_values(&[fe]);
            for outcome in OUTCOMES {
                logins.with_label_values(&[fe, outcome]);
            }
            for d in [Direction::Upload, Direction::Download] {
                transfer_seconds.with_label_values(&[fe, d.as_str()]);
            }
        }
        register(Box::new(sessions_open.clone()));
        register(Box::new(sessions.clone()));
        register(Box::new(logins.clone()));
        register(Box::new(received.clone()));
        register(Box::new(sent.clone()));
        register(Box::new(transfer_seconds.clone()));
        register(Box::new(quota_refusals.clone()));
        register(Box::new(takeovers.clone()));
        register(Box::new(storage_seconds.clone()));
        register(Box::new(storage_errors.clone()));
        Metrics {
            registry,
            sessions_open,
            sessions,
            logins,
            received,
            sent,
            transfer_seconds,
            home: HomeMetrics { quota_refusals, takeovers },
            storage: StorageMetrics { seconds: storage_seconds, errors: storage_errors },
        }
    }

    /// Everything, in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String fails only on a metric family without
        // metrics, which the registry never gathers.
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }

    /// The content type of [`Self::encode`]'s text.
    pub fn content_type() -> &'static str {
        prometheus::TEXT_FORMAT
    }

    /// Counts a connection of `frontend` and holds it open until dropped.
    pub fn session(&self, frontend: Frontend) -> OpenSession {
        let fe = frontend.as_str();
        self.sessions.with_label_values(&[fe]).inc();
        let open = self.sessions_open.with_label_values(&[fe]);
        open.inc();
        OpenSession(open)
    }

    /// Records a login's outcome as the authenticator gave it.
    pub fn login<T>(&self, frontend: Frontend, result: &Result<T, AuthError>) {
        match result {
            Ok(_) => self.login_ok(frontend),
            Err(e) => self.login_error(frontend, e),
        }
    }

    /// A login that succeeded without a password (an SSH key).
    pub fn login_ok(&self, frontend: Frontend) {
        self.logins.with_label_values(&[frontend.as_str(), "ok"]).inc();
    }

    /// A login the authenticator refused, named by its error: the one
    /// mapping from the core's login errors to outcomes.
    pub fn login_error(&self, frontend: Frontend, e: &AuthError) {
        let outcome = match e {
            AuthError::Failed | AuthError::Protocol(_) => "failed",
            AuthError::Banned { .. } => "throttled",
            AuthError::Store(_) | AuthError::Random => "error",
        };
        self.logins.with_label_values(&[frontend.as_str(), outcome]).inc();
    }

    /// Starts measuring an upload or a download of `frontend`.
    pub fn transfer(&self, frontend: Frontend, direction: Direction) -> Transfer {
        let fe = frontend.as_str();
        let bytes = match direction {
            Direction::Upload => &self.received,
            Direction::Download => &self.sent,
        };
        Transfer {
            bytes: bytes.with_label_values(&[fe]),
            duration: self.transfer_seconds.with_label_values(&[fe, direction.as_str()]),
            started: Instant::now(),
        }
    }

    /// What each `Home` records into.
    pub fn home(&self) -> HomeMetrics {
        self.home.clone()
    }

    /// What the storage decorator records into.
    pub fn storage(&self) -> StorageMetrics {
        self.storage.clone()
    }
}

/// A connection counted in `ferry_sessions_open` until dropped.
#[derive(Debug)]
pub struct OpenSession(IntGauge);

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One upload or download: its bytes are counted as they move
/// ([`Transfer::add`]); its duration only if it completes
/// ([`Transfer::finish`]), so that the histogram holds transfers, not
/// refusals or cuts.
#[derive(Debug)]
pub struct Transfer {
    bytes: IntCounter,
    duration: Histogram,
    started: Instant,
}

impl Transfer {
    pub fn add(&self, bytes: u64) {
        self.bytes.inc_by(bytes);
    }

    pub fn finish(self) {
        self.duration.observe(self.started.elapsed().as_secs_f64());
    }
}

/// What `Home` counts: quota refusals and upload takeovers. The default is
/// a pair of counters in no registry (homes made outside a server, in tests).
#[derive(Debug, Clone)]
pub struct HomeMetrics {
    quota_refusals: IntCounter,
    takeovers: IntCounter,
}

impl Default for HomeMetrics {
    fn default() -> Self {
        let detached = || IntCounter::new("ferry_detached", "counted nowhere").expect("valid metric");
        HomeMetrics { quota_refusals: detached(), takeovers: detached() }
    }
}

impl HomeMetrics {
    pub fn quota_refused(&self) {
        self.quota_refusals.inc();
    }

    pub fn upload_taken_over(&self) {
        self.takeovers.inc();
    }
}

/// What the storage decorator records: each call's duration by operation,
/// and the calls that failed.
#[derive(Debug, Clone)]
pub struct StorageMetrics {
    seconds: HistogramVec,
    errors: IntCounterVec,
}

impl StorageMetrics {
    /// One call of `operation` that took `took`, failed or not. The error
    /// count of an operation shows (at 0) from its first call, so that an
    /// error ratio has both of its series.
    pub fn observe(&self, operation: &'static str, took: Duration, failed: bool) {
        self.seconds.with_label_values(&[operation]).observe(took.as_secs_f64());
        let errors = self.errors.with_label_values(&[operation]);
        if failed {
            errors.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric registers (names and labels are valid and unique) and
    /// shows in the text, the fixed label sets at 0 from the start.
    #[test]
    fn registers_and_encodes() {
        let m = Metrics::new();
        let text = m.encode();
        for name in [
            "ferry_sessions_open{frontend=\"sftp\"} 0",
            "ferry_sessions_total{frontend=\"ftp\"} 0",
            "ferry_logins_total{frontend=\"framed\",outcome=\"throttled\"} 0",
            "ferry_received_bytes_total{frontend=\"framed\"} 0",
            "ferry_sent_bytes_total{frontend=\"framed\"} 0",
            "ferry_transfer_duration_seconds_count{direction=\"upload\",frontend=\"ftp\"} 0",
            "ferry_quota_refusals_total 0",
            "ferry_upload_takeovers_total 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        let open = m.session(Frontend::Framed);
        m.login(Frontend::Framed, &Err::<(), _>(AuthError::Banned { remaining: Duration::from_secs(1) }));
        let t = m.transfer(Frontend::Sftp, Direction::Download);
        t.add(7);
        t.finish();
        m.transfer(Frontend::Sftp, Direction::Upload).add(3);
        m.storage().observe("stat", Duration::from_millis(1), true);
        let text = m.encode();
        for line in [
            "ferry_sessions_open{frontend=\"framed\"} 1",
            "ferry_logins_total{frontend=\"framed\",outcome=\"throttled\"} 1",
            "ferry_sent_bytes_total{frontend=\"sftp\"} 7",
            "ferry_received_bytes_total{frontend=\"sftp\"} 3",
            "ferry_transfer_duration_seconds_count{direction=\"download\",frontend=\"sftp\"} 1",
            // A transfer that never finished is not a duration.
            "ferry_transfer_duration_seconds_count{direction=\"upload\",frontend=\"sftp\"} 0",
            "ferry_storage_operation_duration_seconds_count{operation=\"stat\"} 1",
            "ferry_storage_errors_total{operation=\"stat\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        drop(open);
        assert!(m.encode().contains("ferry_sessions_open{frontend=\"framed\"} 0"));
    }
}
