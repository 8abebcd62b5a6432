//! The client's events, and the listener lists they are emitted to: the same lists as the server's
//! ([`emitter_listeners`]). The methods that register listeners are in [`listeners`](crate::listeners).

use emitter_core::Message;
use emitter_listeners::Listeners;

pub(crate) type Unit = dyn Fn() + Send + Sync;
pub(crate) type Named = dyn Fn(&str) + Send + Sync;
pub(crate) type OnMessage = dyn Fn(&Message) + Send + Sync;
pub(crate) type OnAny = dyn Fn(&ClientEvent<'_>) + Send + Sync;

/// Any event a client emits, as an [`on_any`](crate::Client::on_any) listener sees it. The names are the reference
/// client's.
///
/// ```
/// use emitter_client::ClientEvent;
///
/// assert_eq!(ClientEvent::Join { username: "simon" }.name(), "join");
/// assert_eq!(ClientEvent::Accept.name(), "accept");
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent<'a> {
    /// `connect` was called: the socket is opening.
    Connecting,
    /// The socket is open.
    Connect,
    /// `disconnect` was called: the socket is closing.
    Closing,
    /// The socket closed (or failed to open).
    Close,
    /// `link` was called: the request is on its way.
    Linking,
    /// The server accepted the link request.
    Accept,
    /// The server rejected the link request.
    Reject {
        /// The server's reason.
        reason: &'a str,
    },
    /// A user joined (also sent for every user already there when this client links).
    Join {
        /// The user.
        username: &'a str,
    },
    /// A connection linked to a user (also sent for every linked user when this client links).
    Link {
        /// The user.
        username: &'a str,
    },
    /// `unlink` or `leave` was called: the request is on its way.
    Unlinking,
    /// A user's connection unlinked; when it is this client's own user, the client is `connected` again.
    Unlink {
        /// The user.
        username: &'a str,
    },
    /// A user left.
    Leave {
        /// The user.
        username: &'a str,
    },
    /// The server sent an application message (only delivered while linked).
    Message {
        /// The message.
        message: &'a Message,
    },
}

impl ClientEvent<'_> {
    /// The event's name as the reference spells it: `connecting`, `connect`, `closing`, `close`, `linking`, `accept`,
    /// `reject`, `join`, `link`, `unlinking`, `unlink`, `leave` or `message`.
    ///
    /// ```
    /// assert_eq!(emitter_client::ClientEvent::Unlinking.name(), "unlinking");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            ClientEvent::Connecting => "connecting",
            ClientEvent::Connect => "connect",
            ClientEvent::Closing => "closing",
            ClientEvent::Close => "close",
            ClientEvent::Linking => "linking",
            ClientEvent::Accept => "accept",
            ClientEvent::Reject { .. } => "reject",
            ClientEvent::Join { .. } => "join",
            ClientEvent::Link { .. } => "link",
            ClientEvent::Unlinking => "unlinking",
            ClientEvent::Unlink { .. } => "unlink",
            ClientEvent::Leave { .. } => "leave",
            ClientEvent::Message { .. } => "message",
        }
    }
}

/// One listener list per event.
#[derive(Default)]
pub(crate) struct Events {
    pub(crate) any: Listeners<OnAny>,
    pub(crate) connecting: Listeners<Unit>,
    pub(crate) connect: Listeners<Unit>,
    pub(crate) closing: Listeners<Unit>,
    pub(crate) close: Listeners<Unit>,
    pub(crate) linking: Listeners<Unit>,
    pub(crate) accept: Listeners<Unit>,
    pub(crate) unlinking: Listeners<Unit>,
    pub(crate) reject: Listeners<Named>,
    pub(crate) join: Listeners<Named>,
    pub(crate) link: Listeners<Named>,
    pub(crate) unlink: Listeners<Named>,
    pub(crate) leave: Listeners<Named>,
    pub(crate) message: Listeners<OnMessage>,
}

impl Events {
    /// Calls the any-event listeners, then the event's own, each in registration order.
    pub(crate) fn emit(&self, event: &ClientEvent<'_>) {
        let name = event.name();
        let _ = self.any.emit(name, |f| f(event));
        let unit = |list: &Listeners<Unit>| {
            let _ = list.emit(name, |f| f());
        };
        let named = |list: &Listeners<Named>, value: &str| {
            let _ = list.emit(name, |f| f(value));
        };
        match *event {
            ClientEvent::Connecting => unit(&self.connecting),
            ClientEvent::Connect => unit(&self.connect),
            ClientEvent::Closing => unit(&self.closing),
            ClientEvent::Close => unit(&self.close),
            ClientEvent::Linking => unit(&self.linking),
            ClientEvent::Accept => unit(&self.accept),
            ClientEvent::Unlinking => unit(&self.unlinking),
            ClientEvent::Reject { reason } => named(&self.reject, reason),
            ClientEvent::Join { username } => named(&self.join, username),
            ClientEvent::Link { username } => named(&self.link, username),
            ClientEvent::Unlink { username } => named(&self.unlink, username),
            ClientEvent::Leave { username } => named(&self.leave, username),
            ClientEvent::Message { message } => {
                let _ = self.message.emit(name, |f| f(message));
            }
        }
    }
}
