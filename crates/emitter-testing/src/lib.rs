//! What emitter's own tests share (never published).
//!
//! - [`TestClient`]: a well-behaved client, `emitter_client::Client`, with everything it received kept in order, for
//!   tests that drive a server the way an application's client would.
//! - [`RawClient`]: Krmx frames written and read by hand over a WebSocket, for tests that check the exact frames a
//!   server sends or that must send what no client library would: raw or malformed text, binary frames, broken
//!   WebSocket frames, a flood.
//! - [`Receive`]: how a test reads what either client received (the next frame, up to a frame, the end).
//! - [`frames`]: the `krmx/…` frames as JSON, to compare with what a client read.
//! - [`start`], [`listen`] and [`Recorder`]: a server on a free loopback port, and its events as lines.
//! - [`http`]: one plain HTTP/1.1 request.
//! - [`redis`]: a throwaway `redis-server` on a free loopback port, for the cluster tests.
//!
//! Every wait is bounded by [`TIMEOUT`]; a test never sleeps and hopes. To show that something did *not* happen, make
//! something else happen after it that must arrive next (a marker message), and check the order.

use std::future::Future;
use std::time::Duration;

use emitter_core::Server;

pub mod frames;
mod http;
mod logs;
mod raw;
mod receive;
mod recorder;
pub mod redis;
mod test_client;

pub use frames::*;
pub use http::{get_until_status, http, http_get, HttpResponse};
pub use logs::CapturedLogs;
pub use raw::{opcode, RawClient, WsStream};
pub use receive::Receive;
pub use recorder::{start, start_default, Recorder};
pub use test_client::TestClient;

/// How long any single wait in a test may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Awaits `future` for at most [`TIMEOUT`], naming `what` in the panic if it takes longer.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(TIMEOUT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Serves `server` with `emitter_axum::listen_on` on a free loopback port; returns the port.
pub async fn listen(server: &Server) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    emitter_axum::listen_on(server, listener).await.unwrap()
}

/// A [`User`](emitter_core::User), to compare with a server's or a client's list.
pub fn user(username: &str, is_linked: bool) -> emitter_core::User {
    emitter_core::User {
        username: username.to_owned(),
        is_linked,
    }
}

/// `ws://127.0.0.1:{port}{path}`.
pub fn ws_url(port: u16, path: &str) -> String {
    format!("ws://127.0.0.1:{port}{path}")
}
