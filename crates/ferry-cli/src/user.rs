//! `ferry user ...`: administration against the server's data folder.

use std::io::{BufRead, IsTerminal};

use anyhow::{Context, Result, bail};
use ferry_server::ServerConfig;
use ferry_server::users::{Admin, UserChanges};

use crate::args::{DataArgs, KeyCommand, UserCommand};
use crate::oneshot::human;

/// The server configuration the admin command should act on.
pub fn server_config(data: &DataArgs) -> Result<ServerConfig> {
    let mut config = match &data.config {
        Some(p) => ServerConfig::from_file(p)?,
        None => ServerConfig::default(),
    };
    if let Some(d) = &data.data {
        config.data_dir = d.clone();
    }
    Ok(config)
}

/// `10MiB`, `2GiB`, `500000`, or `unlimited`.
pub fn parse_quota(s: &str) -> Result<Option<u64>> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("unlimited") || t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let size: bytesize::ByteSize =
        t.parse().map_err(|e| anyhow::anyhow!("invalid size {s:?} (try 10MiB, 2GiB or unlimited): {e}"))?;
    Ok(Some(size.as_u64()))
}

/// `10000`, `unlimited`, or `default` (the server's `limits.max_files_per_user`).
pub fn parse_max_files(s: &str) -> Result<Option<u64>> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("unlimited") {
        return Ok(Some(u64::MAX));
    }
    if t.eq_ignore_ascii_case("default") {
        return Ok(None);
    }
    let n: u64 =
        t.parse().map_err(|_| anyhow::anyhow!("invalid file limit {s:?} (try 10000, unlimited or default)"))?;
    Ok(Some(n))
}

fn show_max_files(m: Option<u64>) -> String {
    match m {
        None => "default".into(),
        Some(u64::MAX) => "unlimited".into(),
        Some(n) => n.to_string(),
    }
}

fn read_password(stdin_flag: bool, name: &str) -> Result<String> {
    if stdin_flag || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("reading the password from stdin")?;
        let p = line.trim_end_matches(['\n', '\r']).to_string();
        if p.is_empty() {
            bail!("empty password on stdin");
        }
        return Ok(p);
    }
    let p = rpassword::prompt_password(format!("New password for {name}: "))?;
    let again = rpassword::prompt_password("Again: ")?;
    if p != again {
        bail!("the passwords do not match");
    }
    Ok(p)
}

pub fn run(cmd: UserCommand) -> Result<u8> {
    match cmd {
        UserCommand::Add { name, quota, max_files, allow_exec, password_stdin, home, data } => {
            let admin = Admin::open(server_config(&data)?)?;
            let quota = quota.as_deref().map(parse_quota).transpose()?.flatten();
            let max_files = max_files.as_deref().map(parse_max_files).transpose()?;
            let password = read_password(password_stdin, &name)?;
            admin.add(&name, &password, quota, allow_exec, home)?;
            if let Some(m) = max_files {
                admin.set(&name, UserChanges { max_files: Some(m), ..UserChanges::default() })?;
            }
            println!("added user {name}");
        }
        UserCommand::List { data } => {
            let admin = Admin::open(server_config(&data)?)?;
            println!("{:<24} {:>12} {:>10} {:>5}", "user", "quota", "max files", "exec");
            for u in admin.list()? {
                let quota = u.quota_bytes.map(human).unwrap_or_else(|| "unlimited".into());
                let files = show_max_files(u.max_files);
                println!("{:<24} {:>12} {:>10} {:>5}", u.name, quota, files, if u.allow_exec { "yes" } else { "no" });
            }
        }
        UserCommand::Passwd { name, password_stdin, data } => {
            let admin = Admin::open(server_config(&data)?)?;
            admin.get(&name)?;
            let password = read_password(password_stdin, &name)?;
            admin.passwd(&name, &password)?;
            println!("password changed for {name}");
        }
        UserCommand::Set { name, quota, max_files, allow_exec, deny_exec, data } => {
            let admin = Admin::open(server_config(&data)?)?;
            let changes = UserChanges {
                quota: quota.as_deref().map(parse_quota).transpose()?,
                max_files: max_files.as_deref().map(parse_max_files).transpose()?,
                allow_exec: if allow_exec {
                    Some(true)
                } else if deny_exec {
                    Some(false)
                } else {
                    None
                },
            };
            let u = admin.set(&name, changes)?;
            let quota = u.quota_bytes.map(human).unwrap_or_else(|| "unlimited".into());
            let files = show_max_files(u.max_files);
            let exec = if u.allow_exec { "allowed" } else { "denied" };
            println!("{}: quota {quota}, max files {files}, exec {exec}", u.name);
        }
        UserCommand::Key(KeyCommand::Add { name, key, data }) => {
            let admin = Admin::open(server_config(&data)?)?;
            let k = admin.add_key(&name, &key)?;
            println!("added key {} for {name}", k.fingerprint);
        }
        UserCommand::Key(KeyCommand::List { name, data }) => {
            let admin = Admin::open(server_config(&data)?)?;
            for k in admin.keys(&name)? {
                let kind = k.key.split_whitespace().next().unwrap_or("");
                println!("{} {kind} {}", k.fingerprint, k.comment);
            }
        }
        UserCommand::Key(KeyCommand::Del { name, fingerprint, data }) => {
            let admin = Admin::open(server_config(&data)?)?;
            admin.delete_key(&name, &fingerprint)?;
            println!("removed key {fingerprint} from {name}");
        }
        UserCommand::Del { name, remove_home, data } => {
            let admin = Admin::open(server_config(&data)?)?;
            admin.delete(&name, remove_home)?;
            println!("deleted user {name}");
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::parse_quota;

    #[test]
    fn quotas() {
        assert_eq!(parse_quota("10MiB").unwrap(), Some(10 * 1024 * 1024));
        assert_eq!(parse_quota("2GiB").unwrap(), Some(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_quota("unlimited").unwrap(), None);
        assert_eq!(parse_quota("1234").unwrap(), Some(1234));
        assert!(parse_quota("ten").is_err());
    }
}
