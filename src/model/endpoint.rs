//! Where the service reaches a container lambda's pod: a TCP address (a Kubernetes
//! Service, a pod on the host network) or a unix socket in a directory the service
//! shares with that pod alone. Depends on nothing else in the crate.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where one pod (or a lambda's Service) listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A unix socket on this machine.
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(address) => write!(f, "{address}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(address: SocketAddr) -> Self {
        Self::Tcp(address)
    }
}
