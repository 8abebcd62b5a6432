//! Krmx State for emitter: shared state on top of a Krmx server, wire-compatible with the reference TypeScript
//! packages (`@krmx/state` 0.0.1 and its client glue).
//!
//! Three models, each registered on an [`emitter_core::Server`] through its public listener API and served under a
//! *domain* (a name, so that one server can run several of a kind):
//!
//! - [`AtomModel`] → [`Atoms`]: named strings, numbers and booleans that any user sets and everyone sees
//!   (`atom/set`). For presence, settings, a cursor.
//! - [`StreamModel`] → [`Stream`]: a state derived from a log of typed events that every client folds itself
//!   (`stream/append`). For a shared log everyone may see in full: a chat, a board whose moves are public. A
//!   long-lived stream folds its log into one snapshot event at its bound ([`AtLimit::Compact`]).
//! - [`ProjectionModel`] → [`Projection`]: a state only the server holds, and a projection of it per user, kept up to
//!   date with deltas (`projection/set`, `projection/delta`, `projection/invalidate`). For hidden information: each
//!   player sees their own hand.
//!
//! The server is the authority in every model: the dispatcher of an event or action is the sender's username (never
//! what the client claims), and a payload reaches a handler only once serde has read it into the handler's type.
//! [`wire`] lists the messages; [`delta`] computes the deltas in jsondiffpatch 0.5.0's format, which the reference
//! client applies with `jsondiffpatch.patch`.
//!
//! ```
//! use emitter_core::{Message, Server};
//! use emitter_state::ProjectionModel;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default)]
//! struct Table { hands: Vec<(String, Vec<u8>)> }
//!
//! #[derive(Serialize)]
//! struct View { hand: Vec<u8>, others: Vec<(String, usize)> }
//!
//! #[derive(Deserialize)]
//! struct Deal { card: u8 }
//!
//! let server = Server::new();
//! let table = ProjectionModel::new(Table::default(), |table: &Table, username: &str| View {
//!     hand: table.hands.iter().find(|(who, _)| who == username).map(|(_, hand)| hand.clone()).unwrap_or_default(),
//!     others: table.hands.iter().filter(|(who, _)| who != username).map(|(who, hand)| (who.clone(), hand.len())).collect(),
//! })
//! .when("take", |table: &mut Table, dispatcher: &str, Deal { card }| {
//!     match table.hands.iter_mut().find(|(who, _)| who == dispatcher) {
//!         Some((_, hand)) => hand.push(card),
//!         None => table.hands.push((dispatcher.to_owned(), vec![card])),
//!     }
//! })
//! .register(&server, "table");
//!
//! let take = Message::with_payload("take", serde_json::json!({ "card": 7 }));
//! table.dispatch(&server, "alice", &take, None).unwrap();
//! assert_eq!(table.projection_of("alice").unwrap()["hand"], serde_json::json!([7]));
//! assert_eq!(table.projection_of("bob").unwrap()["others"], serde_json::json!([["alice", 1]]));
//! ```
//!
//! # Order
//!
//! Each domain has a lock, held while a change is applied and while its messages are computed and queued, and while a
//! linking user is sent its catch-up (the atoms, the stream's history, its projection). So a user never gets a delta
//! computed against a projection it was not sent, nor a stream event twice or not at all, and every user gets a
//! domain's messages in one order. Handlers, mappers and `with_state` closures run under that lock: keep them quick,
//! and never call `kick`, `join`, `unlink` or `atomically` from them (those take the membership path, whose listeners
//! may be waiting for the lock). The book's chapter *Shared state* (`docs/src/shared-state.md`) has the details.
//!
//! # On a cluster: through a journal
//!
//! `register` keeps a model in this process's memory. `register_journaled` serves it through a
//! [`Journal`](journal::Journal) (`emitter-redis` has one on Redis): each domain has one owner node at a time, which
//! runs the handlers and commits each change before anything goes out; every node keeps a replica from the committed
//! changes and serves the users linked on it (their catch-up, echoes, sets and deltas), so users on every node share
//! one state in one order, and a new owner continues from the last committed change. What a model does once per
//! cluster ([`ProjectionModel::on_leave`], [`AtomModel::clear_when_empty`]) runs on the owner. See [`journal`].
//!
//! A model registered with `register` on a node of a cluster
//! ([`Server::is_cluster_node`](emitter_core::Server::is_cluster_node)) keeps a state of its own on each node: it logs
//! a warning saying so, once, at registration or at the first request it serves there (models are usually registered
//! before the server becomes a node).
//!
//! # Feature flags
//!
//! This crate has no optional features.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod atom;
pub mod delta;
mod domain;
mod error;
mod handlers;
pub mod journal;
mod journaled;
mod projection;
mod registration;
mod stats;
mod stream;
mod value;
pub mod wire;

pub use atom::{AtomModel, Atoms, DEFAULT_MAX_ATOMS};
pub use error::Error;
pub use handlers::Outcome;
pub use projection::{Projection, ProjectionModel};
pub use stats::StateStats;
pub use stream::{
    AtLimit, Entry, Stream, StreamModel, DEFAULT_MAX_EVENTS, DEFAULT_MAX_HISTORY_BYTES, SNAPSHOT_DISPATCHER,
};
pub use value::Atom;
