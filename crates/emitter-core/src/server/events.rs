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
