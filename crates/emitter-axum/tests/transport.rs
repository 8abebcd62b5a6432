//! Transport behaviour over real sockets: frame kinds and sizes, pings, query parameters and paths, mounting into an
//! axum app, closing, and slow consumers.

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use emitter_core::{Message, QueryParam, Server, Status};
use emitter_testing::*;
use futures_util::StreamExt;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message as WsMessage;

// ---- helpers ---------------------------------------------------------------------------------------------------------

async fn loopback() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

// ---- frames ----------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn binary_frames_are_read_like_text_frames() {
    let (server, events, port) = start_default().await;

    // A link request in a binary frame.
    let mut simon = RawClient::connect(port).await;
    simon.send_binary(link_request("simon").to_string().as_bytes()).await;
    simon.expect(accepted()).await;
    simon.expect_all(&[joined("simon"), linked("simon")]).await;

    // An application message in a binary frame.
    let said = server.wait_for_message();
    simon
        .send_binary(br#"{"type":"custom/binary","payload":{"n":1}}"#)
        .await;
    let (from, message) = tokio::time::timeout(TIMEOUT, said).await.unwrap().unwrap();
    assert_eq!(from, "simon");
    assert_eq!(message.kind, "custom/binary");
    assert_eq!(message.payload, Some(json!({"n": 1})));
    assert!(events.contains("message simon custom/binary"));
}

#[tokio::test]
async fn an_oversized_message_closes_only_its_connection() {
    let (server, events, port) = start(Server::builder().max_message_size(1024)).await;
    let (mut simon, mut lisa) = RawClient::link_pair(port, "simon", "lisa").await;

    // Just under the limit is fine.
    let fits = json!({"type": "custom/fits", "payload": "x".repeat(900)}).to_string();
    assert!(fits.len() < 1024);
    let said = server.wait_for_message();
    simon.send_raw(&fits).await;
    let (from, _) = tokio::time::timeout(TIMEOUT, said).await.unwrap().unwrap();
    assert_eq!(from, "simon");

    let too_big = json!({"type": "custom/big", "payload": "x".repeat(2000)}).to_string();
    simon.send_raw(&too_big).await;
    simon.expect_closed().await;
    events.wait_for("unlink simon").await;
    lisa.expect(unlinked("simon")).await;
    assert!(!events.contains("message simon custom/big"));

    // The others carry on, and the server still accepts connections.
    let said = server.wait_for_message();
    lisa.send(json!({"type": "custom/still-here"})).await;
    let (from, _) = tokio::time::timeout(TIMEOUT, said).await.unwrap().unwrap();
    assert_eq!(from, "lisa");
    let mut again = RawClient::link_as(port, "simon").await;
    again.recv_until(&linked("simon")).await;
    lisa.expect(linked("simon")).await;
    assert_eq!(server.status(), Status::Listening);
    assert_eq!(server.users(), [user("simon", true), user("lisa", true)]);
}

// ---- pings -----------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn pings_keep_readers_linked_and_close_connections_that_never_answer() {
    let (server, events, port) = start(Server::builder().ping_interval(Duration::from_millis(100))).await;
    let lisa = RawClient::link_and_settle(port, "lisa").await;
    let simon = RawClient::link_and_settle(port, "simon").await;
    // Lisa's stream is held but never polled again, so her client never answers a ping.
    let mut lisa = lisa.into_inner();
    // Simon keeps reading; tungstenite answers each ping as it reads, and shows it to the reader.
    let mut simon = simon.into_inner();
    let counting = async {
        let mut texts = Vec::new();
        let mut pings = 0;
        while pings < 6 {
            match tokio::time::timeout(TIMEOUT, simon.next()).await {
                Ok(Some(Ok(WsMessage::Ping(_)))) => pings += 1,
                Ok(Some(Ok(WsMessage::Text(text)))) => {
                    texts.push(serde_json::from_str::<serde_json::Value>(&text).unwrap())
                }
                Ok(other) => panic!("simon's connection ended: {other:?}"),
                Err(_) => panic!("timed out waiting for a ping"),
            }
        }
        texts
    };
    let (mut texts, ()) = tokio::join!(counting, events.wait_for("unlink lisa"));

    // Six pings in, simon is still linked and his connection still carries messages.
    assert!(!events.contains("unlink simon"));
    assert_eq!(server.users(), [user("lisa", false), user("simon", true)]);
    server.send("simon", &marker("alive")).unwrap();
    loop {
        match tokio::time::timeout(TIMEOUT, simon.next()).await {
            Ok(Some(Ok(WsMessage::Text(text)))) => {
                let message: serde_json::Value = serde_json::from_str(&text).unwrap();
                if message == marker_json("alive") {
                    break;
                }
                texts.push(message);
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("simon's connection ended: {other:?}"),
        }
    }
    assert_eq!(texts, [unlinked("lisa")]);

    // Lisa's connection was closed by the server: what was buffered before she stopped answering, then its end.
    let ended = async {
        let mut texts = Vec::new();
        while let Some(Ok(message)) = lisa.next().await {
            if let WsMessage::Text(text) = message {
                texts.push(serde_json::from_str::<serde_json::Value>(&text).unwrap());
            }
        }
        texts
    };
    let buffered = tokio::time::timeout(TIMEOUT, ended)
        .await
        .expect("lisa's connection is still open");
    assert_eq!(buffered, [joined("simon"), linked("simon")]);
}

