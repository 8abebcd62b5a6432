//! The seam between a model and a *journal*: where the changes of a domain are decided and kept when more than one
//! process serves it (a cluster), or when they must outlive the process (a store).
//!
//! Without a journal (the default) a model decides and applies every change in its own process, as it always did.
//! With one, each domain has one *owner* at a time (the journal decides which process, under a fenced lease): every
//! node [`submit`](Journal::submit)s its users' requests, the owner [`execute`](JournalModel::execute)s them in the
//! order the journal hands them over and the journal *commits* each resulting change before anything goes out. Every
//! node, the owner too, then [`apply`](JournalModel::apply)s the committed changes in order to its *replica* and
//! tells the users linked on that node. So a change reaches users on every node in the owner's order, a user who
//! links gets its catch-up from its node's replica at a committed place (never interleaved with a change), and when
//! the owner dies another process continues from the last committed change: no committed change lost, none applied
//! twice.
//!
//! `emitter-redis` implements [`Journal`] on Redis; the models implement [`JournalModel`], and are served through one
//! with `register_journaled` ([`ProjectionModel`](crate::ProjectionModel::register_journaled),
//! [`StreamModel`](crate::StreamModel::register_journaled), [`AtomModel`](crate::AtomModel::register_journaled)).
//!
//! A model submits each linked user's request of its protocol's shape as [`Request::Message`] (others are dropped on
//! the node), and the server-side `dispatch`, `append` and `set` as that dispatcher's; the server's own stream
//! compaction, rotation and atom set travel as [`Request::Message`]s from
//! [`SNAPSHOT_DISPATCHER`](crate::SNAPSHOT_DISPATCHER) of types no client request has. It tells the journal of the
//! membership changes its owner acts on ([`Journal::membership`]: a leave, for a projection's `on_leave` or the atoms'
//! `clear_when_empty`), from [`Server::on_membership`](emitter_core::Server::on_membership), under the membership
//! path's turn: `membership` and `submit` must never block.
//!
//! The smallest journal runs each request at once, on the one process there is (a real one orders requests from many
//! nodes, commits, and lets every node follow):
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::{Arc, Mutex};
//!
//! use emitter_core::{Message, Server};
//! use emitter_state::journal::{Committed, Journal, JournalError, JournalModel, MembershipChange, Request};
//! use emitter_state::ProjectionModel;
//!
//! #[derive(Default)]
//! struct AtOnce {
//!     domains: Mutex<HashMap<String, (Arc<dyn JournalModel>, u64)>>,
//! }
//!
//! impl Journal for AtOnce {
//!     fn attach(&self, domain: &str, model: Arc<dyn JournalModel>) -> Result<(), JournalError> {
//!         model.load(None, &[]).map_err(JournalError::Unavailable)?;
//!         model.own(None, &[]).map_err(JournalError::Unavailable)?;
//!         self.domains.lock().unwrap().insert(domain.to_owned(), (model, 0));
//!         Ok(())
//!     }
//!
//!     fn submit(&self, domain: &str, request: Request) -> Result<(), JournalError> {
//!         let mut domains = self.domains.lock().unwrap();
//!         let (model, n) = domains.get_mut(domain).ok_or(JournalError::Domain(domain.to_owned()))?;
//!         if let Some(change) = model.execute(&request) {
//!             *n += 1;
//!             model.apply(&Committed { n: *n, change });
//!         }
//!         Ok(())
//!     }
//!
//!     fn membership(&self, domain: &str, seq: u64, change: MembershipChange, user: &str) {
//!         let _ = self.submit(domain, Request::Membership { seq, change, user: user.to_owned() });
//!     }
//! }
//!
//! let server = Server::new();
//! let votes = ProjectionModel::new(0u32, |votes: &u32, _: &str| *votes)
//!     .when("vote", |votes: &mut u32, _: &str, (): ()| *votes += 1)
//!     .register_journaled(&server, "votes", Arc::new(AtOnce::default()))
//!     .unwrap();
//! votes.dispatch(&server, "ann", &Message::new("vote"), None).unwrap(); // queued for the owner: here, run at once
//! assert_eq!(votes.with_state(|votes| *votes), Ok(1));
//! assert!(votes.update(&server, |votes| *votes = 0).is_err()); // only the owner changes a journaled state
//! ```

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a node hands to the owner of a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
pub enum Request {
    /// A linked user's message for the domain, as the text it arrived as (so a stream can echo an event with its
    /// members in the order they were sent).
    Message {
        /// Who sent it: the server's word, never the client's.
        user: String,
        /// The whole Krmx message (`{"type": …, "payload": …}`), as received.
        text: String,
    },
    /// A membership change the cluster applied, for what a model does once per cluster (free a seat when a user
    /// leaves). Only the owner executes these; see [`Journal::membership`].
    Membership {
        /// Its place in the cluster's order of membership changes (the log's seq; on one process a counter).
        seq: u64,
        /// What changed.
        change: MembershipChange,
        /// Whose membership.
        user: String,
    },
}

