//! The chat over real sockets on loopback: the page over HTTP, the relay over WebSocket, driven by emitter-client.

use emitter_testing::{http_get, joined, left, linked, unlinked, ws_url, Receive, TestClient};
use serde_json::json;
use tokio::net::TcpListener;

async fn start() -> (emitter_core::Server, u16) {
    let server = super::build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = emitter_axum::serve(&server, listener, super::app(&server))
        .await
        .unwrap();
    (server, port)
}

#[tokio::test]
async fn the_page_is_served_at_the_root() {
    let (server, port) = start().await;
    let response = http_get(port, "/").await;
    assert_eq!(response.status, 200, "{response:?}");
    assert!(response.head.contains("content-type: text/html"), "{response:?}");
    assert!(
        response.body.contains("new WebSocket"),
        "the page speaks Krmx over a browser WebSocket"
    );
    server.close().await.unwrap();
}

#[tokio::test]
async fn chat_messages_reach_everyone_and_others_are_ignored() {
    let (server, port) = start().await;
    let url = ws_url(port, "/ws");
    let mut simon = TestClient::linked(&url, "simon").await;
    let mut lisa = TestClient::linked(&url, "lisa").await;
    assert_eq!(simon.recv().await, joined("lisa"));
    assert_eq!(simon.recv().await, linked("lisa"));

    // Not relayed: another type, and a chat message whose payload is not a string.
    lisa.send(json!({"type": "chat/other", "payload": "x"}));
    lisa.send(json!({"type": "chat/message", "payload": {"text": "x"}}));
    lisa.send(json!({"type": "chat/message", "payload": "hello"}));
    let said = json!({"type": "chat/message", "payload": {"username": "lisa", "text": "hello"}});
    assert_eq!(simon.recv().await, said);
    assert_eq!(lisa.recv().await, said);

    // Lisa leaves: simon hears it, and lisa's connection stays open to link again.
    lisa.client().leave().await.unwrap();
    assert_eq!(simon.recv().await, unlinked("lisa"));
    assert_eq!(simon.recv().await, left("lisa"));
    assert_eq!(lisa.client().status(), emitter_client::ClientStatus::Connected);

    server.close().await.unwrap();
}

#[tokio::test]
async fn the_websocket_is_at_ws_only() {
    let (server, port) = start().await;
    assert!(TestClient::try_connect(&ws_url(port, "/")).await.is_err());
    server.close().await.unwrap();
}

#[test]
fn a_closed_tab_leaves_after_a_minute() {
    assert_eq!(
        super::build().config().grace_period(),
        Some(std::time::Duration::from_secs(60))
    );
}
