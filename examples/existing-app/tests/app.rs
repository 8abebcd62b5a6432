//! REST and Krmx on one port, over real sockets on loopback.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

use example_existing_app::mounting::{layered, merged, nested};
use example_existing_app::{build, serve, AppState};

const TIMEOUT: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One HTTP/1.1 request; returns the status code and the body.
async fn http(port: u16, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
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

async fn send(ws: &mut Ws, message: Value) {
    ws.send(WsMessage::text(message.to_string())).await.unwrap();
}

/// Links as `username` at `path` and reads up to its own `krmx/linked`.
async fn link(port: u16, path: &str, username: &str) -> Ws {
    let (mut ws, _) = connect_async(format!("ws://127.0.0.1:{port}{path}")).await.unwrap();
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

/// Serves `state` with `serve` on a free port; returns the port and the serving task.
async fn start(state: AppState) -> (u16, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (port, tokio::spawn(serve(listener, state)))
}

#[tokio::test]
async fn handlers_and_listeners_share_the_state() {
    let state = build();
    let krmx = state.krmx.clone();
    let (port, serving) = start(state).await;
    assert_eq!(http(port, "GET", "/api/health", None).await, (200, "ok".to_owned()));

    let mut alice = link(port, "/krmx", "alice").await;
    let (status, body) = http(port, "GET", "/api/users", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!([{"username": "alice", "isLinked": true}])
    );

    // A handler broadcasts through the Krmx server.
    let announcement = json!({"text": "maintenance at noon"});
    assert_eq!(
        http(port, "POST", "/api/announcements", Some(announcement)).await.0,
        202
    );
    assert_eq!(
        recv(&mut alice).await,
        json!({"type": "app/announcement", "payload": "maintenance at noon"})
    );

    // A Krmx listener counts messages; a handler reads the count.
    let counted = krmx.wait_for_message();
    send(&mut alice, json!({"type": "app/hello"})).await;
    tokio::time::timeout(TIMEOUT, counted).await.unwrap();
    let (_, body) = http(port, "GET", "/api/stats", None).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"users": 1, "messages": 1})
    );

    // A handler kicks.
    assert_eq!(http(port, "DELETE", "/api/users/alice", None).await.0, 204);
    assert_eq!(
        recv(&mut alice).await,
        json!({"type": "krmx/unlinked", "payload": {"username": "alice"}})
    );
    assert_eq!(
        recv(&mut alice).await,
        json!({"type": "krmx/left", "payload": {"username": "alice"}})
    );
    assert_eq!(http(port, "DELETE", "/api/users/alice", None).await.0, 404);

    krmx.close().await.unwrap();
    tokio::time::timeout(TIMEOUT, serving).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn closing_krmx_closes_the_websockets_and_stops_http() {
    let state = build();
    let krmx = state.krmx.clone();
    let (port, serving) = start(state).await;
    let mut alice = link(port, "/krmx", "alice").await;

    krmx.close().await.unwrap();
    assert_eq!(recv(&mut alice).await["type"], "krmx/unlinked");
    assert_eq!(recv(&mut alice).await["type"], "krmx/left");
    loop {
        match tokio::time::timeout(TIMEOUT, alice.next()).await.unwrap() {
            Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        }
    }
    tokio::time::timeout(TIMEOUT, serving).await.unwrap().unwrap().unwrap();
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
}

#[tokio::test]
async fn merge_nest_and_layer_mount_the_endpoint() {
    for (mount, path) in [
        (merged as fn(AppState) -> axum::Router, "/krmx"),
        (nested, "/realtime/krmx"),
        (layered, "/krmx"),
    ] {
        let state = build();
        let krmx = state.krmx.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = emitter_axum::serve(&krmx, listener, mount(state)).await.unwrap();
        let _alice = link(port, path, "alice").await;
        assert_eq!(
            http(port, "GET", "/api/health", None).await,
            (200, "ok".to_owned()),
            "{path}"
        );
        krmx.close().await.unwrap();
    }
}
