//! Where the operators' `Admin` service listens: a Unix socket (the
//! default, mode 0600, so only the host's user reaches it) or, when
//! `[host] admin_allow_tcp = true` opts in, a TCP address.
//!
//! Owns: reading and writing that address. Must not bind or connect.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// What `host.admin_address` and the CLI's `--admin-socket` name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminAddress {
    /// A Unix socket file.
    Unix(PathBuf),
    /// A TCP address: reachable by anyone who can reach the port.
    Tcp(SocketAddr),
}

/// How a TCP admin address is written.
const TCP_SCHEME: &str = "tcp://";

impl AdminAddress {
    /// Reads `tcp://HOST:PORT`, or else a socket path (a relative one
    /// joined to `base`).
    pub fn parse(text: &str, base: &Path) -> Result<AdminAddress, String> {
        match text.strip_prefix(TCP_SCHEME) {
            Some(address) => address.parse().map(AdminAddress::Tcp).map_err(|_| {
                format!("`{text}` is not a TCP address; write e.g. \"tcp://127.0.0.1:50052\", or a Unix socket path")
            }),
            None if text.is_empty() => Err("is empty; give a Unix socket path or tcp://HOST:PORT".to_owned()),
            None => Ok(AdminAddress::Unix(base.join(text))),
        }
    }
}

impl fmt::Display for AdminAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminAddress::Unix(path) => write!(f, "{}", path.display()),
            AdminAddress::Tcp(address) => write!(f, "{TCP_SCHEME}{address}"),
        }
    }
}

impl std::str::FromStr for AdminAddress {
    type Err = String;

    /// For the command line: a relative path stays relative to the
    /// working directory.
    fn from_str(text: &str) -> Result<AdminAddress, String> {
        AdminAddress::parse(text, Path::new(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_tcp_addresses() {
        let base = Path::new("/etc/pitboss");
        assert_eq!(AdminAddress::parse("admin.sock", base), Ok(AdminAddress::Unix(base.join("admin.sock"))));
        assert_eq!(AdminAddress::parse("/run/a.sock", base), Ok(AdminAddress::Unix("/run/a.sock".into())));
        let tcp = AdminAddress::parse("tcp://127.0.0.1:50052", base).unwrap();
        assert_eq!(tcp, AdminAddress::Tcp("127.0.0.1:50052".parse().unwrap()));
        assert_eq!(tcp.to_string(), "tcp://127.0.0.1:50052", "written back as read");
        let bad = AdminAddress::parse("tcp://localhost", base).unwrap_err();
        assert!(bad.contains("`tcp://localhost` is not a TCP address"), "{bad}");
        assert!(AdminAddress::parse("", base).is_err());
    }
}
