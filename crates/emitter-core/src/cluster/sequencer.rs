//! The seam a cluster plugs into: where the order of membership changes comes from, and how messages reach the users
//! linked on other nodes. `emitter-redis` implements it on Redis; the core knows nothing of Redis.
//!
//! In one process, a membership change takes its place in the order by taking the server's sequencer lock (see the
//! book's concepts chapter). In a cluster, a node *submits* a change to a [`Sequencer`], which decides it against the
//! cluster-wide state and returns the [`LogEntry`]s it produced, each with its place (`seq`) in the one order of the
//! cluster; every node then applies every entry, in that order, to its own replica of the registry. The steps that
//! apply an entry are the same ones the single process uses: the registry does not care where the order came from.
//!
//! Applications do not use this module; `emitter-redis` does.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::error::Error;
use crate::protocol::{Frame, Rejection};

/// Where a user is linked: a connection of one generation of one node. Connection ids are only unique within a node's
/// generation, so all three name the link.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LinkAddr {
    /// The node's id.
    pub node: String,
    /// The node's generation (its fencing token) when it made the link.
    pub generation: u64,
    /// The connection's id on that node.
    pub connection: u64,
}

/// A membership change a node asks its cluster's sequencer for, on behalf of one of its connections or of a server
/// method.
///
/// ```
/// use emitter_core::cluster::Change;
///
/// // A connection (this node's connection 7) asks to link to `alice`, who may be new.
/// let link = Change::link("alice", 7, true);
/// // That connection drops: unlink `alice`, but only if she is still linked to it.
/// let unlink = Change::unlink_connection("alice", 7);
/// // A server method: `server.kick("bob")`.
/// let kick = Change::leave("bob");
/// assert_eq!(link.user(), "alice");
/// assert_eq!(unlink.user(), "alice");
/// assert_eq!(kick.user(), "bob");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A user joins, unlinked (`server.join`). Refused when it exists.
    Join {
        /// The username.
        user: String,
    },
    /// A connection of the submitting node links to a user. When the user does not exist it joins first (two
    /// entries, consecutive seqs) if `accept_new_users`, or the link is refused. A linked user, or a connection that
    /// is linked already, is refused.
    Link {
        /// The username.
        user: String,
        /// The connection's id on the submitting node; with the node and its generation it names the link.
        connection: u64,
        /// Whether a user that does not exist yet may be created by this link (the node's `accept_new_users`).
        accept_new_users: bool,
        /// Whether a linked user's link is taken over ([`LinkPolicy::Replace`](crate::config::LinkPolicy::Replace)): the
        /// user is unlinked first ([`UnlinkReason::Replaced`]), two entries, instead of the link being refused.
        replace: bool,
    },
    /// A user is unlinked. With `only`, only if it is linked to that connection of the submitting node (its current
    /// generation), so that a node unlinking its own closed connection never unlinks a link made since on another
    /// node.
    Unlink {
        /// The username.
        user: String,
        /// The connection (of the submitting node) the user must still be linked to.
        only: Option<u64>,
    },
    /// A user leaves (`krmx/leave`, `server.kick`). A linked user is unlinked first: two entries, an unlink then the
    /// leave. With `only`, only if linked to that connection of the submitting node.
    Leave {
        /// The username.
        user: String,
        /// The connection (of the submitting node) the user must still be linked to.
        only: Option<u64>,
    },
}

impl Change {
    /// `server.join(user)`.
    pub fn join(user: impl Into<String>) -> Change {
        Change::Join { user: user.into() }
    }

    /// The node's connection `connection` links to `user`, creating it if `accept_new_users`; a linked user is
    /// refused (the reference's policy).
    pub fn link(user: impl Into<String>, connection: u64, accept_new_users: bool) -> Change {
        Change::Link {
            user: user.into(),
            connection,
            accept_new_users,
            replace: false,
        }
    }

    /// `server.unlink(user)`: whatever connection, on whatever node, it is linked to.
    pub fn unlink(user: impl Into<String>) -> Change {
        Change::Unlink {
            user: user.into(),
            only: None,
        }
    }

    /// The node's connection `connection` is done with `user` (it closed, sent `krmx/unlink`, …).
    pub fn unlink_connection(user: impl Into<String>, connection: u64) -> Change {
        Change::Unlink {
            user: user.into(),
            only: Some(connection),
        }
    }

    /// `server.kick(user)`.
    pub fn leave(user: impl Into<String>) -> Change {
        Change::Leave {
            user: user.into(),
            only: None,
        }
    }

    /// `krmx/leave` from the node's connection `connection`, which must still be linked to `user`.
    pub fn leave_connection(user: impl Into<String>, connection: u64) -> Change {
        Change::Leave {
            user: user.into(),
            only: Some(connection),
        }
    }

    /// The user the change is about.
    pub fn user(&self) -> &str {
        match self {
            Change::Join { user } | Change::Link { user, .. } | Change::Unlink { user, .. } => user,
            Change::Leave { user, .. } => user,
        }
    }
}

/// Why a user was unlinked; the order records it so that every node can tell its own connections' fate apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnlinkReason {
    /// A [`Change::Unlink`]: the connection closed or asked, or a server method.
    Requested,
    /// The first half of a [`Change::Leave`] of a linked user: a [`LogEvent::Left`] follows.
    Leaving,
    /// The owning node's lease ran out: the node is gone or cut off.
    LeaseExpired,
    /// The owning node registered again (a new generation): the old generation's connections are gone.
    NodeRestarted,
    /// The owning node released its lease (a clean shutdown).
    NodeReleased,
    /// Another connection took the link over ([`LinkPolicy::Replace`](crate::config::LinkPolicy::Replace)); the old
    /// connection is closed.
    Replaced,
}

