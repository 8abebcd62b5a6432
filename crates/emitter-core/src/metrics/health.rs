//! Whether a server is fit to serve, for a load balancer's health check.

use std::fmt;

use crate::error::Status;

/// Whether a server is fit to serve, as a load balancer's health check asks (see [`Server::health`]).
///
/// [`Server::health`]: crate::Server::health
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// It is listening (and, on a cluster, holds its lease).
    Healthy,
    /// It is not listening: not started yet, closing, or closed.
    NotListening(Status),
    /// It is a node of a cluster that lost its lease: it closed its connections and refuses links until it has
    /// registered again.
    LeaseLost,
}

impl Health {
    /// Whether it is [`Healthy`](Health::Healthy).
    ///
    /// ```
    /// assert!(emitter_core::Health::Healthy.is_healthy());
    /// assert!(!emitter_core::Health::LeaseLost.is_healthy());
    /// ```
    pub fn is_healthy(self) -> bool {
        self == Health::Healthy
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Healthy => f.write_str("ok"),
            Health::NotListening(status) => write!(f, "the server is {status}"),
            Health::LeaseLost => f.write_str("this node lost its cluster lease"),
        }
    }
}
