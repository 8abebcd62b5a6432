//! Connect, link, exchange messages, leave and disconnect.
//!
//! `cargo run -p emitter-client --example quickstart` runs it against an emitter server it starts itself; set
//! `KRMX_URL=ws://localhost:8082/` to use a running server instead (such as `cargo run -p example-chat`).

use std::error::Error;

use emitter_core::{Message, Server};

use emitter_client::Client;

async fn chat(url: &str) -> Result<(), Box<dyn Error>> {
    let client = Client::new();
    // Listeners can be registered at any time; these log who comes and goes.
    client.on_join(|username| tracing::info!(username, "joined"));
    client.on_leave(|username| tracing::info!(username, "left"));
    client.on_message(|message| tracing::info!(kind = message.kind, "message"));

    client.connect(url).await?;
    // Resolves once the server accepted and linked this user; fails with the server's reason otherwise.
    client.link("simon", None).await?;
    tracing::info!(users = ?client.users(), "linked");

    // Start waiting before sending, so that a fast reply is not missed.
    let reply = client.wait_for_message_when(|message| message.kind == "chat/message");
    client.send(&Message::with_payload("chat/message", serde_json::json!("hello")))?;
    let reply = tokio::time::timeout(std::time::Duration::from_secs(5), reply).await?;
    tracing::info!(payload = ?reply.payload, "relayed");

    client.leave().await?; // the user leaves; the connection stays open
    client.disconnect(false).await?;
    Ok(())
}

/// A server that relays every `chat/message` to everyone, for the example to talk to.
async fn local_server() -> Result<(Server, String), Box<dyn Error>> {
    let server = Server::new();
    server.on_message(|u, m| {
        let _ = u.server().broadcast(m, None);
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = emitter_axum::listen_on(&server, listener).await?;
    Ok((server, format!("ws://127.0.0.1:{port}/")))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt::init();
    match std::env::var("KRMX_URL") {
        Ok(url) => chat(&url).await,
        Err(_) => {
            let (server, url) = local_server().await?;
            chat(&url).await?;
            server.close().await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn runs_against_a_local_server() {
        let (server, url) = super::local_server().await.unwrap();
        super::chat(&url).await.unwrap();
        assert!(server.users().is_empty(), "simon left");
        server.close().await.unwrap();
    }
}
