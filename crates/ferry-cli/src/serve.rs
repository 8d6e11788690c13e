//! `ferry serve`: resolve the configuration, start, print what a person
//! needs (address, fingerprint, how to add a user), stop on SIGINT/SIGTERM.

use anyhow::{Context, Result};
use ferry_server::ServerConfig;
use tokio::signal::unix::{SignalKind, signal};

use crate::args::ServeArgs;

fn config_from(a: &ServeArgs) -> Result<ServerConfig> {
    let mut c = match &a.config {
        Some(p) => ServerConfig::from_file(p)?,
        None => ServerConfig::default(),
    };
    if let Some(d) = &a.data {
        c.data_dir = d.clone();
    }
    if !a.listen.is_empty() {
        c.listen = a.listen.clone();
    }
    if let Some(u) = &a.unix_socket {
        c.unix_socket = Some(u.clone());
    }
    if a.insecure_plaintext {
        c.insecure_plaintext = true;
    }
    if let Some(addr) = a.sftp_listen {
        c.sftp.listen = addr;
        c.sftp.enabled = true;
    }
    if a.no_sftp {
        c.sftp.enabled = false;
    }
    if let Some(addr) = a.ftp_listen {
        c.ftp.enabled = true;
        c.ftp.listen = addr;
    }
    if let Some(addr) = a.metrics_listen {
        c.metrics.listen = Some(addr);
    }
    if let Some(n) = a.max_connections {
        c.limits.max_connections = n;
    }
    if let Some(n) = a.idle_timeout_secs {
        c.limits.idle_timeout_secs = n;
    }
    if let Some(n) = a.login_timeout_secs {
        c.limits.login_timeout_secs = n;
    }
    c.validate()?;
    Ok(c)
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        // libunftp logs every command at info, each with its whole session
        // state in the span: its warnings are enough by default. rustls
        // warns on each handshake whose SNI is an IP address (lftp sends
        // one on every FTPS data connection), which it then ignores: noise.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,libunftp=warn,rustls::msgs::handshake=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

pub async fn run(a: ServeArgs) -> Result<u8> {
    let config = config_from(&a)?;
    init_logs(&a.log_format);
    // Installed before the banner: a script that sends SIGTERM as soon as it
    // reads the banner must get a graceful stop, not the default kill.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let data_dir = config.data_dir.clone();
    let (running, prepared) = ferry_server::start(config).await?;
    for addr in &running.tcp_addrs {
        println!("ferry listening on {addr}");
    }
    if let Some(ssh) = &running.ssh {
        println!("sftp listening on {}", ssh.addr);
        if ssh.generated_key {
            println!("generated a new SSH host key in {}", data_dir.display());
        }
        println!("ssh host key fingerprint: {} (ED25519)", ssh.fingerprint);
    }
    if let Some(addr) = running.ftp_addr {
        println!("ferry FTP listening on {addr}");
    }
    if let Some(addr) = running.metrics_addr {
        println!("metrics listening on http://{addr}/metrics (health: /healthz)");
    }
    if prepared.user_count == 0 {
        println!("no users yet; add one with:  ferry user add NAME --data {}", data_dir.display());
    }
    // The last line of the banner: scripts wait for it.
    match &running.fingerprint {
        Some(fp) => {
            if prepared.generated_certificate {
                println!("generated a new TLS key and certificate in {}", data_dir.display());
            }
            println!("certificate fingerprint: {fp}");
        }
        None => println!("WARNING: --insecure-plaintext: file names and data travel unencrypted"),
    }
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received: stopping");
    running.shutdown();
    running.wait().await;
    Ok(0)
}