// ---- where connections are accepted ----------------------------------------------------------------------------------

#[tokio::test]
async fn query_parameters_are_checked_before_anything_else() {
    let (server, events, port) = start(Server::builder().query_param("token", QueryParam::Equals("abc".into()))).await;

    let mut simon = RawClient::connect_to(port, "/?token=abc").await.unwrap();
    simon.link("simon", None).await.unwrap();
    simon.expect_all(&[joined("simon"), linked("simon")]).await;

    // Without the token, or with another, the server closes the connection at once.
    let mut bare = RawClient::connect_to(port, "/").await.unwrap();
    assert_eq!(bare.try_recv().await, None);
    let mut wrong = RawClient::connect_to(port, "/?token=abd").await.unwrap();
    assert_eq!(wrong.link("lisa", None).await, Err("connection closed".to_owned()));

    server.send("simon", &marker("end")).unwrap();
    simon.expect(marker_json("end")).await;
    assert_eq!(events.filtered(&["authenticate"]).len(), 1);
    assert_eq!(server.users(), [user("simon", true)]);
}

#[tokio::test]
async fn the_endpoint_is_served_at_its_path_only() {
    let (server, _events, port) = start(Server::builder().path("my/application")).await;
    let mut simon = RawClient::connect_to(port, "/my/application").await.unwrap();
    simon.link("simon", None).await.unwrap();
    simon.expect_all(&[joined("simon"), linked("simon")]).await;
    assert!(RawClient::connect_to(port, "/").await.is_err());
    assert!(RawClient::connect_to(port, "/my").await.is_err());
    assert_eq!(server.users(), [user("simon", true)]);
}

// ---- mounting --------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_merged_router_serves_rest_and_websocket_side_by_side() {
    let server = Server::builder().path("/ws").build();
    let events = Recorder::attach(&server);
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(emitter_axum::router(&server));
    let (listener, bound) = loopback().await;
    let port = emitter_axum::serve(&server, listener, app).await.unwrap();
    assert_eq!(port, bound);
    assert_eq!(server.status(), Status::Listening);
    assert_eq!(events.lines(), ["listen"]);

    assert_eq!(http_get(port, "/health").await.status_body(), (200, "ok"));
    let mut simon = RawClient::connect_to(port, "/ws").await.unwrap();
    simon.link("simon", None).await.unwrap();
    simon.expect_all(&[joined("simon"), linked("simon")]).await;
    assert_eq!(http_get(port, "/health").await.status_body(), (200, "ok"));
    assert_eq!(http_get(port, "/missing").await.status, 404);

    tokio::time::timeout(TIMEOUT, server.close()).await.unwrap().unwrap();
    simon.expect_all(&[unlinked("simon"), left("simon")]).await;
    simon.expect_closed().await;
}

#[tokio::test]
async fn a_layer_upgrades_its_path_and_passes_everything_else_through() {
    let server = Server::builder().path("/krmx").build();
    let app = Router::new()
        .route("/api/hello", get(|| async { "hello" }))
        .layer(emitter_axum::layer(&server));
    let (listener, _) = loopback().await;
    let port = emitter_axum::serve(&server, listener, app).await.unwrap();

    assert_eq!(http_get(port, "/api/hello").await.status_body(), (200, "hello"));
    assert_eq!(http_get(port, "/missing").await.status, 404);
    let mut simon = RawClient::connect_to(port, "/krmx").await.unwrap();
    simon.link("simon", None).await.unwrap();
    simon.expect_all(&[joined("simon"), linked("simon")]).await;
    assert_eq!(http_get(port, "/api/hello").await.status_body(), (200, "hello"));
    assert!(RawClient::connect_to(port, "/api/hello").await.is_err());

    tokio::time::timeout(TIMEOUT, server.close()).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_nested_router_serves_under_its_prefix() {
    let server = Server::new();
    let app = Router::new()
        .route("/", get(|| async { "home" }))
        .nest("/game", emitter_axum::router(&server));
    let (listener, _) = loopback().await;
    let port = emitter_axum::serve(&server, listener, app).await.unwrap();

    assert_eq!(http_get(port, "/").await.status_body(), (200, "home"));
    let mut simon = RawClient::connect_to(port, "/game").await.unwrap();
    simon.link("simon", None).await.unwrap();
    simon.expect_all(&[joined("simon"), linked("simon")]).await;

    tokio::time::timeout(TIMEOUT, server.close()).await.unwrap().unwrap();
}

#[tokio::test]
async fn mark_listening_with_your_own_axum_serve_shuts_down_on_close() {
    let server = Server::new();
    let events = Recorder::attach(&server);
    let app = Router::new().merge(emitter_axum::router(&server));
    let (listener, port) = loopback().await;
    emitter_axum::mark_listening(&server, port).unwrap();
    assert_eq!(server.status(), Status::Listening);
    assert_eq!(events.lines(), ["listen"]);
    let closing = server.closing();
    let serving = tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(closing).await });

    let mut simon = RawClient::link_as(port, "simon").await;
    simon.expect_all(&[joined("simon"), linked("simon")]).await;

    tokio::time::timeout(TIMEOUT, server.close()).await.unwrap().unwrap();
    simon.expect_all(&[unlinked("simon"), left("simon")]).await;
    simon.expect_closed().await;
    let served = tokio::time::timeout(TIMEOUT, serving)
        .await
        .expect("axum::serve did not return after close");
    served.unwrap().unwrap();
    assert!(RawClient::connect_to(port, "/").await.is_err());
}

