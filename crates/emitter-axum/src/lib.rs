//! Serves an [`emitter_core::Server`] over WebSocket with [axum](https://docs.rs/axum).
//!
//! Run it standalone with [`listen`], or mount it into your own app with [`router`] (merge or nest) or [`layer`] (a
//! tower layer that passes every other request through). [`metrics_route`] and [`health_route`] add the server's
//! Prometheus metrics at `GET /metrics` and a health check at `GET /health`.
//!
//! ```no_run
//! use emitter_core::Server;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let server = Server::new();
//!     server.on_message(|u, m| {
//!         let _ = u.server().broadcast(m, Some(u.username())); // relay to everyone else
//!     });
//!     let port = emitter_axum::listen(&server, ("127.0.0.1", 8082)).await?;
//!     println!("listening on {port}");
//!     tokio::signal::ctrl_c().await?;
//!     server.close().await?;
//!     Ok(())
//! }
//! ```
//!
//! Each connection is one task: it reads frames into the core, writes the frames the core queued for it (several per
//! flush), and pings at the configured interval; a connection that missed the previous pong is closed. Binary frames
//! are read like text frames. A frame over the size limit, invalid UTF-8 or a WebSocket protocol error closes that
//! connection only.
//!
//! Every close is a WebSocket close frame whose code says why (1009 for a message over the size limit, 1001 when the
//! server closes, the code of [`CloseReason`](emitter_core::transport::CloseReason) when the core closes it, …; the
//! book's Limits chapter has the table), and a client's close frame is answered with its own code. A closing
//! connection gets what was queued for it first, within the server's `close_drain_deadline`. Each connection logs
//! why it ended once, at INFO; a connection refused before the upgrade gets a 503 whose body says why.
//!
//! # Feature flags
//!
//! This crate has no optional features. It serves with axum's `ws` feature and tokio's `net`, which it turns on itself.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod burst;
mod connection;
mod mount;
mod ops;
mod serve;
mod upgrade;

pub use mount::{layer, router, KrmxLayer, KrmxService};
pub use ops::{health_handler, health_route, metrics_handler, metrics_route};
pub use serve::{listen, listen_on, mark_listening, serve, ListenError};

/// Compiles the Rust example in the repository's README as a doctest.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
