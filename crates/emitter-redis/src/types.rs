//! The typed vocabulary of the cluster: the changes a node asks for, the entries of the log, the records of `users`,
//! a node's lease, and why Redis refused.

use std::fmt;

/// A membership change a node asks Redis for, on behalf of one of its connections or of a server method.
///
/// Every change is submitted with the submitting node's [`NodeLease`]: a node whose lease is gone (expired, taken
/// over by a newer registration of the same node id, or lost with a flushed Redis) changes nothing.
///
/// ```
/// use emitter_redis::Change;
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
    /// A user joins, unlinked (`server.join`). Refused with [`Refusal::JoinExistingUser`] when it exists.
    Join {
        /// The username.
        user: String,
    },
    /// A connection of the submitting node links to a user. When the user does not exist it joins first (two
    /// entries, consecutive seqs) if `accept_new_users`, or the link is refused with
    /// [`Refusal::NotAcceptingNewUsers`]. A linked user is refused with [`Refusal::AlreadyLinked`], a connection that
    /// is linked already with [`Refusal::ConnectionLinked`].
    Link {
        /// The username.
        user: String,
        /// The connection's id on the submitting node; with the node and its generation it names the link.
        connection: u64,
        /// Whether a user that does not exist yet may be created by this link (the node's `accept_new_users`).
        accept_new_users: bool,
    },
    /// A user is unlinked. With `only`, only if it is linked to that connection of the submitting node (its current
    /// generation), so that a node unlinking its own closed connection never unlinks a link made since on another
    /// node; otherwise refused with [`Refusal::NotLinkedHere`].
    Unlink {
        /// The username.
        user: String,
        /// The connection (of the submitting node) the user must still be linked to.
        only: Option<u64>,
    },
    /// A user leaves (`krmx/leave`, `server.kick`). A linked user is unlinked first: two entries, `unlink` then
    /// `leave`. With `only`, only if linked to that connection of the submitting node.
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

    /// The node's connection `connection` links to `user`, creating it if `accept_new_users`.
    pub fn link(user: impl Into<String>, connection: u64, accept_new_users: bool) -> Change {
        Change::Link {
            user: user.into(),
            connection,
            accept_new_users,
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

/// Where a user is linked: a connection of one generation of one node. Connection ids are only unique within a node's
/// generation, so all three name the link.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Link {
    /// The node's id.
    pub node: String,
    /// The node's generation (its fencing token) when it made the link.
    pub generation: u64,
    /// The connection's id on that node.
    pub connection: u64,
}

/// Why a user was unlinked; the log records it so that every node can tell its own connections' fate apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnlinkReason {
    /// A [`Change::Unlink`]: the connection closed or asked, or a server method.
    Requested,
    /// The first half of a [`Change::Leave`] of a linked user.
    Leaving,
    /// The owning node's lease ran out and [`reap`](crate::Cluster::reap_dead_nodes) found it.
    LeaseExpired,
    /// The owning node registered again (a new generation): the old generation's connections are gone.
    NodeRestarted,
    /// The owning node released its lease (a clean shutdown).
    NodeReleased,
}

impl UnlinkReason {
    /// The name the scripts write in the log's `r` field.
    pub(crate) fn parse(text: &str) -> Option<UnlinkReason> {
        Some(match text {
            "request" => UnlinkReason::Requested,
            "leave" => UnlinkReason::Leaving,
            "expired" => UnlinkReason::LeaseExpired,
            "restarted" => UnlinkReason::NodeRestarted,
            "released" => UnlinkReason::NodeReleased,
            _ => return None,
        })
    }
}

/// What one entry of the log did to one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
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
        link: Link,
    },
    /// The user was unlinked.
    Unlinked {
        /// The username.
        user: String,
        /// The connection it was linked to.
        link: Link,
        /// Why.
        reason: UnlinkReason,
    },
    /// The user left (it was unlinked already, by an earlier entry).
    Left {
        /// The username.
        user: String,
    },
}

impl Event {
    /// The user the event is about.
    pub fn user(&self) -> &str {
        match self {
            Event::Joined { user } | Event::Linked { user, .. } | Event::Unlinked { user, .. } => user,
            Event::Left { user } => user,
        }
    }
}

