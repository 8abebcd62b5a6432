//! The chat over real sockets on loopback: the page over HTTP, the relay over WebSocket.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

const TIMEOUT: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn start() -> (emitter_core::Server, u16) {
    let server = super::build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = emitter_axum::serve(&server, listener, super::app(&server))
        .await
        .unwrap();
    (server, port)
}

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

/// Connects to `/ws`, links as `username` and reads up to its own `krmx/linked`.
async fn link(port: u16, username: &str) -> Ws {
    let (mut ws, _) = connect_async(format!("ws://127.0.0.1:{port}/ws")).await.unwrap();
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
async fn the_page_is_served_at_the_root() {
    let (server, port) = start().await;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("content-type: text/html"), "{response}");
    assert!(
        response.contains("new WebSocket"),
        "the page speaks Krmx over a browser WebSocket"
    );
    server.close().await.unwrap();
}

#[tokio::test]
async fn chat_messages_reach_everyone_and_others_are_ignored() {
    let (server, port) = start().await;
    let mut simon = link(port, "simon").await;
    let mut lisa = link(port, "lisa").await;
    assert_eq!(
        recv(&mut simon).await,
        json!({"type": "krmx/joined", "payload": {"username": "lisa"}})
    );
    assert_eq!(
        recv(&mut simon).await,
        json!({"type": "krmx/linked", "payload": {"username": "lisa"}})
    );

    // Not relayed: another type, and a chat message whose payload is not a string.
    send(&mut lisa, json!({"type": "chat/other", "payload": "x"})).await;
    send(&mut lisa, json!({"type": "chat/message", "payload": {"text": "x"}})).await;
    send(&mut lisa, json!({"type": "chat/message", "payload": "hello"})).await;
    let said = json!({"type": "chat/message", "payload": {"username": "lisa", "text": "hello"}});
    assert_eq!(recv(&mut simon).await, said);
    assert_eq!(recv(&mut lisa).await, said);

    // Lisa leaves: simon hears it, and lisa's connection stays open to link again.
    send(&mut lisa, json!({"type": "krmx/leave"})).await;
    assert_eq!(
        recv(&mut simon).await,
        json!({"type": "krmx/unlinked", "payload": {"username": "lisa"}})
    );
    assert_eq!(
        recv(&mut simon).await,
        json!({"type": "krmx/left", "payload": {"username": "lisa"}})
    );

    server.close().await.unwrap();
}

#[tokio::test]
async fn the_websocket_is_at_ws_only() {
    let (server, port) = start().await;
    assert!(connect_async(format!("ws://127.0.0.1:{port}/")).await.is_err());
    server.close().await.unwrap();
}
