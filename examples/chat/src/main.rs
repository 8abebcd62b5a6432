//! A chat: the page `index.html` at `/`, the Krmx endpoint at `/ws`. A linked user's `chat/message` whose payload is
//! a string goes to every linked user, the sender included, as
//! `{"type":"chat/message","payload":{"username":…,"text":…}}`; anything else is ignored.
//!
//! Runs on `PORT` (default 8082) until Ctrl-C. The whole program is this one file and `index.html`, so that the book's
//! getting-started chapter can show it as it is; that is why it starts up on its own rather than with
//! `examples/support` as the other examples do: a reader's first crate has no such helper.

use std::time::Duration;

use axum::response::Html;
use axum::routing::get;
use axum::Router;
use emitter_core::{Message, Server, UserRef};
use serde_json::json;
use tracing_subscriber::EnvFilter;

/// The message type clients send and receive.
const CHAT_MESSAGE: &str = "chat/message";

/// Builds the chat server, with the Krmx endpoint at `/ws` and the relay registered. A user whose page went away (a
/// closed tab) leaves when it has not come back within a minute, so closed tabs do not stay in the list for good.
fn build() -> Server {
    let server = Server::builder()
        .path("/ws")
        .grace_period(Duration::from_secs(60))
        .build();
    server.on_message(relay_chat);
    server.on_join(|u| tracing::info!(username = %u, "joined"));
    server.on_leave(|u| tracing::info!(username = %u, "left"));
    server
}

/// Relays a `chat/message` with a string payload to every linked user, the sender included.
fn relay_chat(user: UserRef<'_>, message: &Message) {
    if message.kind != CHAT_MESSAGE {
        tracing::debug!(username = %user, kind = message.kind, "ignored a message of another type");
        return;
    }
    let Some(text) = message.payload.as_ref().and_then(|payload| payload.as_str()) else {
        tracing::debug!(username = %user, "ignored a chat message whose payload is not a string");
        return;
    };
    let said = json!({ "username": user, "text": text });
    if let Err(error) = user.server().broadcast_payload(CHAT_MESSAGE, &said, None) {
        tracing::warn!(%error, "could not relay a chat message");
    }
}

/// The page, compiled into the binary: no build step, no static file server.
const PAGE: &str = include_str!("../index.html");

/// The web app: the page at `/`, merged with the Krmx endpoint at the server's path (`/ws`).
fn app(server: &Server) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .merge(emitter_axum::router(server))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())) // no colour codes in a log file or a pipe
        .init();
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT must be a port number, not {port:?}"))?,
        Err(_) => 8082,
    };

    let server = build();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let port = emitter_axum::serve(&server, listener, app(&server)).await?;
    println!("chat on http://localhost:{port}/ (Ctrl-C to stop)");

    tokio::signal::ctrl_c().await?;
    tracing::info!("Ctrl-C: closing");
    server.close().await?; // every user leaves, every connection closes, then the HTTP server stops
    Ok(())
}

#[cfg(test)]
mod tests;
