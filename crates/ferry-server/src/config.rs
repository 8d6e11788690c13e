//! The server's configuration: every limit and timeout in one TOML file.
//!
//! Raw input (file and flags) is resolved once into [`ServerConfig`]; nothing
//! downstream reads the file again. Unknown keys are errors, so a typo never
//! silently leaves a default in force.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The documented default port (docs/PROTOCOL.md, README).
pub const DEFAULT_PORT: u16 = 7733;
/// The default port of the SSH front end (SFTP, scp, ssh).
pub const DEFAULT_SFTP_PORT: u16 = 7722;
pub const DEFAULT_DATA_DIR: &str = "ferry-data";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where the database, certificate, key and homes live.
    pub data_dir: PathBuf,
    /// TCP addresses to listen on (IPv4 or IPv6).
    pub listen: Vec<SocketAddr>,
    /// Also listen on this Unix-domain socket (plaintext: local peers only).
    pub unix_socket: Option<PathBuf>,
    /// Serve without TLS. Login still never reveals the password, but file
    /// data and names travel in the clear.
    pub insecure_plaintext: bool,
    pub limits: Limits,
    pub auth: AuthConfig,
    pub transfer: TransferConfig,
    pub exec: ExecConfig,
    pub time: crate::udp::TimeConfig,
    pub chat: crate::udp::ChatConfig,
    /// The FTP/FTPS front end (`[ftp]`, issue 15).
    pub ftp: crate::ftp::FtpConfig,
    pub sftp: SftpConfig,
    pub users: UsersConfig,
    /// Where homes are kept (`[storage]`, issue 16): the local disk, or an
    /// S3 bucket.
    pub storage: StorageConfig,
    /// The HTTP endpoint for Prometheus and load balancers (`[metrics]`).
    pub metrics: MetricsConfig,
}

/// `[metrics]`: where `/metrics` (Prometheus text) and `/healthz` are
/// served over plain HTTP. Off unless an address is given: a fixed default
/// port would collide when several servers (or tests) run on one machine.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `"127.0.0.1:9733"`; empty or absent: no endpoint. Port 0 picks a free
    /// port (printed at start). Keep it on a private address: the numbers
    /// are not secret, but they are not for the public either.
    #[serde(deserialize_with = "optional_address")]
    pub listen: Option<SocketAddr>,
}

/// An address as a string, the empty string being none.
fn optional_address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!("`{text}` is not an address: write IP:PORT (IPv6 as [::1]:9733)"))
    })
}

/// Which backend holds the homes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// Folders under `data_dir/homes` (or a user's own home folder).
    #[default]
    Local,
    /// Key prefixes in an S3 bucket (`S3Storage`).
    S3,
}

/// `[storage]`. Credentials for S3 come from the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), never from this file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub kind: StorageKind,
    /// The S3 endpoint URL (`http://127.0.0.1:3900`); unset means AWS itself.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    /// Path-style requests (`ENDPOINT/BUCKET/KEY`), as most S3-compatible
    /// servers want; false for virtual-hosted style (`BUCKET.ENDPOINT/KEY`).
    #[serde(alias = "path-style")]
    pub path_style: bool,
    /// Key prefix of the homes: a user's home is `PREFIX` + user name + `/`.
    pub prefix: String,
    /// Size of the parts of a multipart upload (S3 needs at least 5 MiB).
    pub part_size: u64,
    /// Bytes of one upload held in memory ahead of its sent parts, for
    /// writes that arrive out of order (SFTP, several tasks).
    pub max_buffer: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            kind: StorageKind::Local,
            endpoint: None,
            bucket: String::new(),
            region: "us-east-1".into(),
            path_style: true,
            prefix: "homes/".into(),
            part_size: 8 << 20,
            max_buffer: 64 << 20,
        }
    }
}

impl StorageConfig {
    /// The smallest part S3 accepts (all but the last part of an upload).
    pub const MIN_PART: u64 = 5 << 20;

