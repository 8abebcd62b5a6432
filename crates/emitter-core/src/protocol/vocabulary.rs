//! The protocol's words: its message types and the reasons a link request is rejected, spelled once, as the reference
//! spells them. The server sends them and the client (`emitter-client`) reads them from here, so the two cannot drift.

use std::fmt;

/// `krmx/link`: a connection asks to link to a user.
pub const LINK: &str = "krmx/link";
/// `krmx/unlink`: a linked connection asks to be unlinked.
pub const UNLINK: &str = "krmx/unlink";
/// `krmx/leave`: a linked user leaves.
pub const LEAVE: &str = "krmx/leave";
/// `krmx/accepted`: a link request was accepted.
pub const ACCEPTED: &str = "krmx/accepted";
/// `krmx/rejected`: a request was refused; the payload says why.
pub const REJECTED: &str = "krmx/rejected";
/// `krmx/joined`: a user joined.
pub const JOINED: &str = "krmx/joined";
/// `krmx/linked`: a user was linked to a connection.
pub const LINKED: &str = "krmx/linked";
/// `krmx/unlinked`: a user was unlinked from its connection.
pub const UNLINKED: &str = "krmx/unlinked";
/// `krmx/left`: a user left.
pub const LEFT: &str = "krmx/left";

/// Why the server refused what a connection asked, as `krmx/rejected` carries it (`{"reason": ...}`). The protocol's own
/// reasons are variants; an `authenticate` listener's reason is [`Custom`](Rejection::Custom).
///
/// ```
/// use emitter_core::protocol::Rejection;
///
/// assert_eq!(Rejection::AlreadyLinked("simon".into()).to_string(), "user simon is already linked to a connection");
/// assert_eq!(Rejection::parse("invalid username"), Rejection::InvalidUsername);
/// assert_eq!(Rejection::parse("banned"), Rejection::Custom("banned".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// `invalid message`: not JSON, not an object, or no string `type`.
    InvalidMessage,
    /// `invalid link request`: a `krmx/link` whose payload is not `{username, version, auth?}`.
    InvalidLinkRequest,
    /// `unlinked connection`: anything but a link request from a connection that is not linked.
    UnlinkedConnection,
    /// `link request already pending`: a second link request while the first is being authenticated.
    LinkRequestPending,
    /// `invalid username`: the username rule refused the name.
    InvalidUsername,
    /// `server is not accepting new users`.
    NotAcceptingNewUsers,
    /// `server has too many users`: the link would create a user past `max_users`.
    TooManyUsers,
    /// `user <name> is already linked to a connection`.
    AlreadyLinked(String),
    /// `krmx server version mismatch (server=…,client=…)`, with the versions as the server words them.
    VersionMismatch(String),
    /// `authentication timeout`: async authentication took longer than the server allows.
    AuthenticationTimeout,
    /// `authentication failed`: an authenticate listener or future failed without a reason of its own.
    AuthenticationFailed,
    /// Any other reason, given by an `authenticate` listener.
    Custom(String),
}

const PENDING: &str = "link request already pending";
const NOT_ACCEPTING: &str = "server is not accepting new users";
const TOO_MANY_USERS: &str = "server has too many users";

impl Rejection {
    /// Reads a reason as the server sent it.
    pub fn parse(reason: &str) -> Rejection {
        match reason {
            "invalid message" => Rejection::InvalidMessage,
            "invalid link request" => Rejection::InvalidLinkRequest,
            "unlinked connection" => Rejection::UnlinkedConnection,
            PENDING => Rejection::LinkRequestPending,
            "invalid username" => Rejection::InvalidUsername,
            NOT_ACCEPTING => Rejection::NotAcceptingNewUsers,
            TOO_MANY_USERS => Rejection::TooManyUsers,
            "authentication timeout" => Rejection::AuthenticationTimeout,
            "authentication failed" => Rejection::AuthenticationFailed,
            _ => {
                if let Some(name) = reason
                    .strip_prefix("user ")
                    .and_then(|rest| rest.strip_suffix(" is already linked to a connection"))
                {
                    Rejection::AlreadyLinked(name.to_owned())
                } else if reason.starts_with("krmx server version mismatch") {
                    Rejection::VersionMismatch(reason.to_owned())
                } else {
                    Rejection::Custom(reason.to_owned())
                }
            }
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::InvalidMessage => f.write_str("invalid message"),
            Rejection::InvalidLinkRequest => f.write_str("invalid link request"),
            Rejection::UnlinkedConnection => f.write_str("unlinked connection"),
            Rejection::LinkRequestPending => f.write_str(PENDING),
            Rejection::InvalidUsername => f.write_str("invalid username"),
            Rejection::NotAcceptingNewUsers => f.write_str(NOT_ACCEPTING),
            Rejection::TooManyUsers => f.write_str(TOO_MANY_USERS),
            Rejection::AlreadyLinked(name) => write!(f, "user {name} is already linked to a connection"),
            Rejection::VersionMismatch(reason) | Rejection::Custom(reason) => f.write_str(reason),
            Rejection::AuthenticationTimeout => f.write_str("authentication timeout"),
            Rejection::AuthenticationFailed => f.write_str("authentication failed"),
        }
    }
}

// Why a connection is refused before it is opened: the body of the transport's 503, a log field, and (as a label)
// `krmx_connections_refused_total`. Not protocol messages: a refused connection never speaks Krmx.

/// A connection refused while the server is not listening.
pub(crate) const NOT_LISTENING: &str = "the server is not listening";
/// A connection refused at `max_connections`.
pub(crate) const TOO_MANY_CONNECTIONS: &str = "too many connections";
/// A connection refused at `max_unlinked_connections`.
pub(crate) const TOO_MANY_UNLINKED: &str = "too many unlinked connections";
/// A browser's upgrade from a page whose origin is not allowed (`allowed_origins`).
pub(crate) const ORIGIN_NOT_ALLOWED: &str = "origin not allowed";

#[cfg(test)]
mod tests {
    use super::Rejection;

    #[test]
    fn every_reason_reads_back_as_itself() {
        for rejection in [
            Rejection::InvalidMessage,
            Rejection::InvalidLinkRequest,
            Rejection::UnlinkedConnection,
            Rejection::LinkRequestPending,
            Rejection::InvalidUsername,
            Rejection::NotAcceptingNewUsers,
            Rejection::TooManyUsers,
            Rejection::AlreadyLinked("a b".into()),
            Rejection::VersionMismatch("krmx server version mismatch (server=0.6.x,client=0.7.1)".into()),
            Rejection::AuthenticationTimeout,
            Rejection::AuthenticationFailed,
            Rejection::Custom("nope".into()),
        ] {
            assert_eq!(Rejection::parse(&rejection.to_string()), rejection);
        }
    }
}