/// One entry of the log: one membership event, at its place in the one order of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its place: 1 for the first change after the cluster state was created, then every next integer.
    pub seq: u64,
    /// What happened.
    pub event: Event,
    /// The node that caused it: the submitter, or the node that reaped an expired lease.
    pub by: String,
}

/// A user as `users` holds it: its place in the join order and, if linked, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The username.
    pub name: String,
    /// The seq of its `Joined` entry; users are listed in this order.
    pub joined: u64,
    /// Its link, if linked.
    pub link: Option<Link>,
}

/// Every user, in join order, and the seq that state corresponds to: applying the log entries after `seq` to it gives
/// the state at any later seq. Read atomically, by one script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The epoch it was read in.
    pub epoch: Epoch,
    /// The last seq included.
    pub seq: u64,
    /// The users in join order.
    pub users: Vec<UserRecord>,
}

/// The id of one life of the cluster state: made at random when the state is created in Redis. A different or missing
/// epoch means Redis lost the state (restarted empty, flushed, failed over to an empty replica), and everything a node
/// knew (its replica, its lease, its position in the log) belongs to a world that is gone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Epoch(pub(crate) String);

impl Epoch {
    /// The id as Redis stores it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A node's lease: its id, the generation that fences it, and the epoch it was registered in. Renew it well within
/// its duration (see [`Cluster::keep_alive`](crate::Cluster::keep_alive)); once it is gone, every change it submits is
/// refused with [`Refusal::Fenced`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeLease {
    pub(crate) node: String,
    pub(crate) generation: u64,
    pub(crate) epoch: Epoch,
}

impl NodeLease {
    /// The node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The generation: a number that grows with every registration in the cluster, never reused within an epoch.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The epoch the lease belongs to.
    pub fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    /// Whether `link` is one of this lease's connections.
    pub fn owns(&self, link: &Link) -> bool {
        link.node == self.node && link.generation == self.generation
    }
}

/// Why a script refused a change. The texts of the protocol's refusals are the reference's, word for word; the
/// server-method refusals read as `emitter_core::Error`'s.
///
/// ```
/// use emitter_redis::Refusal;
///
/// let refusal = Refusal::AlreadyLinked { user: "simon".into() };
/// assert_eq!(refusal.to_string(), "user simon is already linked to a connection");
/// assert_eq!(Refusal::NotAcceptingNewUsers.to_string(), "server is not accepting new users");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// `user <name> is already linked to a connection` (a link request; `krmx/rejected`).
    AlreadyLinked {
        /// The username.
        user: String,
    },
    /// `server is not accepting new users` (a link request for a user that does not exist).
    NotAcceptingNewUsers,
    /// `cannot join a user that already exist`.
    JoinExistingUser,
    /// `cannot unlink a connection from a user that does not exist`.
    UnlinkUnknownUser,
    /// `cannot unlink a connection from a user that is not linked`.
    UnlinkUnlinkedUser,
    /// `cannot kick a user that does not exist`.
    KickUnknownUser,
    /// A change with `only`: the user is no longer linked to that connection of this node (it was unlinked, or
    /// linked elsewhere since). Nothing to do: the log has, or will have, the entry that explains it.
    NotLinkedHere,
    /// A link from a connection that is linked to a user already: a connection is linked to at most one user. (The
    /// core unlinks a linked connection that asks to link before it asks Redis, so this is a node's bug.)
    ConnectionLinked,
    /// The epoch in Redis is not the caller's (`current` is `None` when there is none): the cluster state this node
    /// knew is gone. Resynchronise: [`Cluster::reopen`](crate::Cluster::reopen), a snapshot, a new lease.
    EpochChanged {
        /// The epoch Redis has now, if any.
        current: Option<Epoch>,
    },
    /// The node's lease is gone (expired, released, or replaced by a newer registration of the same node id). The
    /// node must stop serving: its connections' users are, or are about to be, unlinked by the log.
    Fenced,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::AlreadyLinked { user } => write!(f, "user {user} is already linked to a connection"),
            Refusal::NotAcceptingNewUsers => f.write_str("server is not accepting new users"),
            Refusal::JoinExistingUser => f.write_str("cannot join a user that already exist"),
            Refusal::UnlinkUnknownUser => f.write_str("cannot unlink a connection from a user that does not exist"),
            Refusal::UnlinkUnlinkedUser => f.write_str("cannot unlink a connection from a user that is not linked"),
            Refusal::KickUnknownUser => f.write_str("cannot kick a user that does not exist"),
            Refusal::NotLinkedHere => f.write_str("the user is no longer linked to this connection"),
            Refusal::ConnectionLinked => f.write_str("this connection is already linked to a user"),
            Refusal::EpochChanged { current: Some(epoch) } => {
                write!(f, "the cluster state was recreated (epoch {epoch})")
            }
            Refusal::EpochChanged { current: None } => f.write_str("the cluster state is gone from redis"),
            Refusal::Fenced => f.write_str("this node's lease is gone"),
        }
    }
}

