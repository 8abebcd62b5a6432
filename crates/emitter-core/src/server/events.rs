//! The events the server emits, as an any-event listener sees them.

use crate::protocol::Message;
use crate::server::auth::AuthInfo;

/// Any event the server emits, as seen by an [`on_any`](crate::Server::on_any) listener.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Event<'a> {
    /// The server started listening on `port`.
    Listen {
        /// The port.
        port: u16,
    },
    /// The server closed.
    Close,
    /// A connection asks to link to `username`. (The [`AuthContext`](crate::AuthContext) goes to
    /// [`on_authenticate`](crate::Server::on_authenticate) listeners only.)
    Authenticate {
        /// The username asked for.
        username: &'a str,
        /// What the server knows of the request.
        info: &'a AuthInfo,
    },
    /// A user joined.
    Join {
        /// The user.
        username: &'a str,
    },
    /// A connection was linked to a user.
    Link {
        /// The user.
        username: &'a str,
    },
    /// A connection was unlinked from a user.
    Unlink {
        /// The user.
        username: &'a str,
    },
    /// A user left.
    Leave {
        /// The user.
        username: &'a str,
    },
    /// A linked user sent an application message.
    Message {
        /// The sender.
        username: &'a str,
        /// The message.
        message: &'a Message,
    },
}

impl Event<'_> {
    /// The event's name as the reference spells it: `listen`, `close`, `authenticate`, `join`, `link`, `unlink`,
    /// `leave` or `message`.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Listen { .. } => "listen",
            Event::Close => "close",
            Event::Authenticate { .. } => "authenticate",
            Event::Join { .. } => "join",
            Event::Link { .. } => "link",
            Event::Unlink { .. } => "unlink",
            Event::Leave { .. } => "leave",
            Event::Message { .. } => "message",
        }
    }
}

/// Which membership change a [`MembershipEvent`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MembershipKind {
    /// The user joined.
    Join,
    /// A connection was linked to the user (on this node, or on another node of the cluster).
    Link,
    /// The user's connection was unlinked.
    Unlink,
    /// The user left.
    Leave,
}

impl MembershipKind {
    /// The change's name as the reference spells its event: `join`, `link`, `unlink` or `leave`.
    pub fn name(self) -> &'static str {
        match self {
            MembershipKind::Join => "join",
            MembershipKind::Link => "link",
            MembershipKind::Unlink => "unlink",
            MembershipKind::Leave => "leave",
        }
    }
}

/// A membership change this node applied, as an [`on_membership`](crate::Server::on_membership) listener sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MembershipEvent<'a> {
    /// Its place in the order of membership changes. On a cluster: the seq of the cluster log's entry, the same on
    /// every node (the changes a node applies when it [rebuilds](crate::cluster::ClusterHost::rebuild) from a snapshot
    /// all carry the snapshot's seq). On one process: a counter of the changes, from 1. It never goes down.
    pub seq: u64,
    /// What changed.
    pub kind: MembershipKind,
    /// Whose membership.
    pub username: &'a str,
}
