//! Link attempts over a real WebSocket on loopback.

use std::time::Duration;

use emitter_core::Server;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

pub const TIMEOUT: Duration = Duration::from_secs(5);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Serves `server` on a free loopback port.
pub async fn start(server: &Server) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    emitter_axum::listen_on(server, listener).await.unwrap()
}

pub async fn recv(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(TIMEOUT, ws.next()).await {
            Ok(Some(Ok(WsMessage::Text(text)))) => return serde_json::from_str(&text).unwrap(),
            Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => continue,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// Connects, asks to link as `username` with `auth`, and returns the connection and the server's answer:
/// `Ok(())` for `krmx/accepted`, `Err(reason)` for `krmx/rejected`.
pub async fn attempt(port: u16, username: &str, auth: Option<&str>) -> (Ws, Result<(), String>) {
    let (mut ws, _) = connect_async(format!("ws://127.0.0.1:{port}/")).await.unwrap();
    let mut payload = json!({"username": username, "version": "0.6.0"});
    if let Some(auth) = auth {
        payload["auth"] = json!(auth);
    }
    let link = json!({"type": "krmx/link", "payload": payload});
    ws.send(WsMessage::text(link.to_string())).await.unwrap();
    let answer = recv(&mut ws).await;
    let outcome = match answer["type"].as_str() {
        Some("krmx/accepted") => Ok(()),
        Some("krmx/rejected") => Err(answer["payload"]["reason"].as_str().unwrap().to_owned()),
        _ => panic!("expected accepted or rejected, got {answer}"),
    };
    (ws, outcome)
}