/// What went wrong talking to the cluster.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A script refused: the change did not happen.
    Refused(Refusal),
    /// Redis could not be reached, timed out, or answered with an error. For a submitted change the outcome is
    /// *unknown*: it may have been applied before the reply was lost. The log tells: a link carries this node's
    /// generation and connection id; catch up before deciding again.
    Redis(redis::RedisError),
    /// The log no longer holds every entry after `after` (retention trimmed them): read a [`Snapshot`] instead.
    Trimmed {
        /// The seq the caller had applied.
        after: u64,
        /// The newest seq in Redis.
        head: u64,
    },
    /// The caller has applied entries past the newest seq in Redis (`head`): Redis lost writes without losing its
    /// epoch (a failover to a replica that lagged). Read a [`Snapshot`] instead.
    Ahead {
        /// The seq the caller had applied.
        after: u64,
        /// The newest seq in Redis.
        head: u64,
    },
    /// A name that cannot be used: a cluster name or node id outside `[A-Za-z0-9._:-]{1,64}`.
    InvalidName(String),
    /// Redis answered something this crate did not write (a tampered key, another program's data).
    Malformed(String),
    /// The outgoing message queue is full (Redis is slow or unreachable): the message was dropped.
    QueueFull,
    /// The cluster handle's background tasks are gone (its runtime shut down).
    Closed,
}

impl Error {
    /// The refusal, when a script refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Error::Refused(refusal) => Some(refusal),
            _ => None,
        }
    }

    /// Whether the caller's replica must be rebuilt from a [`Snapshot`]: the log cannot bring it up to date.
    pub fn needs_snapshot(&self) -> bool {
        matches!(self, Error::Trimmed { .. } | Error::Ahead { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Refused(refusal) => refusal.fmt(f),
            Error::Redis(error) => write!(f, "redis: {error}"),
            Error::Trimmed { after, head } => {
                write!(
                    f,
                    "the log no longer holds the entries after seq {after} (head {head}): resynchronise"
                )
            }
            Error::Ahead { after, head } => {
                write!(
                    f,
                    "applied seq {after} is past redis's head {head}: redis lost writes; resynchronise"
                )
            }
            Error::InvalidName(name) => write!(f, "invalid name {name:?}: use 1 to 64 of A-Z a-z 0-9 . _ : -"),
            Error::Malformed(what) => write!(f, "unexpected reply from redis: {what}"),
            Error::QueueFull => f.write_str("the outgoing message queue is full"),
            Error::Closed => f.write_str("the cluster handle's tasks are gone"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Redis(error) => Some(error),
            _ => None,
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(error: redis::RedisError) -> Self {
        Error::Redis(error)
    }
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        Error::Refused(refusal)
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether `name` may be a cluster name or a node id: 1 to 64 of `A-Z a-z 0-9 . _ : -`. Braces would break the hash
/// tag that keeps a cluster's keys in one slot, and `/` separates a node from a username in the link index.
///
/// ```
/// assert!(emitter_redis::is_valid_name("chat-eu.1"));
/// assert!(!emitter_redis::is_valid_name("a{b}"));
/// assert!(!emitter_redis::is_valid_name(""));
/// ```
pub fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

pub(crate) fn check_name(name: &str) -> Result<()> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_owned()))
    }
}