    fn validate(&self) -> Result<(), ConfigError> {
        if self.kind != StorageKind::S3 {
            return Ok(());
        }
        if self.bucket.is_empty() {
            return Err(ConfigError::Invalid { key: "storage.bucket", problem: "must name a bucket".into() });
        }
        if self.region.is_empty() {
            return Err(ConfigError::Invalid { key: "storage.region", problem: "must name a region".into() });
        }
        if let Some(e) = &self.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(ConfigError::Invalid {
                key: "storage.endpoint",
                problem: "must be an http:// or https:// URL".into(),
            });
        }
        if self.prefix.contains("//") || self.prefix.starts_with('/') || self.prefix.chars().any(|c| c.is_control()) {
            return Err(ConfigError::Invalid {
                key: "storage.prefix",
                problem: "must be a key prefix without a leading '/', '//' or control characters".into(),
            });
        }
        // 5 MiB is S3's floor for every part but the last; 5 GiB its ceiling.
        if self.part_size < Self::MIN_PART || self.part_size > 5 << 30 {
            return Err(ConfigError::Invalid {
                key: "storage.part_size",
                problem: "must be between 5242880 (5 MiB) and 5368709120 (5 GiB)".into(),
            });
        }
        if self.max_buffer < self.part_size || self.max_buffer > 4 << 30 {
            return Err(ConfigError::Invalid {
                key: "storage.max_buffer",
                problem: "must be at least storage.part_size and at most 4294967296".into(),
            });
        }
        Ok(())
    }
}

/// Where users, SSH keys and login failure counts live (`[users]`, issue 16).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsersConfig {
    pub kind: UsersKind,
}

/// The user store. `postgres` takes its URL from `FERRY_DATABASE_URL`, never
/// from the file (it holds a password); several servers on one database
/// share users, keys, the server secret and login failure counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsersKind {
    /// `users.db` in the data folder: one server.
    #[default]
    Sqlite,
    Postgres,
}

/// The SSH front end (SFTP, scp, `ssh host cmd`): same users, homes, quotas
/// and exec policy; login and idle timeouts come from `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftpConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// SSH connections at once; further ones are refused.
    pub max_connections: usize,
    /// Open files and directories per SFTP session.
    pub max_handles: usize,
    /// Open files and directories of one user across all their SFTP
    /// sessions: each may hold a file descriptor of the server's.
    pub max_handles_per_user: usize,
    /// A cut upload (connection lost before the file was closed) is
    /// committed under its final name with the bytes that arrived, so that
    /// `reput` can finish it. Off: uploads are atomic, a cut one vanishes.
    pub keep_cut_uploads: bool,
}

impl Default for SftpConfig {
    fn default() -> Self {
        SftpConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_SFTP_PORT)),
            max_connections: 1024,
            max_handles: 256,
            max_handles_per_user: 1024,
            keep_cut_uploads: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Sessions at once; further connections are refused with `too_many_connections`.
    pub max_connections: usize,
    /// Connections from one address that have not logged in yet.
    pub max_unauthenticated_per_ip: usize,
    /// Seconds a connection may take to finish the TLS handshake and log in.
    pub login_timeout_secs: u64,
    /// Seconds a logged-in session may stay silent.
    pub idle_timeout_secs: u64,
    /// Seconds sessions get to finish after SIGINT/SIGTERM before they are cut.
    pub shutdown_grace_secs: u64,
    /// Largest JSON header accepted, in bytes.
    pub max_header_bytes: usize,
    /// Files and directories one user may have (`ferry user set --max-files`
    /// overrides it per user); 0 means unlimited.
    pub max_files_per_user: u64,
    /// Answer bytes one session may have queued that its peer has not taken.
    /// At the cap the server reads no further request of that session until
    /// the peer takes its answers (issue 12, item 1).
    pub max_unsent_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// PBKDF2 iterations for new verifiers (`ferry user add/passwd`).
    pub scram_iterations: u32,
    /// Failed logins from one address before delays start.
    pub free_failures: u32,
    /// Failed logins from one address before a temporary ban.
    pub ban_after: u32,
    pub ban_secs: u64,
    pub max_delay_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferConfig {
    /// Seconds after its last write that an abandoned partial upload is removed.
    pub partial_expiry_secs: u64,
    /// fsync uploads before they are renamed into place.
    pub fsync: bool,
    /// The file hashes offered to clients (docs/PROTOCOL.md, "Handshake").
    /// `sha256` is mandatory: every client has it. Without `blake3`, a
    /// client that asks for BLAKE3 gets SHA-256 (or a refusal if it named
    /// nothing else).
    pub hashes: Vec<ferry_proto::HashAlgo>,
}

