//! The server's lifecycle status and the errors its methods return.

use std::fmt;

/// Where a server is in its life. It only moves forward, except that a failed listen returns to `Initializing`.
///
/// `Initializing` → `Starting` (listen was called) → `Listening` → `Closing` (close was called) → `Closed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// Created; listeners can be registered but nothing is served yet.
    Initializing,
    /// Listen was called and the transport is binding.
    Starting,
    /// Connections are accepted.
    Listening,
    /// Close was called: users are leaving and connections closing.
    Closing,
    /// Every connection is gone and the transport has stopped.
    Closed,
}

impl Status {
    /// The lowercase name the reference uses, such as `listening`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Initializing => "initializing",
            Status::Starting => "starting",
            Status::Listening => "listening",
            Status::Closing => "closing",
            Status::Closed => "closed",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a server method refused to act. The messages are the reference's, word for word.
///
/// ```
/// use emitter_core::{Error, Server, Message};
///
/// let server = Server::new();
/// let error = server.send("simon", &Message::new("custom/hello")).unwrap_err();
/// assert_eq!(error.to_string(), "cannot send a message when the server is initializing");
/// assert!(matches!(error, Error::WrongStatus { .. }));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// `cannot {action} when the server is {status}`.
    WrongStatus {
        /// What was attempted, such as `send a message`.
        action: &'static str,
        /// The status the server was in.
        status: Status,
    },
    /// `cannot send a message to a user that does not exist`.
    SendToUnknownUser,
    /// `cannot send a message to a user that is not linked to a connection`.
    SendToUnlinkedUser,
    /// `cannot join a user that already exist`.
    JoinExistingUser,
    /// `cannot join a user with an invalid username`.
    JoinInvalidUsername,
    /// `cannot unlink a connection from a user that does not exist`.
    UnlinkUnknownUser,
    /// `cannot unlink a connection from a user that is not linked`.
    UnlinkUnlinkedUser,
    /// `cannot kick a user that does not exist`.
    KickUnknownUser,
    /// `cannot send a message to a user whose connection is not reading (its queue is full)`. The connection is a slow
    /// consumer: it is being closed, which unlinks the user.
    QueueFull,
    /// `cannot send a message to a user whose connection is closing`.
    ConnectionClosing,
    /// `cannot send a message of type <kind>: the krmx/ prefix is reserved for the protocol`. Clients act on `krmx/`
    /// messages (a fake `krmx/left` would drop a user from their list), so the server sends none of its own making.
    ReservedType(String),
    /// `cannot serialize the payload: <cause>`: the payload's `Serialize` implementation failed.
    Serialize(String),
    /// `the server closed`: a `wait_for_*` future whose event never came because the server closed (or was dropped).
    ServerClosed,
    /// `the cluster is unavailable: <why>`: a membership change a node of a cluster could not make (it lost its lease,
    /// the cluster's state was lost, or its sequencer is out of reach).
    Unavailable(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::WrongStatus { action, status } => {
                write!(f, "cannot {action} when the server is {status}")
            }
            Error::SendToUnknownUser => f.write_str("cannot send a message to a user that does not exist"),
            Error::SendToUnlinkedUser => {
                f.write_str("cannot send a message to a user that is not linked to a connection")
            }
            Error::JoinExistingUser => f.write_str("cannot join a user that already exist"),
            Error::JoinInvalidUsername => f.write_str("cannot join a user with an invalid username"),
            Error::UnlinkUnknownUser => f.write_str("cannot unlink a connection from a user that does not exist"),
            Error::UnlinkUnlinkedUser => f.write_str("cannot unlink a connection from a user that is not linked"),
            Error::KickUnknownUser => f.write_str("cannot kick a user that does not exist"),
            Error::QueueFull => {
                f.write_str("cannot send a message to a user whose connection is not reading (its queue is full)")
            }
            Error::ConnectionClosing => f.write_str("cannot send a message to a user whose connection is closing"),
            Error::ReservedType(kind) => write!(
                f,
                "cannot send a message of type {kind}: the krmx/ prefix is reserved for the protocol"
            ),
            Error::Serialize(cause) => write!(f, "cannot serialize the payload: {cause}"),
            Error::ServerClosed => f.write_str("the server closed"),
            Error::Unavailable(why) => write!(f, "the cluster is unavailable: {why}"),
        }
    }
}

impl std::error::Error for Error {}
