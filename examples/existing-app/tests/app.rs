//! REST and Krmx on one port, over real sockets on loopback; the Krmx client is emitter-client.

use emitter_testing::{http, left, unlinked, within, ws_url, Receive, TestClient};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

use example_existing_app::mounting::{layered, merged, nested};
use example_existing_app::{build, serve, AppState};

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
    assert_eq!(http(port, "GET", "/api/health", None).await.status_body(), (200, "ok"));

    let mut alice = TestClient::linked(&ws_url(port, "/krmx"), "alice").await;
    let users = http(port, "GET", "/api/users", None).await;
    assert_eq!(users.status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&users.body).unwrap(),
        json!([{"username": "alice", "isLinked": true}])
    );

    // A handler broadcasts through the Krmx server.
    let announcement = json!({"text": "maintenance at noon"}).to_string();
    assert_eq!(
        http(port, "POST", "/api/announcements", Some(&announcement))
            .await
            .status,
        202
    );
    assert_eq!(
        alice.recv().await,
        json!({"type": "app/announcement", "payload": "maintenance at noon"})
    );

    // A Krmx listener counts messages; a handler reads the count.
    let counted = krmx.wait_for_message();
    alice.send(json!({"type": "app/hello"}));
    within("a message", counted).await.unwrap();
    let stats = http(port, "GET", "/api/stats", None).await;
    assert_eq!(
        serde_json::from_str::<Value>(&stats.body).unwrap(),
        json!({"users": 1, "messages": 1})
    );

    // A handler kicks.
    assert_eq!(http(port, "DELETE", "/api/users/alice", None).await.status, 204);
    assert_eq!(alice.recv().await, unlinked("alice"));
    assert_eq!(alice.recv().await, left("alice"));
    assert_eq!(http(port, "DELETE", "/api/users/alice", None).await.status, 404);

    krmx.close().await.unwrap();
    within("the HTTP server", serving).await.unwrap().unwrap();
}

#[tokio::test]
async fn closing_krmx_closes_the_websockets_and_stops_http() {
    let state = build();
    let krmx = state.krmx.clone();
    let (port, serving) = start(state).await;
    let mut alice = TestClient::linked(&ws_url(port, "/krmx"), "alice").await;

    krmx.close().await.unwrap();
    assert_eq!(alice.recv().await["type"], "krmx/unlinked");
    assert_eq!(alice.recv().await["type"], "krmx/left");
    alice.expect_closed().await;
    within("the HTTP server", serving).await.unwrap().unwrap();
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
        let _alice = TestClient::linked(&ws_url(port, path), "alice").await;
        assert_eq!(
            http(port, "GET", "/api/health", None).await.status_body(),
            (200, "ok"),
            "{path}"
        );
        krmx.close().await.unwrap();
    }
}
