//! The command line, parsed once into typed arguments.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "ferry", version, about = "A multi-user file-transfer server and client", propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (defaults: ./ferry-data, 127.0.0.1:7733, TLS on).
    Serve(ServeArgs),
    /// Manage users in the server's data folder (works while the server runs).
    #[command(subcommand)]
    User(UserCommand),
    /// Log in and report success (checks credentials and the server's key).
    Login(RemoteOnly),
    /// Interactive shell, in the habits of sftp.
    Shell(RemoteOnly),
    /// List a remote directory: one name a line, or -l for details.
    Ls(LsArgs),
    /// Show one remote entry's details.
    Stat(PathsArgs),
    /// Make remote directories.
    Mkdir(MkdirArgs),
    /// Remove remote files (-r: whole trees).
    Rm(RmArgs),
    /// Remove empty remote directories.
    Rmdir(PathsArgs),
    /// Rename or move within the remote home.
    Mv(MvArgs),
    /// Upload: ferry put LOCAL... USER@HOST[:PORT]/REMOTE
    Put(PutArgs),
    /// Download: ferry get USER@HOST[:PORT]/REMOTE... LOCAL
    Get(GetArgs),
    /// Print the server's hash of remote files (SHA-256 unless --algo), as sha256sum/b3sum do.
    Hash(HashArgs),
    /// Show used space, quota and free space.
    Df(RemoteOnly),
    /// Run a command on the server: ferry exec REMOTE -- COMMAND [ARGS...]
    Exec(ExecArgs),
    /// Ask a ferry time service for the time: ferry time HOST[:PORT] [FORMAT]
    Time(TimeArgs),
    /// Run the UDP time service on its own.
    TimeServer(TimeServerArgs),
    /// Join a chat relay: ferry chat HOST[:PORT] --name NICK
    Chat(ChatArgs),
    /// Run the UDP chat relay on its own.
    ChatServer(ChatServerArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Data folder: database, certificate, homes.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Address to listen on (repeatable; IPv6 as [::1]:7733).
    #[arg(long)]
    pub listen: Vec<SocketAddr>,
    /// Configuration file (TOML); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Also listen on this Unix-domain socket.
    #[arg(long)]
    pub unix_socket: Option<PathBuf>,
    /// Serve WITHOUT TLS: file names and data travel in the clear.
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// Address of the SSH front end (SFTP, scp, ssh); default 127.0.0.1:7722.
    #[arg(long)]
    pub sftp_listen: Option<SocketAddr>,
    /// Do not start the SSH front end.
    #[arg(long, conflicts_with = "sftp_listen")]
    pub no_sftp: bool,
    /// Also serve FTP/FTPS on this address (turns `[ftp]` on).
    #[arg(long, value_name = "ADDR")]
    pub ftp_listen: Option<SocketAddr>,
    /// Serve /metrics (Prometheus) and /healthz over HTTP on this address
    /// (sets `[metrics] listen`; port 0 picks a free one).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    #[arg(long)]
    pub max_connections: Option<usize>,
    #[arg(long)]
    pub idle_timeout_secs: Option<u64>,
    #[arg(long)]
    pub login_timeout_secs: Option<u64>,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    pub log_format: String,
}

