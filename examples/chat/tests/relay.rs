//! The chat relay over a real WebSocket on loopback.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

const TIMEOUT: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn send(ws: &mut Ws, message: Value) {
    ws.send(WsMessage::text(message.to_string())).await.unwrap();
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

/// Connects, links as `username` and reads up to its own `krmx/linked`.
async fn link(port: u16, username: &str) -> Ws {
    let (mut ws, _) = connect_async(format!("ws://127.0.0.1:{port}/")).await.unwrap();
    send(
        &mut ws,
        json!({"type": "krmx/link", "payload": {"username": username, "version": "0.6.0"}}),
    )
    .await;
    assert_eq!(recv(&mut ws).await, json!({"type": "krmx/accepted"}));
    let own = json!({"type": "krmx/linked", "payload": {"username": username}});
    while recv(&mut ws).await != own {}
    ws
}

#[tokio::test]
async fn chat_messages_reach_everyone_and_others_are_ignored() {
    let server = example_chat::build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = emitter_axum::listen_on(&server, listener).await.unwrap();
    let mut simon = link(port, "simon").await;
    let mut lisa = link(port, "lisa").await;
    assert_eq!(recv(&mut simon).await["type"], "krmx/joined");
    assert_eq!(recv(&mut simon).await["type"], "krmx/linked");

    // Not relayed: another type, and a chat message whose payload is not a string.
    send(&mut lisa, json!({"type": "chat/other", "payload": "x"})).await;
    send(&mut lisa, json!({"type": "chat/message", "payload": {"text": "x"}})).await;
    send(&mut lisa, json!({"type": "chat/message", "payload": "hello"})).await;
    let said = json!({"type": "chat/message", "payload": {"username": "lisa", "text": "hello"}});
    assert_eq!(recv(&mut simon).await, said);
    assert_eq!(recv(&mut lisa).await, said);

    server.close().await.unwrap();
}