// ---- closing ---------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn close_makes_every_user_leave_and_closes_every_connection() {
    let (server, events, port) = start_default().await;
    let (mut simon, mut lisa) = RawClient::link_pair(port, "simon", "lisa").await;
    let mut idle = RawClient::connect(port).await;

    let closed = server.close();
    assert_eq!(server.status(), Status::Closing);
    simon.expect_all(&[unlinked("simon"), left("simon")]).await;
    simon.expect_closed().await;
    lisa.expect_all(&[unlinked("simon"), left("simon"), unlinked("lisa"), left("lisa")])
        .await;
    lisa.expect_closed().await;
    assert_eq!(idle.try_recv().await, None);

    tokio::time::timeout(TIMEOUT, closed)
        .await
        .expect("close() did not finish")
        .unwrap();
    assert_eq!(server.status(), Status::Closed);
    events.wait_for("close").await;
    assert_eq!(
        events.filtered(&["unlink", "leave", "close"]),
        ["unlink simon", "leave simon", "unlink lisa", "leave lisa", "close"]
    );
    assert!(server.users().is_empty());

    assert!(RawClient::connect_to(port, "/").await.is_err());
    assert_eq!(events.count("close"), 1);
}

// ---- slow consumers --------------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_slow_consumer_is_closed_without_holding_up_the_others() {
    let (server, events, port) = start(Server::builder().outbound_queue(8)).await;
    let slow = RawClient::link_and_settle(port, "slow").await;
    let mut fast = RawClient::link_and_settle(port, "fast").await;
    // Never read from here on: the socket's buffers fill up, then the connection's queue.
    let mut slow = slow.into_inner();

    let flood = Message::with_payload("flood/data", serde_json::json!("x".repeat(1024)));
    let mut sent = 0;
    for _ in 0..10_000 {
        if server.send("slow", &flood).is_err() {
            break; // unlinked already
        }
        sent += 1;
        // Let the connection's writer run, so the flood meets the socket's real backpressure.
        tokio::task::yield_now().await;
    }

    // The other client is served at once, whatever state the slow one is in.
    let asked = tokio::time::Instant::now();
    server.broadcast(&marker("prompt"), None).unwrap();
    let before = fast.recv_until(&marker_json("prompt")).await;
    assert!(asked.elapsed() < Duration::from_secs(1), "{:?}", asked.elapsed());
    assert!(before.iter().all(|m| *m == unlinked("slow")), "{before:?}");
    events.wait_for("unlink slow").await;
    if before.is_empty() {
        fast.expect(unlinked("slow")).await;
    }
    assert_eq!(server.users(), [user("slow", false), user("fast", true)]);

    // The slow connection was closed: it got part of the flood, then its end.
    let draining = async {
        let mut received = 0;
        while let Some(Ok(message)) = slow.next().await {
            if message.to_text().is_ok_and(|t| t.contains("flood/data")) {
                received += 1;
            }
        }
        received
    };
    let received = tokio::time::timeout(TIMEOUT, draining)
        .await
        .expect("the slow connection is still open");
    assert!(received < sent, "received {received} of {sent}");

    let said = server.wait_for_message();
    fast.send(json!({"type": "custom/done"})).await;
    let (from, _) = tokio::time::timeout(TIMEOUT, said).await.unwrap().unwrap();
    assert_eq!(from, "fast");
}

#[tokio::test]
async fn listen_binds_the_address_it_is_given() {
    let server = Server::new();
    let port = emitter_axum::listen(&server, ("127.0.0.1", 0)).await.unwrap();
    assert_ne!(port, 0, "port 0 picks a free port, and listen says which");
    let client = TestClient::linked(&format!("ws://127.0.0.1:{port}/"), "simon").await;
    assert_eq!(server.users().len(), 1);
    drop(client);
    within("close", server.close()).await.unwrap();

    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let busy = taken.local_addr().unwrap();
    let other = Server::new();
    let error = emitter_axum::listen(&other, busy).await.unwrap_err();
    assert!(error.to_string().starts_with("cannot start listening: "), "{error}");
    assert_eq!(
        other.status(),
        Status::Initializing,
        "a failed bind leaves the server ready to try again"
    );
}
