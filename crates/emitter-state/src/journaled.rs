//! What the three models share when they run through a [`Journal`]: the owner's state beside the replica, how a
//! request is written and read back, and how a state crosses the journal as JSON.
//!
//! A journaled model keeps two states: the *replica*, which every node brings forward with the committed changes
//! (under the domain's lock, as the in-memory path does) and serves its own users from; and, while this node owns
//! the domain, the *owner's* state, on which handlers run before their change is committed. Nothing goes out from the
//! owner: every node, the owner too, sends from its replica once a change is committed.

use std::sync::Arc;

use emitter_core::{MembershipKind, Message, Server, WeakServer};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::journal::{Journal, JournalError, MembershipChange, Request};
use crate::Error;

/// The type of a server-side request a stream's owner compacts its history on (`Stream::compact`). Only the server
/// submits it: a model's message listener forwards nothing but its own protocol's types.
pub(crate) const COMPACT: &str = "state/compact";
/// The type of a server-side request a stream's owner rotates on (`Stream::rotate`), the new state its payload.
pub(crate) const ROTATE: &str = "state/rotate";
/// The type of a server-side `Atoms::set`, to which neither the key rule nor the bound applies.
pub(crate) const SET: &str = "state/set";

/// A model's journal, the server its replica serves, and the owner's state while this node owns the domain.
pub(crate) struct Attached<O> {
    pub(crate) journal: Arc<dyn Journal>,
    /// Weak: the server's listeners hold the model, and the journal holds it too.
    pub(crate) server: WeakServer,
    pub(crate) owner: Mutex<Option<O>>,
}

impl<O> Attached<O> {
    pub(crate) fn new(journal: Arc<dyn Journal>, server: &Server) -> Self {
        Attached {
            journal,
            server: server.downgrade(),
            owner: Mutex::new(None),
        }
    }

    /// Queues `text` as `user`'s request for the owner of `domain`.
    pub(crate) fn submit(&self, domain: &str, user: &str, text: String) -> Result<(), Error> {
        let request = Request::Message {
            user: user.to_owned(),
            text,
        };
        self.journal.submit(domain, request).map_err(|error| Error::Journal {
            reason: error.to_string(),
        })
    }
}

/// What a journaled projection or stream has beside the in-memory one's: its place in the journal with the owner's
/// `O` (a projection's state, a stream's log), and its state `S` as JSON.
pub(crate) struct Journaling<O, S> {
    pub(crate) attached: Attached<O>,
    pub(crate) codec: Codec<S>,
    /// The initial state, as JSON: the owner's and the replica's starting point without a checkpoint.
    pub(crate) initial: Value,
}

impl<O, S: Serialize + DeserializeOwned> Journaling<O, S> {
    /// Fails when the initial state does not serialize to JSON.
    pub(crate) fn new(journal: Arc<dyn Journal>, server: &Server, initial: &S) -> Result<Self, JournalError> {
        let codec = Codec::json();
        let initial = (codec.encode)(initial)
            .map_err(|reason| JournalError::Domain(format!("the initial state is not JSON: {reason}")))?;
        Ok(Journaling {
            attached: Attached::new(journal, server),
            codec,
            initial,
        })
    }
}

/// How a state crosses the journal: as JSON, with serde.
pub(crate) struct Codec<S> {
    pub(crate) encode: fn(&S) -> Result<Value, String>,
    pub(crate) decode: fn(Value) -> Result<S, String>,
}

impl<S: Serialize + DeserializeOwned> Codec<S> {
    pub(crate) fn json() -> Self {
        Codec {
            encode: |state| serde_json::to_value(state).map_err(|error| error.to_string()),
            decode: |value| serde_json::from_value(value).map_err(|error| error.to_string()),
        }
    }
}

/// The whole message as text, its payload as the client sent it when the server kept it (a stream's event then keeps
/// its members in the order sent).
pub(crate) fn request_text(message: &Message) -> String {
    match message.raw_payload() {
        Some(raw) => {
            let kind = serde_json::to_string(&message.kind).unwrap_or_else(|_| "\"\"".to_owned());
            format!(r#"{{"type":{kind},"payload":{}}}"#, raw.get())
        }
        // A `Message` always serializes (a string and a JSON value).
        None => serde_json::to_string(message).unwrap_or_default(),
    }
}

/// A message of a server-side request: `{"type": kind, "payload": payload}` as text.
pub(crate) fn server_request(kind: &str, payload: Value) -> String {
    request_text(&Message::with_payload(kind, payload))
}

/// The message a request's text is, with its payload's text; `None` when the text is not a message.
pub(crate) fn read_request(text: &str) -> Option<(Message, Option<Box<RawValue>>)> {
    #[derive(Deserialize)]
    struct Whole<'a> {
        #[serde(rename = "type")]
        kind: String,
        #[serde(borrow, default)]
        payload: Option<&'a RawValue>,
    }
    let whole: Whole<'_> = serde_json::from_str(text).ok()?;
    let message = match whole.payload {
        Some(raw) => Message::with_payload(whole.kind, serde_json::from_str::<Value>(raw.get()).ok()?),
        None => Message::new(whole.kind),
    };
    Some((message, whole.payload.map(RawValue::to_owned)))
}

/// The journal's name for a membership change.
pub(crate) fn change_of(kind: MembershipKind) -> MembershipChange {
    match kind {
        MembershipKind::Join => MembershipChange::Join,
        MembershipKind::Link => MembershipChange::Link,
        MembershipKind::Unlink => MembershipChange::Unlink,
        MembershipKind::Leave => MembershipChange::Leave,
    }
}

/// The users linked to this node's connections.
pub(crate) fn linked_here(server: &Server) -> Vec<String> {
    server
        .users()
        .into_iter()
        .filter(|user| user.is_linked && server.is_linked_here(&user.username))
        .map(|user| user.username)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_request_reads_back_as_the_message_it_was() {
        let message = Message::with_payload("projection/action", json!({"domain": "d", "action": {"type": "t"}}));
        let (read, raw) = read_request(&request_text(&message)).unwrap();
        assert_eq!(read, message);
        assert_eq!(raw.unwrap().get(), r#"{"action":{"type":"t"},"domain":"d"}"#);
        assert_eq!(read_request(r#"{"type":"x"}"#).unwrap().0, Message::new("x"));
        assert!(read_request("[1]").is_none());
    }
}
