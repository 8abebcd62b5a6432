//! The transport-agnostic core of a [Krmx](https://github.com/simonkarman/krmx) server.
//!
//! Krmx is a WebSocket + JSON protocol for realtime multi-user applications. A *connection* links to a long-lived
//! *user*: a dropped connection only unlinks its user, and a new connection can link to it again and carry on. This
//! crate holds the protocol types, the user and connection state machine, the listeners and the [`AuthContext`]; it
//! knows nothing of sockets. `emitter-axum` serves it over WebSocket.
//!
//! Listeners get their event's own arguments, as the reference's do: `server.on_message(|u, m| …)`. The user comes as
//! a [`UserRef`], which reads as the username and reaches the server (`u.server()`, `u.send(…)`), so a listener needs
//! no clone of the server.
//!
//! ```
//! use emitter_core::{Message, Server};
//!
//! let server = Server::builder().build();
//! server.on_link(|u| {
//!     let welcome = Message::with_payload("chat/welcome", format!("hi {u}"));
//!     u.send(&welcome).unwrap(); // linked users can be sent to
//! });
//! server.on_message(|u, m| {
//!     tracing::info!(username = %u, kind = m.kind, "message");
//!     let _ = u.server().broadcast(m, Some(u.username())); // listeners reach the server through the user
//! });
//! ```
//!
//! Events reach listeners, and the protocol messages reach clients, in one order that matches the reference
//! TypeScript server (`@krmx/server` 0.6): per user, join → link → (unlink → link)* → unlink → leave.
//!
//! # Crate map
//!
//! The source is grouped by concern (the book's "Crate map" chapter says more):
//!
//! - `protocol/`: the wire format ([`protocol`]): messages, frames, the `krmx/` vocabulary, versions, the username
//!   rule, [`QueryParam`].
//! - `transport/`: the seam a transport plugs into ([`transport`]): each connection's
//!   [`Outbox`](transport::Outbox), the fan-out log of broadcasts, the snapshot a link gets, close reasons, the
//!   upgrade request ([`Handshake`]) and the `Origin` policy (the
//!   [`Host`](transport::Host) it re-exports drives a server, so it lives in `server/host.rs`).
//! - `membership/`: users and their links, as data: the registry, the connections, messages kept for unlinked users,
//!   the allowance of warnings a client can cause.
//! - `cluster/`: the cluster seam ([`cluster`]): the sequencer and what it orders ([`cluster::ClusterHost`] is
//!   re-exported there from `server/node.rs`).
//! - `server/`: the application's API and everything that acts through a [`Server`]: [`ServerBuilder`], the listeners
//!   (`subscribe.rs`), [`UserRef`], [`Event`], [`AuthContext`], incoming link requests and messages (`link.rs`),
//!   applying join, link, unlink and leave (`changes.rs`), a server as a node of a cluster
//!   (`node.rs`), the transport's [`Host`](transport::Host) (`host.rs`), status and closing (`lifecycle.rs`), metrics
//!   text and health.
//! - `metrics/`: Prometheus metrics ([`metrics`]) and the [`Health`] check.
//! - `config.rs` (the settings, their defaults and limits: [`config`]), `error.rs` ([`Error`], [`Status`]), `sync.rs` (the locks,
//!   shuttle's under the `shuttle` feature), `shards.rs` (the sharded map `send` finds a user's connection in).
//!
//! The layers import one way, lower first: `protocol/`, then `transport/`, `config.rs`, `metrics/`, `cluster/`,
//! `membership/`, and `server/` on top (`tests/module_graph.rs` checks that no file or folder imports one that
//! imports it).
//!
//! # Feature flags
//!
//! | feature | default | what it turns on |
//! |---|---|---|
//! | `shuttle` | off | For emitter's own tests only: builds the core's locks on [shuttle](https://docs.rs/shuttle)'s, for the randomized concurrency checker (`cargo test -p emitter-core --features shuttle --test shuttle`). It changes no API; never turn it on in an application. |
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod cluster;
pub mod config;
mod error;
mod membership;
pub mod metrics;
pub mod protocol;
mod server;
mod shards;
mod sync;
pub mod transport;

pub use emitter_listeners::Subscription;
pub use error::{Error, Status};
pub use membership::registry::Broadcast;
pub use metrics::health::Health;
pub use protocol::query::QueryParam;
pub use protocol::username::is_valid_username;
pub use protocol::version::{AcceptedVersions, PROTOCOL_VERSION};
pub use protocol::Message;
pub use server::auth::{AuthContext, AuthInfo};
pub use server::builder::ServerBuilder;
pub use server::events::{Event, MembershipEvent, MembershipKind};
pub use server::{Server, Stats, User, UserRef, WeakServer};
pub use transport::handshake::Handshake;