#[derive(Debug, Args, Clone)]
pub struct DataArgs {
    /// Data folder of the server.
    #[arg(long, global = true)]
    pub data: Option<PathBuf>,
    /// Configuration file of the server (for its data folder and iterations).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user (the password is asked, or read from stdin).
    Add {
        name: String,
        /// Quota, e.g. 10MiB, 2GiB or unlimited.
        #[arg(long)]
        quota: Option<String>,
        /// Most files and directories, e.g. 10000, unlimited, or default
        /// (the server's limits.max_files_per_user).
        #[arg(long)]
        max_files: Option<String>,
        #[arg(long)]
        allow_exec: bool,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
        /// Home directory (default: DATA/homes/NAME).
        #[arg(long)]
        home: Option<PathBuf>,
        #[command(flatten)]
        data: DataArgs,
    },
    /// List users.
    List {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Change a user's password.
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Change a user's quota, file limit or exec permission.
    Set {
        name: String,
        #[arg(long)]
        quota: Option<String>,
        /// Most files and directories, e.g. 10000, unlimited, or default.
        #[arg(long)]
        max_files: Option<String>,
        #[arg(long, conflicts_with = "deny_exec")]
        allow_exec: bool,
        #[arg(long)]
        deny_exec: bool,
        #[command(flatten)]
        data: DataArgs,
    },
    /// SSH public keys for SFTP, scp and ssh logins.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Delete a user (their files stay unless --remove-home).
    Del {
        name: String,
        #[arg(long)]
        remove_home: bool,
        #[command(flatten)]
        data: DataArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Add a key: one line of a .pub or authorized_keys file, e.g.
    /// 'ssh-ed25519 AAAA... comment' (ed25519 or ECDSA).
    Add {
        name: String,
        key: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// List a user's keys with their fingerprints.
    List {
        name: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Remove a key by its fingerprint (SHA256:..., as `key list` shows).
    Del {
        name: String,
        fingerprint: String,
        #[command(flatten)]
        data: DataArgs,
    },
}

/// How the client treats the server's identity and transport.
#[derive(Debug, Args, Clone, Default)]
pub struct ConnArgs {
    /// Pin the server's fingerprint if it is not known yet.
    #[arg(long, global = true)]
    pub accept_new: bool,
    /// Expect exactly this fingerprint (SHA256:...) and pin it.
    #[arg(long, global = true)]
    pub fingerprint: Option<String>,
    /// Known-hosts file (default: ~/.config/ferry/known_hosts).
    #[arg(long, global = true)]
    pub known_hosts: Option<PathBuf>,
    /// Connect without TLS (only to a server started with --insecure-plaintext).
    #[arg(long, global = true)]
    pub insecure_plaintext: bool,
    /// No progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Offer only SHA-256 at login, as a client without BLAKE3: transfers
    /// are then verified with SHA-256.
    #[arg(long, global = true)]
    pub no_blake3: bool,
}

#[derive(Debug, Args)]
pub struct RemoteOnly {
    /// [ferry://]USER@HOST[:PORT][/PATH]
    pub remote: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// [ferry://]USER@HOST[:PORT][/PATH]
    pub remote: String,
    /// Long form: kind, size, modification time, name.
    #[arg(short, long)]
    pub long: bool,
    /// Include entries whose names start with a dot.
    #[arg(short, long)]
    pub all: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct PathsArgs {
    /// [ferry://]USER@HOST[:PORT]/PATH
    pub remote: String,
    /// More paths on the same server.
    pub more: Vec<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// A file hash as the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AlgoArg {
    Sha256,
    Blake3,
}

impl From<AlgoArg> for ferry_client::HashAlgo {
    fn from(a: AlgoArg) -> Self {
        match a {
            AlgoArg::Sha256 => ferry_client::HashAlgo::Sha256,
            AlgoArg::Blake3 => ferry_client::HashAlgo::Blake3,
        }
    }
}

#[derive(Debug, Args)]
pub struct HashArgs {
    /// [ferry://]USER@HOST[:PORT]/PATH
    pub remote: String,
    /// More paths on the same server.
    pub more: Vec<String>,
    /// The hash to print. SHA-256 by default whatever the session
    /// negotiated, so that the output stays what `sha256sum -c` checks;
    /// blake3 prints what `b3sum -c` checks.
    #[arg(long, value_enum, default_value = "sha256")]
    pub algo: AlgoArg,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct MkdirArgs {
    #[arg(short, long)]
    pub parents: bool,
    pub remote: String,
    pub more: Vec<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Remove directories and everything in them.
    #[arg(short, long)]
    pub recursive: bool,
    pub remote: String,
    pub more: Vec<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct MvArgs {
    /// Replace an existing target.
    #[arg(short, long)]
    pub force: bool,
    /// USER@HOST[:PORT]/FROM
    pub remote: String,
    /// TO: a path, or USER@HOST[:PORT]/PATH on the same server and user
    pub to: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// Whole directories.
    #[arg(short, long)]
    pub recursive: bool,
    /// Continue an interrupted upload.
    #[arg(short = 'c', long = "continue")]
    pub resume: bool,
    /// Overwrite existing files.
    #[arg(short, long)]
    pub force: bool,
    /// LOCAL... then the remote target last.
    #[arg(required = true, num_args = 2..)]
    pub paths: Vec<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[arg(short, long)]
    pub recursive: bool,
    #[arg(short = 'c', long = "continue")]
    pub resume: bool,
    #[arg(short, long)]
    pub force: bool,
    /// REMOTE (USER@HOST/PATH), more remote paths, then the local target last.
    #[arg(required = true, num_args = 2..)]
    pub paths: Vec<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    pub remote: String,
    /// The command and its arguments (after --).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
    /// Do not forward stdin (the command sees it closed).
    #[arg(short = 'n', long)]
    pub no_stdin: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct TimeArgs {
    /// HOST[:PORT] of the time service (default port 7734).
    pub server: String,
    /// strftime format; default %Y-%m-%d %H:%M:%S.
    pub format: Option<String>,
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// HOST[:PORT] of the chat relay (default port 7735).
    pub server: String,
    #[arg(long)]
    pub name: String,
}

/// Each service has its own arguments, so `--help` lists only its own
/// flags (issue 13, item 8: `chat-server --help` listed the time service's `--utc`).
#[derive(Debug, Args)]
pub struct TimeServerArgs {
    /// Address to listen on (default 127.0.0.1:7734).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Answer in UTC instead of the server's local time.
    #[arg(long)]
    pub utc: bool,
}

#[derive(Debug, Args)]
pub struct ChatServerArgs {
    /// Address to listen on (default 127.0.0.1:7735).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}