impl TransferConfig {
    /// Whether the server offers `algo`.
    pub fn offers(&self, algo: ferry_proto::HashAlgo) -> bool {
        self.hashes.contains(&algo)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecConfig {
    /// Wall-clock limit of one command, seconds.
    pub timeout_secs: u64,
    pub max_per_user: usize,
    pub max_total: usize,
    /// When non-empty, only these program names may be run. A convenience,
    /// not a boundary: the kernel confinement is the boundary (README).
    pub allowlist: Vec<String>,
    /// When the server runs as root: the unprivileged OS user (name, or
    /// `uid` / `uid:gid`) commands run as. Unset means `nobody`. A server
    /// that does not run as root runs commands as itself and refuses a
    /// different `run_as` at start.
    pub run_as: Option<String>,
    /// Let commands open network connections. Off: each command gets an
    /// empty network namespace and Landlock denies TCP bind and connect.
    pub network: bool,
    /// Run commands without the kernel confinement (no Landlock, no
    /// namespaces, no resource caps): only for kernels that lack them.
    /// Logged as a warning at start.
    pub unconfined: bool,
    /// Processes one command may have at once (RLIMIT_NPROC in its own user namespace).
    pub max_processes: u64,
    /// Address space of each process of a command, bytes (RLIMIT_AS).
    pub max_memory_bytes: u64,
    /// CPU time of each process of a command, seconds (RLIMIT_CPU).
    pub max_cpu_secs: u64,
    /// Largest file a command may write, bytes (RLIMIT_FSIZE).
    pub max_file_bytes: u64,
    /// Open files of each process of a command (RLIMIT_NOFILE).
    pub max_open_files: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            listen: vec![SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT))],
            unix_socket: None,
            insecure_plaintext: false,
            limits: Limits::default(),
            auth: AuthConfig::default(),
            transfer: TransferConfig::default(),
            exec: ExecConfig::default(),
            time: Default::default(),
            chat: Default::default(),
            sftp: SftpConfig::default(),
            ftp: Default::default(),
            users: UsersConfig::default(),
            storage: StorageConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 20_000,
            max_unauthenticated_per_ip: 256,
            max_files_per_user: 1_000_000,
            login_timeout_secs: 30,
            idle_timeout_secs: 900,
            shutdown_grace_secs: 10,
            max_header_bytes: ferry_proto::frame::DEFAULT_MAX_HEADER,
            max_unsent_bytes: 1 << 20,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { scram_iterations: 100_000, free_failures: 3, ban_after: 20, ban_secs: 300, max_delay_ms: 2_000 }
    }
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            partial_expiry_secs: 7 * 24 * 3600,
            fsync: true,
            hashes: vec![ferry_proto::HashAlgo::Blake3, ferry_proto::HashAlgo::Sha256],
        }
    }
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            timeout_secs: 300,
            max_per_user: 4,
            max_total: 64,
            allowlist: Vec::new(),
            run_as: None,
            network: false,
            unconfined: false,
            max_processes: 64,
            max_memory_bytes: 4 << 30,
            max_cpu_secs: 300,
            max_file_bytes: 8 << 30,
            max_open_files: 1024,
        }
    }
}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("configuration {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("configuration key `{key}`: {problem}")]
    Invalid { key: &'static str, problem: String },
}

impl ServerConfig {
    /// Reads and validates a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let config: ServerConfig = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string().trim().to_string() })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        fn positive(key: &'static str, v: u64) -> Result<(), ConfigError> {
            if v == 0 { Err(ConfigError::Invalid { key, problem: "must be greater than 0".into() }) } else { Ok(()) }
        }
        if self.listen.is_empty() && self.unix_socket.is_none() {
            return Err(ConfigError::Invalid { key: "listen", problem: "no address to listen on".into() });
        }
        positive("limits.max_connections", self.limits.max_connections as u64)?;
        positive("limits.max_unauthenticated_per_ip", self.limits.max_unauthenticated_per_ip as u64)?;
        positive("limits.login_timeout_secs", self.limits.login_timeout_secs)?;
        positive("limits.idle_timeout_secs", self.limits.idle_timeout_secs)?;
        if self.limits.max_header_bytes < 1024 || self.limits.max_header_bytes > 16 * 1024 * 1024 {
            return Err(ConfigError::Invalid {
                key: "limits.max_header_bytes",
                problem: "must be between 1024 and 16777216".into(),
            });
        }
        // Any cap works (at the cap the queue is flushed first); below a few
        // KiB pipelined answers lose their batching, above 1 GiB it bounds nothing.
        if self.limits.max_unsent_bytes < 4096 || self.limits.max_unsent_bytes > 1 << 30 {
            return Err(ConfigError::Invalid {
                key: "limits.max_unsent_bytes",
                problem: "must be between 4096 and 1073741824".into(),
            });
        }
        if self.auth.scram_iterations < 4096 {
            return Err(ConfigError::Invalid {
                key: "auth.scram_iterations",
                problem: "must be at least 4096 (RFC 7677)".into(),
            });
        }
        positive("auth.ban_after", self.auth.ban_after as u64)?;
        positive("transfer.partial_expiry_secs", self.transfer.partial_expiry_secs)?;
        // The stdlib Python client (and any client before negotiation) has only SHA-256.
        if !self.transfer.offers(ferry_proto::HashAlgo::Sha256) {
            return Err(ConfigError::Invalid {
                key: "transfer.hashes",
                problem: "must include \"sha256\" (every client has it)".into(),
            });
        }
        positive("exec.timeout_secs", self.exec.timeout_secs)?;
        positive("exec.max_per_user", self.exec.max_per_user as u64)?;
        positive("exec.max_total", self.exec.max_total as u64)?;
        positive("exec.max_processes", self.exec.max_processes)?;
        positive("exec.max_cpu_secs", self.exec.max_cpu_secs)?;
        positive("exec.max_open_files", self.exec.max_open_files)?;
        // Below this even `sh` cannot map its libraries.
        if self.exec.max_memory_bytes < 16 << 20 {
            return Err(ConfigError::Invalid {
                key: "exec.max_memory_bytes",
                problem: "must be at least 16777216".into(),
            });
        }
        if self.exec.run_as.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::Invalid { key: "exec.run_as", problem: "must name a user".into() });
        }
        positive("sftp.max_connections", self.sftp.max_connections as u64)?;
        positive("sftp.max_handles", self.sftp.max_handles as u64)?;
        positive("sftp.max_handles_per_user", self.sftp.max_handles_per_user as u64)?;
        self.ftp.validate()?;
        self.storage.validate()?;
        Ok(())
    }

    pub fn login_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.login_timeout_secs)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.idle_timeout_secs)
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("users.db")
    }

    /// The SSH host key (ed25519, OpenSSH format, mode 0600).
    pub fn ssh_host_key_path(&self) -> PathBuf {
        self.data_dir.join("ssh_host_ed25519_key")
    }

    pub fn homes_dir(&self) -> PathBuf {
        self.data_dir.join("homes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServerConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(&path, text).unwrap();
        ServerConfig::from_file(&path)
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = parse("[limits]\nlogin_timeout_secs = 0\n").unwrap_err().to_string();
        assert!(err.contains("limits.login_timeout_secs"), "{err}");
        let err = parse("[limits]\nlogin_timeout = 5\n").unwrap_err().to_string();
        assert!(err.contains("login_timeout"), "{err}");
        let err = parse("[limits]\nmax_unsent_bytes = 0\n").unwrap_err().to_string();
        assert!(err.contains("limits.max_unsent_bytes"), "{err}");
        let err = parse("listen = [\"not an address\"]\n").unwrap_err().to_string();
        assert!(err.contains("listen"), "{err}");
        let err = parse("[transfer]\nhashes = [\"blake3\"]\n").unwrap_err().to_string();
        assert!(err.contains("transfer.hashes") && err.contains("sha256"), "{err}");
        let err = parse("[transfer]\nhashes = [\"md5\", \"sha256\"]\n").unwrap_err().to_string();
        assert!(err.contains("md5"), "{err}");
        let c = parse("[transfer]\nhashes = [\"sha256\"]\n").unwrap();
        assert!(!c.transfer.offers(ferry_proto::HashAlgo::Blake3));
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse("").unwrap();
        assert_eq!(c.listen[0].port(), DEFAULT_PORT);
        assert!(!c.insecure_plaintext);
        assert_eq!(c.limits.max_unsent_bytes, 1 << 20);
        assert_eq!(c.users.kind, UsersKind::Sqlite);
        assert_eq!(c.storage.kind, StorageKind::Local, "the default keeps homes on the local disk");
    }

    #[test]
    fn storage_s3_keys() {
        let c = parse(
            "[storage]\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:3900\"\nbucket = \"b\"\nregion = \"garage\"\npath-style = true\n",
        )
        .unwrap();
        assert_eq!((c.storage.kind, c.storage.bucket.as_str(), c.storage.path_style), (StorageKind::S3, "b", true));
        let err = parse("[storage]\nkind = \"s3\"\n").unwrap_err().to_string();
        assert!(err.contains("storage.bucket"), "{err}");
        let err = parse("[storage]\nkind = \"s3\"\nbucket = \"b\"\npart_size = 1024\n").unwrap_err().to_string();
        assert!(err.contains("storage.part_size"), "{err}");
        let err =
            parse("[storage]\nkind = \"s3\"\nbucket = \"b\"\nsecret_access_key = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("secret_access_key"), "credentials are not configuration keys: {err}");
        let err = parse("[storage]\nkind = \"tape\"\n").unwrap_err().to_string();
        assert!(err.contains("tape"), "{err}");
    }

    #[test]
    fn metrics_listen_is_an_address_or_nothing() {
        assert_eq!(parse("").unwrap().metrics.listen, None, "off by default");
        assert_eq!(parse("[metrics]\nlisten = \"\"\n").unwrap().metrics.listen, None);
        let c = parse("[metrics]\nlisten = \"127.0.0.1:9733\"\n").unwrap();
        assert_eq!(c.metrics.listen, Some(SocketAddr::from(([127, 0, 0, 1], 9733))));
        let err = parse("[metrics]\nlisten = \"localhost\"\n").unwrap_err().to_string();
        assert!(err.contains("localhost") && err.contains("IP:PORT"), "{err}");
        let err = parse("[metrics]\nport = 9733\n").unwrap_err().to_string();
        assert!(err.contains("port"), "{err}");
    }

    #[test]
    fn the_user_store_is_chosen_by_kind_and_its_url_is_not_a_key() {
        assert_eq!(parse("[users]\nkind = \"postgres\"\n").unwrap().users.kind, UsersKind::Postgres);
        let err = parse("[users]\nkind = \"mysql\"\n").unwrap_err().to_string();
        assert!(err.contains("mysql"), "{err}");
        let err = parse("[users]\nurl = \"postgres://a:b@h/d\"\n").unwrap_err().to_string();
        assert!(err.contains("url"), "{err}");
    }
}
