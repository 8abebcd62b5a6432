//! Kicks users that stay unlinked too long.
//!
//! A user that is not linked to a connection keeps its place on the server, so that its client can come back. This
//! example puts a limit on that with the server's grace period: a user that stays unlinked for `after` (since it was
//! unlinked, or since it joined when nobody linked to it) leaves, as a kick would make it, and a link in time keeps it.
//! It works the same on a cluster, where the cluster keeps the time.

use std::time::Duration;

use emitter_core::Server;

/// A server that kicks every user that stays unlinked for `after`.
pub fn server(after: Duration) -> Server {
    let server = Server::builder().grace_period(after).build();
    server.on_leave(|u| tracing::info!(username = %u, "left"));
    server
}
