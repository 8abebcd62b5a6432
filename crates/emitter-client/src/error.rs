//! The client's lifecycle status and the errors its methods return.

use std::fmt;
use std::sync::Arc;

/// Where a client is in its life, as the reference client names it.
///
/// `Initializing` → `Connecting` → `Connected` → `Linking` → `Linked` → `Unlinking` → `Connected` … → `Closing` →
/// `Closed`, and from `Closed` a new [`connect`](crate::Client::connect) starts over.
///
/// ```
/// use emitter_client::{Client, ClientStatus};
///
/// let client = Client::new();
/// assert_eq!(client.status(), ClientStatus::Initializing);
/// assert_eq!(client.status().to_string(), "initializing");
/// ```
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientStatus {
    /// Created and not connected yet; listeners can be registered. The default.
    #[default]
    Initializing,
    /// `connect` was called and the WebSocket is opening.
    Connecting,
    /// The WebSocket is open and no user is linked.
    Connected,
    /// A link request was sent and is not answered yet.
    Linking,
    /// The connection is linked to a user: messages flow both ways.
    Linked,
    /// An unlink or leave request was sent and the server has not unlinked the user yet.
    Unlinking,
    /// `disconnect` was called and the WebSocket is closing.
    Closing,
    /// The WebSocket is closed (or never opened).
    Closed,
}

impl ClientStatus {
    /// The lowercase name the reference uses, such as `linked`.
    ///
    /// ```
    /// assert_eq!(emitter_client::ClientStatus::Unlinking.as_str(), "unlinking");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            ClientStatus::Initializing => "initializing",
            ClientStatus::Connecting => "connecting",
            ClientStatus::Connected => "connected",
            ClientStatus::Linking => "linking",
            ClientStatus::Linked => "linked",
            ClientStatus::Unlinking => "unlinking",
            ClientStatus::Closing => "closing",
            ClientStatus::Closed => "closed",
        }
    }
}

impl fmt::Display for ClientStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a client method failed. Where the reference client has an error for the same case, the text is its text.
///
/// ```
/// use emitter_client::{Client, Error, ClientStatus};
/// use emitter_core::Message;
///
/// let client = Client::new();
/// let error = client.send(&Message::new("chat/say")).unwrap_err();
/// assert_eq!(error.to_string(), "cannot send when the client is initializing");
/// assert!(matches!(error, Error::WrongStatus { action: "send", status: ClientStatus::Initializing }));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// `cannot {action} when the client is {status}`: the method is not allowed in the current status.
    WrongStatus {
        /// What was attempted: `connect`, `link`, `unlink`, `leave`, `disconnect` or `send`.
        action: &'static str,
        /// The status the client was in.
        status: ClientStatus,
    },
    /// `cannot send custom messages with type starting with the internal 'krmx/' prefix`.
    ReservedType,
    /// `error while trying to connect to the server at {url}`: the WebSocket did not open, or was closed while
    /// opening. The underlying error, if any, is the [`source`](std::error::Error::source).
    Connect {
        /// The URL given to `connect`, without its user info and query (they can hold secrets).
        url: String,
        /// What went wrong underneath, when something did (not when `disconnect` cancelled the attempt).
        cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
    /// The server rejected the link request; the text is the server's reason, such as `invalid username`.
    Rejected(String),
    /// `the connection closed before the server answered`: the connection closed while a `link`, `unlink` or `leave`
    /// was waiting for the server. (The reference client's promise never settles in that case.)
    ConnectionClosed,
    /// `a message must serialize to a JSON object with a string type`, from [`send_json`](crate::Client::send_json).
    NotAMessage,
    /// `cannot serialize the payload: …`, from the typed helpers.
    Serialize(Arc<serde_json::Error>),
    /// `cannot connect outside a tokio runtime`.
    NoRuntime,
    /// `invalid root certificates: {reason}`, from [`TlsConfig`](crate::TlsConfig)'s `add_*` methods: the PEM holds
    /// no certificate, or one that cannot be read.
    InvalidCertificates(String),
}

impl Error {
    pub(crate) fn wrong_status(action: &'static str, status: ClientStatus) -> Error {
        Error::WrongStatus { action, status }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::WrongStatus { action, status } => write!(f, "cannot {action} when the client is {status}"),
            Error::ReservedType => {
                f.write_str("cannot send custom messages with type starting with the internal 'krmx/' prefix")
            }
            Error::Connect { url, .. } => write!(f, "error while trying to connect to the server at {url}"),
            Error::Rejected(reason) => f.write_str(reason),
            Error::ConnectionClosed => f.write_str("the connection closed before the server answered"),
            Error::NotAMessage => f.write_str("a message must serialize to a JSON object with a string type"),
            Error::Serialize(error) => write!(f, "cannot serialize the payload: {error}"),
            Error::NoRuntime => f.write_str("cannot connect outside a tokio runtime"),
            Error::InvalidCertificates(reason) => write!(f, "invalid root certificates: {reason}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect { cause: Some(cause), .. } => Some(cause.as_ref()),
            Error::Serialize(error) => Some(error.as_ref()),
            _ => None,
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Self {
        Error::Serialize(Arc::new(error))
    }
}
