//! Remote addresses: `[ferry://]USER@HOST[:PORT][/PATH]`, or
//! `[ferry://]USER@unix:SOCKET[:PATH]` for a server's Unix-domain socket
//! (issue 13, item 7).

use std::fmt;
use std::path::Path;

use crate::ClientError;

pub const DEFAULT_PORT: u16 = 7733;
const UNIX_PREFIX: &str = "unix:";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub user: String,
    /// Host name or address; IPv6 without brackets. For a Unix-domain
    /// socket, `unix:` and the socket's path (and `port` is 0): see
    /// [`Remote::unix_socket`].
    pub host: String,
    pub port: u16,
    /// The path after the host, if any (`/` included), else `None`.
    pub path: Option<String>,
}

impl Remote {
    pub fn parse(s: &str) -> Result<Remote, ClientError> {
        let bad = |why: &str| {
            ClientError::Usage(format!(
                "invalid remote {s:?}: {why} (expected [ferry://]USER@HOST[:PORT][/PATH] or USER@unix:SOCKET[:PATH])"
            ))
        };
        let rest = s.strip_prefix("ferry://").unwrap_or(s);
        let (user, rest) = rest.split_once('@').ok_or_else(|| bad("missing USER@"))?;
        if user.is_empty() {
            return Err(bad("empty user"));
        }
        if let Some(unix) = rest.strip_prefix(UNIX_PREFIX) {
            // The socket's path ends at the first `:`; what follows is the
            // remote path. (A socket path with a `:` cannot be named here.)
            let (socket, path) = match unix.split_once(':') {
                Some((socket, path)) => (socket, Some(path).filter(|p| !p.is_empty())),
                None => (unix, None),
            };
            if socket.is_empty() {
                return Err(bad("empty socket path after unix:"));
            }
            return Ok(Remote {
                user: user.to_string(),
                host: format!("{UNIX_PREFIX}{socket}"),
                port: 0,
                path: path.map(str::to_string),
            });
        }
        let (hostport, path) = match rest.find('/') {
            Some(i) if !rest.starts_with('[') || rest[..i].contains(']') => (&rest[..i], Some(rest[i..].to_string())),
            _ => (rest, None),
        };
        let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
            let (h, after) = inner.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("bad port"))?,
                None if after.is_empty() => DEFAULT_PORT,
                None => return Err(bad("junk after ]")),
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h.to_string(), p.parse().map_err(|_| bad("bad port"))?),
                _ => (hostport.to_string(), DEFAULT_PORT),
            }
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        Ok(Remote { user: user.to_string(), host, port, path })
    }

    /// The server's Unix-domain socket, for a `USER@unix:SOCKET` remote.
    pub fn unix_socket(&self) -> Option<&Path> {
        self.host.strip_prefix(UNIX_PREFIX).map(Path::new)
    }

    /// Whether `other` names the same user on the same server, as typed.
    pub fn same_account(&self, other: &Remote) -> bool {
        self.user == other.user && self.host == other.host && self.port == other.port
    }

    /// `host:port` as used to connect and in known_hosts (`[v6]:port`);
    /// `unix:SOCKET` for a Unix-domain socket.
    pub fn host_port(&self) -> String {
        if self.unix_socket().is_some() {
            self.host.clone()
        } else if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.user, self.host_port())?;
        match &self.path {
            Some(p) if self.unix_socket().is_some() => write!(f, ":{p}"),
            Some(p) => f.write_str(p),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let r = Remote::parse("ferry://alice@example.org:99/a/b c").unwrap();
        assert_eq!(
            (r.user.as_str(), r.host.as_str(), r.port, r.path.as_deref()),
            ("alice", "example.org", 99, Some("/a/b c"))
        );
        let r = Remote::parse("bob@127.0.0.1").unwrap();
        assert_eq!((r.port, r.path), (DEFAULT_PORT, None));
        let r = Remote::parse("bob@[::1]:8000/x").unwrap();
        assert_eq!((r.host.as_str(), r.port, r.path.as_deref()), ("::1", 8000, Some("/x")));
        assert_eq!(r.host_port(), "[::1]:8000");
        assert!(Remote::parse("nohost").is_err());
        assert!(Remote::parse("@h").is_err());
        assert!(Remote::parse("a@h:notaport").is_err());
    }

    #[test]
    fn unix_socket_forms() {
        let r = Remote::parse("alice@unix:/run/ferry.sock:/docs/a b").unwrap();
        assert_eq!(r.unix_socket(), Some(Path::new("/run/ferry.sock")));
        assert_eq!((r.user.as_str(), r.path.as_deref()), ("alice", Some("/docs/a b")));
        assert_eq!(r.to_string(), "alice@unix:/run/ferry.sock:/docs/a b");
        assert_eq!(Remote::parse(&r.to_string()).unwrap(), r);
        let r = Remote::parse("ferry://bob@unix:rel.sock").unwrap();
        assert_eq!((r.unix_socket(), r.path.as_deref()), (Some(Path::new("rel.sock")), None));
        assert_eq!(r.host_port(), "unix:rel.sock");
        assert!(Remote::parse("bob@unix:").is_err());
        assert!(Remote::parse("bob@unix::/x").is_err());
        assert_eq!(Remote::parse("bob@127.0.0.1").unwrap().unix_socket(), None);
        assert!(r.same_account(&Remote::parse("bob@unix:rel.sock:/x").unwrap()));
        assert!(!r.same_account(&Remote::parse("eve@unix:rel.sock").unwrap()));
    }
}
