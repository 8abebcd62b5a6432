//! A chat relay: a linked user's `chat/message` whose payload is a string goes to every linked user, sender included,
//! as `{"type":"chat/message","payload":{"username":…,"text":…}}`. Anything else is ignored.

use emitter_core::{Message, Server};
use serde_json::json;

/// The message type clients send and receive.
pub const CHAT_MESSAGE: &str = "chat/message";

/// Builds the chat server with its relay registered; start it with `emitter_axum::listen`.
pub fn build() -> Server {
    let server = Server::new();
    let relay = server.clone();
    let _ = server.on_message(move |username, message| relay_chat(&relay, username, message));
    server
}

fn relay_chat(server: &Server, username: &str, message: &Message) {
    if message.kind != CHAT_MESSAGE {
        tracing::debug!(username, kind = message.kind, "ignored a message of another type");
        return;
    }
    let Some(text) = message.payload.as_ref().and_then(|p| p.as_str()) else {
        tracing::debug!(username, "ignored a chat message whose payload is not a string");
        return;
    };
    let said = json!({ "type": CHAT_MESSAGE, "payload": { "username": username, "text": text } });
    if let Err(error) = server.broadcast_json(&said, None) {
        tracing::warn!(%error, "could not relay a chat message");
    }
}
