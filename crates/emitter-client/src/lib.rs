//! A tokio client for [Krmx](https://github.com/simonkarman/krmx) servers: emitter's own and the reference
//! `@krmx/server`.
//!
//! It follows the reference client (`@krmx/client`): a [`Client`] opens one WebSocket, links it to a user, sends and
//! receives application messages, and keeps a list of the server's users up to date. Its status moves through
//! `initializing → connecting → connected → linking → linked → unlinking → closing → closed` ([`ClientStatus`]), and every
//! step is an event with `on_*`, `once_*` and `wait_for_*` methods. Reconnecting after a dropped connection is
//! opt-in ([`Reconnect`]). It connects to `ws://` URLs, and to `wss://` ones over TLS (rustls), trusting the
//! platform's root certificates unless told otherwise ([`TlsConfig`], [`ClientBuilder::tls`]).
//!
//! ```
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let server = emitter_core::Server::new();
//! # server.on_message(|u, m| { let _ = u.server().broadcast(m, None); });
//! # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let port = emitter_axum::listen_on(&server, listener).await?;
//! # let url = format!("ws://127.0.0.1:{port}/");
//! use emitter_client::Client;
//!
//! let client = Client::new();
//! client.on_join(|username| tracing::info!(username, "joined"));
//! client.connect(&url).await?;
//! client.link("simon", None).await?;
//!
//! // This server relays every message to everyone.
//! let echoed = client.wait_for_payload::<String>("chat/say");
//! client.send_payload("chat/say", "hello")?;
//! assert_eq!(echoed.await?, "hello");
//!
//! client.leave().await?;
//! client.disconnect(false).await?;
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//!
//! This crate has no optional features: `wss://` is always available, through rustls with *ring* as its only
//! crypto provider (no aws-lc-rs, no OpenSSL), and the platform's root certificates through `rustls-native-certs`.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

// The modules form layers; each uses only layers below its own, so there are no cycles:
//   listeners, client       the public API: `on_*`/`once_*`/`wait_for_*`, and everything else
//   requests, incoming      the state changes: what the application asks for, what the connection reports
//   state                   the configuration, the listener lists, and the state behind the dispatch lock
//   connection, reconnect   the socket task and the reconnect loop, which know the client only through the traits
//                           they define (`Handler`, `Relink`) and only weakly
//   tls                     the rustls configuration for wss:// URLs
//   event, error            the events and the errors
mod client;
mod connection;
mod error;
mod event;
mod incoming;
mod listeners;
mod reconnect;
mod redact;
mod requests;
mod state;
mod tls;

pub use client::{Client, ClientBuilder, DEFAULT_CLOSE_TIMEOUT, DEFAULT_VERSION};
pub use emitter_core::{Message, User};
pub use emitter_listeners::Subscription;
pub use error::{ClientStatus, Error};
pub use event::ClientEvent;
pub use reconnect::Reconnect;
pub use tls::TlsConfig;
