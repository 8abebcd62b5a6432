//! Why the core closes a connection, and the WebSocket close code and reason a transport sends for it.

use std::fmt;

/// Why the core asked the transport to close a connection, read with
/// [`Outbox::close_reason`](crate::transport::Outbox::close_reason). The transport sends [`code`](CloseReason::code)
/// and [`text`](CloseReason::text) in the WebSocket close frame, so that every transport closes for the same cause
/// with the same code.
///
/// The codes are RFC 6455's registered ones, which every WebSocket client and browser understands, rather than
/// private 4000–4999 codes that only a client written for this server could read; the text tells apart causes that
/// share a code.
///
/// | reason | code | text |
/// | --- | --- | --- |
/// | [`ServerClosing`](CloseReason::ServerClosing) | 1001 going away | `server closing` |
/// | [`Restart`](CloseReason::Restart) | 1012 service restart | `server restarting` |
/// | [`RateLimit`](CloseReason::RateLimit) | 1008 policy violation | `rate limit exceeded` |
/// | [`LinkDeadline`](CloseReason::LinkDeadline) | 1008 policy violation | `link deadline passed` |
/// | [`SlowConsumer`](CloseReason::SlowConsumer) | 1013 try again later | `slow consumer` |
///
/// ```
/// use emitter_core::transport::CloseReason;
///
/// assert_eq!(CloseReason::RateLimit.code(), 1008);
/// assert_eq!(CloseReason::RateLimit.to_string(), "rate limit exceeded");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// [`Server::close`](crate::Server::close) was called: 1001 (going away).
    ServerClosing,
    /// A node of a cluster starts over from the cluster's state (see [`ClusterHost`](crate::cluster::ClusterHost)); its
    /// clients should reconnect and link again: 1012 (service restart).
    Restart,
    /// The connection sent faster than the [rate limit](crate::ServerBuilder::rate_limit) allows: 1008 (policy
    /// violation).
    RateLimit,
    /// The connection stayed unlinked past the [link deadline](crate::ServerBuilder::link_deadline): 1008 (policy
    /// violation).
    LinkDeadline,
    /// The connection fell more than the [outbound queue](crate::ServerBuilder::outbound_queue) behind: 1013 (try
    /// again later). The server sheds a connection it cannot keep up with; a client that reads in time can come back.
    SlowConsumer,
    /// Another connection took the user over ([`LinkPolicy::Replace`](crate::config::LinkPolicy::Replace)): 1000 (normal
    /// closure), so that a client that reconnects on abnormal closes does not fight the new connection for its user.
    Replaced,
}

impl CloseReason {
    /// The WebSocket close code (RFC 6455, section 7.4).
    pub fn code(self) -> u16 {
        match self {
            CloseReason::ServerClosing => 1001,
            CloseReason::Restart => 1012,
            CloseReason::RateLimit | CloseReason::LinkDeadline => 1008,
            CloseReason::SlowConsumer => 1013,
            CloseReason::Replaced => 1000,
        }
    }

    /// The close frame's reason text.
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::ServerClosing => "server closing",
            CloseReason::Restart => "server restarting",
            CloseReason::RateLimit => "rate limit exceeded",
            CloseReason::LinkDeadline => "link deadline passed",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::Replaced => "replaced by a new connection",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

/// Why a transport closed a connection on its own account rather than at the core's request (that is a
/// [`CloseReason`]), for the server's metrics: see
/// [`Host::record_close`](crate::transport::Host::record_close). Each comes with the close code RFC 6455 gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportClose {
    /// A message over [`max_message_size`](crate::config::Config::max_message_size): 1009 (message too big).
    Oversize,
    /// A text message that is not UTF-8: 1007 (invalid frame payload data).
    InvalidUtf8,
    /// A frame that breaks the WebSocket protocol: 1002 (protocol error).
    ProtocolError,
    /// No pong came between two pings: 1008 (policy violation).
    NoPong,
    /// The connection URL's query parameters are not the expected ones: 1008 (policy violation).
    QueryParams,
}

impl TransportClose {
    /// The WebSocket close code (RFC 6455, section 7.4) a transport closes with for it.
    ///
    /// ```
    /// assert_eq!(emitter_core::transport::TransportClose::Oversize.code(), 1009);
    /// ```
    pub fn code(self) -> u16 {
        match self {
            TransportClose::Oversize => 1009,
            TransportClose::InvalidUtf8 => 1007,
            TransportClose::ProtocolError => 1002,
            TransportClose::NoPong | TransportClose::QueryParams => 1008,
        }
    }
}