/// A membership change, as a model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MembershipChange {
    /// The user joined.
    Join,
    /// A connection was linked to the user.
    Link,
    /// The user's connection was unlinked.
    Unlink,
    /// The user left.
    Leave,
}

/// One change the owner committed: what every node needs to bring its replica one step further and tell its users,
/// without running a handler (so a handler may deal cards at random: the replicas never diverge).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Committed {
    /// Its place in the domain's log: 1, 2, 3, … without gaps.
    pub n: u64,
    /// The change, in the model's own form (made by [`JournalModel::execute`], read by [`JournalModel::apply`]).
    pub change: Value,
}

/// A snapshot of a domain to start from: its state after the `n`th committed change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The last change the snapshot includes (0: none).
    pub n: u64,
    /// The state, in the model's own form (made by [`JournalModel::checkpoint`]).
    pub state: Value,
}

/// Why a journal did not take a request or a model.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JournalError {
    /// Its queue is full: the request is refused at once rather than waited for.
    Full,
    /// The journal is closed, or cannot reach its store.
    Unavailable(String),
    /// `domain` is attached already, or is not a valid name.
    Domain(String),
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Full => f.write_str("the journal's queue is full"),
            JournalError::Unavailable(why) => write!(f, "the journal is unavailable: {why}"),
            JournalError::Domain(why) => write!(f, "cannot attach the domain: {why}"),
        }
    }
}

impl std::error::Error for JournalError {}

/// Where the changes of domains are ordered, decided by one owner, committed, and followed by every node.
pub trait Journal: Send + Sync + 'static {
    /// Starts serving `domain` with `model` on this node: loads the replica ([`JournalModel::load`]), follows the
    /// committed changes ([`JournalModel::apply`], in order, each once), and executes requests whenever this node
    /// owns the domain.
    fn attach(&self, domain: &str, model: Arc<dyn JournalModel>) -> Result<(), JournalError>;

    /// Queues `request` for the owner of `domain`. Never blocks. The requests submitted on this node reach the owner
    /// in the order they were submitted (so one connection's requests keep their order).
    fn submit(&self, domain: &str, request: Request) -> Result<(), JournalError>;

    /// Tells the journal of a membership change this node applied (every node applies every change, in the
    /// cluster's order). The owner of `domain` executes it as a [`Request::Membership`], once per cluster: a new
    /// owner executes those with a higher `seq` than the last one committed.
    fn membership(&self, domain: &str, seq: u64, change: MembershipChange, user: &str);
}

/// What a model does for a [`Journal`]: as the owner, turn requests into changes; on every node, apply them.
pub trait JournalModel: Send + Sync + 'static {
    /// Makes the owner's state `checkpoint` (`None`: the initial state) followed by the changes `after` it. Called
    /// when this node becomes the owner, and when a commit was refused (another node owns the domain now).
    fn own(&self, checkpoint: Option<&Checkpoint>, after: &[Committed]) -> Result<(), String>;

    /// Executes `request` on the owner's state and returns the change to commit, or `None` when nothing is to be
    /// committed (a message of a bad shape or for another model: dropped, nothing sent). Sends nothing: what goes out
    /// goes out from [`apply`](JournalModel::apply), once committed.
    fn execute(&self, request: &Request) -> Option<Value>;

    /// A snapshot of the owner's state after the changes executed so far, to store with them, or `None` when none is
    /// worth storing now (the journal then keeps every change since the last one).
    fn checkpoint(&self) -> Option<Value>;

    /// This node does not own the domain any more: forget the owner's state.
    fn disown(&self);

    /// Makes the replica `checkpoint` (`None`: the initial state) followed by `after`, and sends the users linked on
    /// this node what they need to catch up. Called when the domain is attached, and when the node cannot follow on
    /// from where it is.
    fn load(&self, checkpoint: Option<&Checkpoint>, after: &[Committed]) -> Result<(), String>;

    /// Applies the next committed change (its `n` is one more than the last applied) to the replica and sends the
    /// users linked on this node what it means for them.
    fn apply(&self, committed: &Committed);
}
