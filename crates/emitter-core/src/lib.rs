//! The transport-agnostic core of a [Krmx](https://github.com/simonkarman/krmx) server.
//!
//! Krmx is a WebSocket + JSON protocol for realtime multi-user applications. A *connection* links to a long-lived
//! *user*: a dropped connection only unlinks its user, and a new connection can link to it again and carry on. This
//! crate holds the protocol types, the user and connection state machine, the listeners and the [`AuthContext`]; it
//! knows nothing of sockets. `emitter-axum` serves it over WebSocket.
//!
//! ```
//! use emitter_core::{Message, Server};
//!
//! let server = Server::builder().build();
//! server.on_link(|server, username| {
//!     let welcome = Message::with_payload("chat/welcome", format!("hi {username}"));
//!     server.send(username, &welcome).unwrap(); // linked users can be sent to
//! });
//! server.on_message(|_, username, message| tracing::info!(username, kind = message.kind, "message"));
//! ```
//!
//! Events reach listeners, and the protocol messages reach clients, in one order that matches the reference
//! TypeScript server (`@krmx/server` 0.6): per user, join → link → (unlink → link)* → unlink → leave.
//!
//! # Feature flags
//!
//! | feature | default | what it turns on |
//! |---|---|---|
//! | `shuttle` | off | For emitter's own tests only: builds the core's locks on [shuttle](https://docs.rs/shuttle)'s, for the randomized concurrency checker (`cargo test -p emitter-core --features shuttle --test shuttle`). It changes no API; never turn it on in an application. |
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod auth;
mod builder;
mod close_reason;
pub mod cluster;
mod clustered;
mod config;
mod connections;
mod error;
mod events;
mod fanout;
mod handshake;
mod id;
mod kept;
mod lifecycle;
mod link;
mod log_limit;
mod membership;
mod metrics;
mod ops;
mod origin;
mod outbox;
pub mod protocol;
mod query;
mod registry;
mod server;
mod shards;
mod snapshot;
mod subscribe;
mod sync;
pub mod transport;
mod username;
mod version;
mod vocabulary;

pub use auth::{AuthContext, AuthInfo};
pub use builder::ServerBuilder;
pub use clustered::ClusterHost;
pub use config::{
    Config, KeepLimits, LinkPolicy, RateLimit, DEFAULT_CLOSE_DRAIN_DEADLINE, DEFAULT_LINK_DEADLINE,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_JSON_DEPTH, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_UNLINKED_CONNECTIONS,
    DEFAULT_MAX_USERS, DEFAULT_OUTBOUND_BUDGET, DEFAULT_OUTBOUND_QUEUE, DEFAULT_WRITE_DEADLINE, MAX_USERNAME_BYTES,
};
pub use emitter_listeners::Subscription;
pub use error::{Error, Status};
pub use events::Event;
pub use handshake::{Handshake, MAX_HANDSHAKE_HEADER_BYTES};
pub use metrics::{ClusterCounts, Health, METRICS_CONTENT_TYPE};
pub use protocol::Message;
pub use query::QueryParam;
pub use registry::Broadcast;
pub use server::{Server, Stats, User};
pub use username::is_valid_username;
pub use version::{AcceptedVersions, PROTOCOL_VERSION};
