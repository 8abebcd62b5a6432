//! The bounded label values: why a link request was rejected, why a connection was closed or refused.

use crate::protocol::vocabulary::{NOT_LISTENING, ORIGIN_NOT_ALLOWED, TOO_MANY_CONNECTIONS, TOO_MANY_UNLINKED};
use crate::protocol::Rejection;
use crate::transport::close_reason::{CloseReason, TransportClose};

/// One label and its value: every labelled metric here has exactly one.
pub(super) type Label = [(&'static str, &'static str); 1];

/// Why a `krmx/rejected` was sent: a bounded set, so that it can be a label. The protocol's own reasons, `app` for
/// every reason an `authenticate` listener gave (never the text itself: it is the application's and unbounded), and
/// `cluster_unavailable` for a link the cluster could not decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    InvalidMessage,
    InvalidLinkRequest,
    UnlinkedConnection,
    LinkRequestPending,
    InvalidUsername,
    NotAcceptingNewUsers,
    TooManyUsers,
    AlreadyLinked,
    VersionMismatch,
    AuthenticationTimeout,
    AuthenticationFailed,
    App,
    ClusterUnavailable,
}

impl Reason {
    pub(super) const ALL: [Reason; 13] = [
        Reason::InvalidMessage,
        Reason::InvalidLinkRequest,
        Reason::UnlinkedConnection,
        Reason::LinkRequestPending,
        Reason::InvalidUsername,
        Reason::NotAcceptingNewUsers,
        Reason::TooManyUsers,
        Reason::AlreadyLinked,
        Reason::VersionMismatch,
        Reason::AuthenticationTimeout,
        Reason::AuthenticationFailed,
        Reason::App,
        Reason::ClusterUnavailable,
    ];

    /// The kind of a reason as the client gets it. A reason an `authenticate` listener gave that happens to spell a
    /// protocol reason counts as that reason: the client cannot tell them apart either.
    pub(crate) fn of(reason: &str) -> Reason {
        match Rejection::parse(reason) {
            Rejection::InvalidMessage => Reason::InvalidMessage,
            Rejection::InvalidLinkRequest => Reason::InvalidLinkRequest,
            Rejection::UnlinkedConnection => Reason::UnlinkedConnection,
            Rejection::LinkRequestPending => Reason::LinkRequestPending,
            Rejection::InvalidUsername => Reason::InvalidUsername,
            Rejection::NotAcceptingNewUsers => Reason::NotAcceptingNewUsers,
            Rejection::TooManyUsers => Reason::TooManyUsers,
            Rejection::AlreadyLinked(_) => Reason::AlreadyLinked,
            Rejection::VersionMismatch(_) => Reason::VersionMismatch,
            Rejection::AuthenticationTimeout => Reason::AuthenticationTimeout,
            Rejection::AuthenticationFailed => Reason::AuthenticationFailed,
            Rejection::Custom(_) => Reason::App,
        }
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            Reason::InvalidMessage => "invalid_message",
            Reason::InvalidLinkRequest => "invalid_link_request",
            Reason::UnlinkedConnection => "unlinked_connection",
            Reason::LinkRequestPending => "link_request_pending",
            Reason::InvalidUsername => "invalid_username",
            Reason::NotAcceptingNewUsers => "not_accepting_new_users",
            Reason::TooManyUsers => "too_many_users",
            Reason::AlreadyLinked => "already_linked",
            Reason::VersionMismatch => "version_mismatch",
            Reason::AuthenticationTimeout => "authentication_timeout",
            Reason::AuthenticationFailed => "authentication_failed",
            Reason::App => "app",
            Reason::ClusterUnavailable => "cluster_unavailable",
        }
    }

    /// Whether it answers a `krmx/link` (and so counts as a rejected link attempt too). The others answer anything
    /// else an unlinked connection sent.
    pub(super) fn answers_a_link(self) -> bool {
        !matches!(self, Reason::InvalidMessage | Reason::UnlinkedConnection)
    }
}

/// Why a connection was refused before it was opened, as `Server::refusal` words it, and its label.
pub(super) const REFUSALS: [(&str, &str); 4] = [
    (NOT_LISTENING, "not_listening"),
    (TOO_MANY_CONNECTIONS, "too_many_connections"),
    (TOO_MANY_UNLINKED, "too_many_unlinked_connections"),
    (ORIGIN_NOT_ALLOWED, "origin"),
];

/// Why the server closed a connection, for the closes it counts: the core's reasons and the transport's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The core asked the transport to close it (counted once, for the reason that stands).
    Core(CloseReason),
    /// The transport closed it on its own account (counted by the transport).
    Transport(TransportClose),
}

impl Cause {
    /// Every cause, as the label values of `krmx_connection_closes_total`, in the order they are exposed.
    pub(super) const ALL: [Cause; 11] = [
        Cause::Core(CloseReason::ServerClosing),
        Cause::Core(CloseReason::Restart),
        Cause::Core(CloseReason::RateLimit),
        Cause::Core(CloseReason::LinkDeadline),
        Cause::Core(CloseReason::SlowConsumer),
        Cause::Core(CloseReason::Replaced),
        Cause::Transport(TransportClose::Oversize),
        Cause::Transport(TransportClose::InvalidUtf8),
        Cause::Transport(TransportClose::ProtocolError),
        Cause::Transport(TransportClose::NoPong),
        Cause::Transport(TransportClose::QueryParams),
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Cause::Core(CloseReason::ServerClosing) => "server_closing",
            Cause::Core(CloseReason::Restart) => "restart",
            Cause::Core(CloseReason::RateLimit) => "rate_limit",
            Cause::Core(CloseReason::LinkDeadline) => "link_deadline",
            Cause::Core(CloseReason::SlowConsumer) => "slow_consumer",
            Cause::Core(CloseReason::Replaced) => "replaced",
            Cause::Transport(TransportClose::Oversize) => "oversize",
            Cause::Transport(TransportClose::InvalidUtf8) => "invalid_utf8",
            Cause::Transport(TransportClose::ProtocolError) => "protocol_error",
            Cause::Transport(TransportClose::NoPong) => "no_pong",
            Cause::Transport(TransportClose::QueryParams) => "query_params",
        }
    }
}
