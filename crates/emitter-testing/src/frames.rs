//! The frames a Krmx server sends, as JSON, and the link request a client sends.

use serde_json::{json, Value};

/// The protocol version [`link_request`] sends.
pub const VERSION: &str = "0.6.10";

/// `krmx/joined` for `username`.
pub fn joined(username: &str) -> Value {
    json!({"type": "krmx/joined", "payload": {"username": username}})
}

/// `krmx/linked` for `username`.
pub fn linked(username: &str) -> Value {
    json!({"type": "krmx/linked", "payload": {"username": username}})
}

/// What a newcomer is sent of the users that are linked, in join order (its own user last): `krmx/joined` then
/// `krmx/linked` for each of `usernames`.
pub fn snapshot(usernames: &[&str]) -> Vec<Value> {
    usernames
        .iter()
        .flat_map(|username| [joined(username), linked(username)])
        .collect()
}

/// `krmx/unlinked` for `username`.
pub fn unlinked(username: &str) -> Value {
    json!({"type": "krmx/unlinked", "payload": {"username": username}})
}

/// `krmx/left` for `username`.
pub fn left(username: &str) -> Value {
    json!({"type": "krmx/left", "payload": {"username": username}})
}

/// `krmx/rejected` with `reason`.
pub fn rejected(reason: &str) -> Value {
    json!({"type": "krmx/rejected", "payload": {"reason": reason}})
}

/// `krmx/accepted`.
pub fn accepted() -> Value {
    json!({"type": "krmx/accepted"})
}

/// A link request for `username` at [`VERSION`], without auth.
pub fn link_request(username: &str) -> Value {
    json!({"type": "krmx/link", "payload": {"username": username, "version": VERSION}})
}

/// Marks a point in a client's stream: the server sends `marker/<tag>` to a user, and the test reads up to it.
/// Whatever the action before it was going to send to that user has been queued before the marker.
pub fn marker(tag: &str) -> emitter_core::Message {
    emitter_core::Message::new(format!("marker/{tag}"))
}

/// The frame of [`marker`]`(tag)`.
pub fn marker_json(tag: &str) -> Value {
    json!({"type": format!("marker/{tag}")})
}
