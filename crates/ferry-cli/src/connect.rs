//! From command-line arguments to a logged-in session: remote parsing, the
//! password (FERRY_PASSWORD or a prompt), and the host-key policy.

use std::io::{IsTerminal, Write};

use anyhow::{Context, Result, bail};
use ferry_client::{Client, ConnectOptions, HostKeyPolicy, KnownHosts, Remote, Session};

use crate::args::ConnArgs;

pub fn connect_options(conn: &ConnArgs) -> ConnectOptions {
    let policy = if let Some(fp) = &conn.fingerprint {
        HostKeyPolicy::Expect(fp.clone())
    } else if conn.accept_new {
        HostKeyPolicy::AcceptNew
    } else if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        HostKeyPolicy::Ask
    } else {
        HostKeyPolicy::Strict
    };
    let known_hosts = KnownHosts::new(conn.known_hosts.clone().unwrap_or_else(KnownHosts::default_path));
    let hashes =
        if conn.no_blake3 { vec![ferry_client::HashAlgo::Sha256] } else { ferry_client::HashAlgo::ALL.to_vec() };
    ConnectOptions {
        insecure_plaintext: conn.insecure_plaintext,
        policy,
        known_hosts,
        ask: Some(Box::new(ask_trust)),
        hashes,
        ..ConnectOptions::default()
    }
}

/// Asks on the terminal whether to trust an unknown server, as ssh does.
fn ask_trust(host: &str, fingerprint: &str) -> bool {
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "The authenticity of ferry server '{host}' can't be established.\n\
         Certificate fingerprint is {fingerprint}.\n\
         Are you sure you want to continue connecting (yes/no)? "
    );
    let _ = err.flush();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).is_ok() && line.trim().eq_ignore_ascii_case("yes")
}

pub fn password_for(remote: &Remote) -> Result<String> {
    if let Ok(p) = std::env::var("FERRY_PASSWORD") {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no password: set FERRY_PASSWORD or run from a terminal");
    }
    rpassword::prompt_password(format!("{}@{}'s password: ", remote.user, remote.host)).context("reading the password")
}

pub async fn login(remote: &Remote, conn: &ConnArgs) -> Result<Session> {
    let opts = connect_options(conn);
    let client = Client::connect(remote, &opts).await?;
    let password = password_for(remote)?;
    Ok(client.login(&password).await?)
}

/// Parses the remote and logs in.
pub async fn open(remote: &str, conn: &ConnArgs) -> Result<(Remote, Session)> {
    let remote = Remote::parse(remote)?;
    let session = login(&remote, conn).await?;
    Ok((remote, session))
}
