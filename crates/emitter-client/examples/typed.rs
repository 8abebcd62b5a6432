//! Typed payloads: send and receive your own `serde` types.
//!
//! `cargo run -p emitter-client --example typed` runs it against a server it starts itself.

use std::error::Error;
use std::time::Duration;

use emitter_core::Server;

use emitter_client::Client;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Move {
    x: u8,
    y: u8,
}

#[derive(Debug, Deserialize, PartialEq)]
struct Moved {
    by: String,
    x: u8,
    y: u8,
}

async fn play(url: &str) -> Result<Moved, Box<dyn Error>> {
    let client = Client::new();
    client.connect(url).await?;
    client.link("simon", None).await?;

    // Every `game/moved` whose payload reads as a `Moved` reaches this listener; others are logged and skipped.
    client.on_payload("game/moved", |moved: Moved| tracing::info!(?moved, "a move"));

    // Or wait for the next one; it fails if the payload does not read as a `Moved`.
    let next = client.wait_for_payload::<Moved>("game/moved");
    client.send_payload("game/move", &Move { x: 1, y: 2 })?;
    let moved = tokio::time::timeout(Duration::from_secs(5), next).await??;

    client.disconnect(true).await?;
    Ok(moved)
}

/// A server that answers every `game/move` with a `game/moved` to everyone.
async fn local_server() -> Result<(Server, String), Box<dyn Error>> {
    let server = Server::new();
    server.on_payload("game/move", |u, Move { x, y }| {
        let moved = serde_json::json!({ "by": u, "x": x, "y": y });
        let _ = u.server().broadcast_payload("game/moved", &moved, None);
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = emitter_axum::listen_on(&server, listener).await?;
    Ok((server, format!("ws://127.0.0.1:{port}/")))
}

/// Plays against a server of its own, which it closes afterwards.
async fn play_locally() -> Result<Moved, Box<dyn Error>> {
    let (server, url) = local_server().await?;
    let moved = play(&url).await?;
    server.close().await?;
    Ok(moved)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt::init();
    let moved = play_locally().await?;
    tracing::info!(?moved, "done");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn runs_against_a_local_server() {
        let moved = super::play_locally().await.unwrap();
        assert_eq!(
            moved,
            super::Moved {
                by: "simon".into(),
                x: 1,
                y: 2
            }
        );
    }
}
