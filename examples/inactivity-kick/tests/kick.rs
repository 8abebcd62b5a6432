//! Inactivity kicks over a real socket on loopback. Every wait is on a server event, bounded by a timeout.

use std::time::{Duration, Instant};

use emitter_core::Server;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

const TIMEOUT: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn start(after: Duration) -> (Server, u16) {
    let server = Server::new();
    example_inactivity_kick::kick_when_inactive(&server, after);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = emitter_axum::listen_on(&server, listener).await.unwrap();
    (server, port)
}

async fn recv(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(TIMEOUT, ws.next()).await {
            Ok(Some(Ok(WsMessage::Text(text)))) => return serde_json::from_str(&text).unwrap(),
            Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => continue,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

async fn link(port: u16, username: &str) -> Ws {
    let (mut ws, _) = connect_async(format!("ws://127.0.0.1:{port}/")).await.unwrap();
    let request = json!({"type": "krmx/link", "payload": {"username": username, "version": "0.6.0"}});
    ws.send(WsMessage::text(request.to_string())).await.unwrap();
    assert_eq!(recv(&mut ws).await, json!({"type": "krmx/accepted"}));
    ws
}

/// Drops the connection and waits until the server has unlinked the user.
async fn disconnect(server: &Server, ws: Ws, username: &'static str) {
    let unlinked = server.wait_for_unlink_when(move |name| name == username);
    drop(ws);
    tokio::time::timeout(TIMEOUT, unlinked).await.unwrap();
}

#[tokio::test]
async fn a_user_unlinked_too_long_is_kicked() {
    let after = Duration::from_millis(300);
    let (server, port) = start(after).await;
    let alice = link(port, "alice").await;
    let left = server.wait_for_leave_when(|name| name == "alice");
    let unlinked_at = Instant::now();
    disconnect(&server, alice, "alice").await;
    tokio::time::timeout(TIMEOUT, left).await.unwrap();
    assert!(unlinked_at.elapsed() >= after);
    assert_eq!(server.user("alice"), None);
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_user_who_relinks_in_time_stays() {
    let (server, port) = start(Duration::from_secs(1)).await;
    let bob = link(port, "bob").await;
    disconnect(&server, bob, "bob").await;
    let _bob = link(port, "bob").await; // well within the second

    // Carol's countdown starts after bob's would have: once carol is kicked, bob's would have run out too.
    let carol = link(port, "carol").await;
    let left = server.wait_for_leave_when(|name| name == "carol");
    disconnect(&server, carol, "carol").await;
    tokio::time::timeout(TIMEOUT, left).await.unwrap();
    assert!(server.user("bob").is_some_and(|user| user.is_linked));
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_joined_user_nobody_links_to_is_kicked() {
    let (server, _port) = start(Duration::from_millis(200)).await;
    let left = server.wait_for_leave_when(|name| name == "ghost");
    server.join("ghost").unwrap();
    tokio::time::timeout(TIMEOUT, left).await.unwrap();
    assert!(server.users().is_empty());
    server.close().await.unwrap();
}
