//! Connection ids.

use std::fmt;

/// Identifies one connection for the lifetime of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub(crate) u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cn-{}", self.0)
    }
}

impl ConnectionId {
    /// The id's number: what a cluster's [`LinkAddr`](crate::cluster::LinkAddr) names the connection by.
    pub fn get(self) -> u64 {
        self.0
    }
}