/// What one entry of the cluster's order did to one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    /// The user joined, unlinked; its join order is the entry's seq.
    Joined {
        /// The username.
        user: String,
    },
    /// The user was linked.
    Linked {
        /// The username.
        user: String,
        /// The connection it is now linked to.
        link: LinkAddr,
    },
    /// The user was unlinked.
    Unlinked {
        /// The username.
        user: String,
        /// The connection it was linked to.
        link: LinkAddr,
        /// Why.
        reason: UnlinkReason,
    },
    /// The user left (it was unlinked already, by an earlier entry).
    Left {
        /// The username.
        user: String,
    },
}

impl LogEvent {
    /// The user the event is about.
    pub fn user(&self) -> &str {
        match self {
            LogEvent::Joined { user } | LogEvent::Linked { user, .. } | LogEvent::Unlinked { user, .. } => user,
            LogEvent::Left { user } => user,
        }
    }
}

/// One membership event at its place in the one order of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its place: 1 for the first change after the cluster state was created, then every next integer.
    pub seq: u64,
    /// What happened.
    pub event: LogEvent,
    /// The node that caused it: the submitter, or the node that found an expired lease. Listeners run on that node
    /// only, so that a welcome sent from a `link` listener is sent once, not once per node.
    pub by: String,
}

/// Why a change was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// A link request refused with a protocol reason (`user … is already linked to a connection`, `server is not
    /// accepting new users`); the client gets it in `krmx/rejected`.
    Rejected(Rejection),
    /// A server method's refusal, as the method returns it.
    Failed(Error),
    /// The change could not be made: the node lost its lease, the cluster state was lost, or the sequencer is out of
    /// reach. Its outcome may be unknown; the entries will say.
    Unavailable(String),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Rejected(rejection) => rejection.fmt(f),
            Refused::Failed(error) => error.fmt(f),
            Refused::Unavailable(why) => write!(f, "the cluster is unavailable: {why}"),
        }
    }
}

/// The answer to one change queued with [`Sequencer::submit_async`]: what [`Sequencer::submit`] would have returned.
pub type Submission = Pin<Box<dyn Future<Output = Result<Vec<LogEntry>, Refused>> + Send + 'static>>;

/// Where a cluster's order comes from, and how messages reach the users linked on other nodes.
///
/// No method may call back into the server. On a tokio runtime every change goes through
/// [`submit_async`](Sequencer::submit_async), which must not block: the connections' own changes (their links,
/// `krmx/unlink` and `krmx/leave`, the unlinks of closed connections, a closing node's unlinks) and the server methods
/// `join`, `unlink` and `kick` alike. [`submit`](Sequencer::submit) may block on the network: the core calls it only
/// without a runtime. [`entries_after`](Sequencer::entries_after) may block too: the core calls it only on a blocking
/// thread or without a runtime, to fill a gap before entries it is to apply. The publish methods must not block:
/// queue and return.
pub trait Sequencer: Send + Sync + 'static {
    /// This node's id.
    fn node(&self) -> &str;

    /// Whether `link` is a connection of this node's current generation.
    fn owns(&self, link: &LinkAddr) -> bool;

    /// Whether this node may still speak for its connections: it holds its lease by its own monotonic clock (its
    /// last renewal's start plus the lease, less a safety margin). While it does not, the core takes no message
    /// from its linked connections and hands nothing to the other nodes: after a pause past the lease (a stopped
    /// process, a long GC or VM stall), the users of this node's connections may be linked elsewhere already. Called
    /// for every message: keep it to an atomic load and a clock read. An in-process sequencer holds no lease: `true`.
    fn lease_valid(&self) -> bool {
        true
    }

    /// Decides a change against the cluster-wide state and returns the entries it produced, in order; may block. The
    /// entries may not follow the last one this node applied: the node reads the ones in between with
    /// [`entries_after`](Sequencer::entries_after) first. Called only without a tokio runtime.
    fn submit(&self, change: Change) -> Result<Vec<LogEntry>, Refused>;

    /// Queues changes to be decided in the given order (after every change queued before them) and returns one answer
    /// per change, in the same order. Must not block: a sequencer that cannot take them now (its queue is full, its
    /// backend failed a moment ago) answers [`Refused::Unavailable`] at once. The default decides each change with
    /// [`submit`](Sequencer::submit) on the spot, which suits a sequencer that never waits (an in-memory one).
    fn submit_async(&self, changes: Vec<Change>) -> Vec<Submission> {
        changes
            .into_iter()
            .map(|change| {
                let answer = self.submit(change);
                Box::pin(std::future::ready(answer)) as Submission
            })
            .collect()
    }

    /// The entries after `seq`, in order; may block. An error means the node cannot continue from `seq` (its entries
    /// are gone): it must rebuild its state. Called on a blocking thread, or without a runtime.
    fn entries_after(&self, seq: u64) -> Result<Vec<LogEntry>, String>;

    /// Hands a broadcast to the other nodes, for their linked users but `skip`. `after` is the last entry this node
    /// applied: receivers apply up to it first, so that a message never overtakes the membership change it followed.
    fn publish_broadcast(&self, after: u64, skip: Option<&str>, frame: &Frame);

    /// Hands a message to the node `to` names, for `user`.
    fn publish_send(&self, to: &LinkAddr, user: &str, after: u64, frame: &Frame);

    /// Hands a message for `user`, unlinked everywhere when it was sent, to every other node, to keep for the user
    /// until it links again (see `ServerBuilder::keep_unlinked`): whichever node it relinks on then has it. Like a
    /// broadcast, it keeps its place among this node's broadcasts.
    fn publish_kept(&self, user: &str, after: u64, frame: &Frame);
}
