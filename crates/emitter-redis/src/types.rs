//! The typed vocabulary of the cluster: the changes a node asks for, the entries of the log, the records of `users`,
//! a node's lease, and why Redis refused.

use std::fmt;

pub(crate) use emitter_core::cluster::{Change, LinkAddr, LogEntry, LogEvent, UnlinkReason};

/// A user as `users` holds it: its place in the join order and, if linked, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The username.
    pub name: String,
    /// The seq of its `Joined` entry; users are listed in this order.
    pub joined: u64,
    /// Its link, if linked.
    pub link: Option<LinkAddr>,
}

/// Every user, in join order, and the seq that state corresponds to: applying the log entries after `seq` to it gives
/// the state at any later seq. Read atomically, by one script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSnapshot {
    /// The epoch it was read in.
    pub epoch: Epoch,
    /// The last seq included.
    pub seq: u64,
    /// The hash of the entry at `seq` in the log's hash chain (0 before the first entry): the entries after it must
    /// chain onto it.
    pub hash: u64,
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
    pub fn owns(&self, link: &LinkAddr) -> bool {
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
    /// The log no longer holds every entry after `after` (retention trimmed them): read a [`ClusterSnapshot`] instead.
    Trimmed {
        /// The seq the caller had applied.
        after: u64,
        /// The newest seq in Redis.
        head: u64,
    },
    /// The caller has applied entries past the newest seq in Redis (`head`): Redis lost writes without losing its
    /// epoch (a failover to a replica that lagged). Read a [`ClusterSnapshot`] instead.
    Ahead {
        /// The seq the caller had applied.
        after: u64,
        /// The newest seq in Redis.
        head: u64,
    },
    /// Redis's log is not the one this handle read before: the entry at `seq` was replaced by another (its hash in
    /// the chain differs), or the log no longer chains onto what was read. Redis lost acknowledged writes without
    /// losing its epoch: a failover to a replica that had not received them. Read a [`ClusterSnapshot`] instead.
    Forked {
        /// The first seq where the histories differ, as far as this handle can tell.
        seq: u64,
    },
    /// A name that cannot be used: a cluster name or node id outside `[A-Za-z0-9._:-]{1,64}`.
    InvalidName(String),
    /// Redis answered something this crate did not write (a tampered key, another program's data).
    Malformed(String),
    /// The outgoing message queue is full (Redis is slow or unreachable): `Options::publish_queue` messages or
    /// `Options::publish_budget` bytes wait for Redis already. The message was dropped.
    QueueFull,
    /// The cluster handle's background tasks are gone (its runtime shut down).
    Closed,
    /// The node's queue of membership changes is full (Redis is slow, or the node takes changes faster than Redis
    /// decides them): the change was refused at once, not made.
    ChangeQueueFull,
    /// Redis failed a batch of membership changes a moment ago: changes are refused at once, not made, until the
    /// back-off period is over.
    BackingOff,
}

impl Error {
    /// The refusal, when a script refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Error::Refused(refusal) => Some(refusal),
            _ => None,
        }
    }

    /// Whether the caller's replica must be rebuilt from a [`ClusterSnapshot`]: the log cannot bring it up to date.
    pub fn needs_snapshot(&self) -> bool {
        matches!(self, Error::Trimmed { .. } | Error::Ahead { .. } | Error::Forked { .. })
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
            Error::QueueFull => f.write_str(
                "the outgoing message queue is full (publish_queue messages or publish_budget bytes wait for redis)",
            ),
            Error::Forked { seq } => write!(
                f,
                "the cluster's log forked at seq {seq}: redis lost writes this node had read (a failover?)"
            ),
            Error::Closed => f.write_str("the cluster handle's tasks are gone"),
            Error::ChangeQueueFull => f.write_str("this node's queue of membership changes is full"),
            Error::BackingOff => f.write_str("redis failed a moment ago: membership changes are refused for a moment"),
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
