//! How connections end, over real sockets: every close has a close frame whose code says why (RFC 6455), a client's
//! close is answered with its own code, a refusal before the upgrade says why in its body, each connection logs why it
//! ended once, and `close()` is idempotent and bounded by the drain deadline.

use std::time::Duration;

use axum::Router;
use emitter_core::{Message, Server, Status};
use emitter_testing::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;

// ---- helpers ---------------------------------------------------------------------------------------------------------

/// Reads `ws` to its end: the `flood/data` frames that came, and the close frame if one came (`Some(None)`: a close
/// frame without a code).
async fn read_to_end(ws: &mut WsStream) -> (usize, Option<Option<(u16, String)>>) {
    let reading = async {
        let mut flood = 0;
        while let Some(Ok(message)) = ws.next().await {
            match message {
                WsMessage::Text(text) if text.contains("flood/data") => flood += 1,
                WsMessage::Close(frame) => {
                    let _ = ws.flush().await;
                    let frame = frame.map(|frame| (u16::from(frame.code), frame.reason.as_str().to_owned()));
                    return (flood, Some(frame));
                }
                _ => {}
            }
        }
        (flood, None)
    };
    within("the connection's end", reading).await
}

/// A server with a close drain deadline of `deadline` and room for 1,024 frames of 64 KiB a connection (frames and
/// bytes), on which `username` linked and was then sent `frames` frames of 64 KiB (`flood/data`), none of them read
/// yet: its WebSocket.
async fn flooded(deadline: Duration, username: &str, frames: usize) -> (Server, Recorder, WsStream) {
    let builder = Server::builder()
        .outbound_queue(1024)
        .outbound_budget(1024 * 65 * 1024)
        .close_drain_deadline(deadline);
    let (server, events, port) = start(builder).await;
    let ws = RawClient::link_and_settle(port, username).await.into_inner();
    let flood = Message::with_payload("flood/data", json!("x".repeat(64 * 1024)));
    for _ in 0..frames {
        server.send(username, &flood).unwrap();
    }
    (server, events, ws)
}

// ---- the client closes -----------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_close_is_answered_with_its_code_and_unlinks_the_user() {
    let (server, events, port) = start_default().await;
    for (username, code) in [("normal", Some(1000)), ("app", Some(4321)), ("bare", None)] {
        let mut ws = RawClient::link_and_settle(port, username).await.into_inner();
        let frame = code.map(|code| CloseFrame {
            code: CloseCode::from(code),
            reason: "bye".into(),
        });
        ws.close(frame).await.unwrap();
        let (_, answer) = read_to_end(&mut ws).await;
        let expected = code.map(|code| (code, "bye".to_owned()));
        assert_eq!(
            answer,
            Some(expected),
            "{username}'s close is answered with its own code"
        );
        assert!(ws.next().await.is_none(), "the server ended the TCP connection");
        events.wait_for(&format!("unlink {username}")).await;
    }
    within("close", server.close()).await.unwrap();
}

// ---- the server closes, with a code that says why --------------------------------------------------------------------

#[tokio::test]
async fn an_oversized_message_is_closed_with_1009_while_the_client_still_sends_it() {
    let (server, events, port) = start(Server::builder().max_message_size(1024)).await;
    let mut client = RawClient::link_and_settle(port, "big").await;
    // Far more than the socket buffers hold: the server must read and drop the rest for its close frame to arrive
    // rather than a reset.
    let too_big = json!({"type": "custom/big", "payload": "x".repeat(8 << 20)}).to_string();
    client.send_raw(&too_big).await;
    client.expect_close_with(1009, "message too big").await;
    drop(client);
    events.wait_for("unlink big").await;
    assert!(!events.contains("message big custom/big"));
    within("close", server.close()).await.unwrap();
}

#[tokio::test]
async fn invalid_utf8_is_closed_with_1007() {
    let (server, _events, port) = start_default().await;
    let mut client = RawClient::connect(port).await;
    client.send_frame(opcode::TEXT, &[0x7b, 0xff, 0xfe, 0x7d], true).await;
    client.expect_close_with(1007, "invalid UTF-8").await;
    within("close", server.close()).await.unwrap();
}

#[tokio::test]
async fn a_client_over_the_rate_limit_is_closed_with_1008() {
    let (server, events, port) = start(Server::builder().rate_limit(1.0, 3.0)).await;
    let mut flooder = RawClient::link_and_settle(port, "flood").await;
    for n in 0..10 {
        flooder.send(json!({"type": "app/spam", "payload": n})).await;
    }
    flooder.expect_close_with(1008, "rate limit exceeded").await;
    events.wait_for("unlink flood").await;
    within("close", server.close()).await.unwrap();
}

#[tokio::test]
async fn a_connection_past_the_link_deadline_is_closed_with_1008() {
    let (server, _events, port) = start(Server::builder().link_deadline(Duration::from_millis(100))).await;
    let mut idle = RawClient::connect(port).await;
    idle.expect_close_with(1008, "link deadline passed").await;
    within("close", server.close()).await.unwrap();
}

#[tokio::test]
async fn unexpected_query_parameters_are_closed_with_1008() {
    let (server, events, port) = start(Server::builder().query_param("room", emitter_core::QueryParam::Present)).await;
    let mut client = RawClient::connect_to(port, "/?other=1").await.unwrap();
    client.expect_close_with(1008, "unexpected query parameters").await;
    within("close", server.close()).await.unwrap();
    assert!(!events.lines().iter().any(|line| line.starts_with("authenticate")));
}

#[tokio::test]
async fn a_slow_consumer_gets_what_was_queued_then_1013() {
    // A long drain deadline: the slow connection is not cut, it is given the time to take what was queued for it.
    let builder = Server::builder()
        .outbound_queue(8)
        .close_drain_deadline(Duration::from_secs(60));
    let (server, events, port) = start(builder).await;
    let slow = RawClient::link_and_settle(port, "slow").await;
    // Not read from here on, until the server gave up on it: the socket's buffers fill up, then its queue.
    let mut slow = slow.into_inner();
    let (sent, refused) = flood_until_refused(&server, 100_000).await;
    assert_eq!(refused, emitter_core::Error::QueueFull);

    let (received, close) = read_to_end(&mut slow).await;
    assert_eq!(received, sent, "everything queued before the close went out, in order");
    assert_eq!(close, Some(Some((1013, "slow consumer".to_owned()))));
    events.wait_for("unlink slow").await;
    within("close", server.close()).await.unwrap();
}

/// Sends 16 KiB messages to `slow` until the server refuses one; returns how many it took and the refusal. Fails past
/// `at_most` sends (the limit under test never filled).
async fn flood_until_refused(server: &Server, at_most: usize) -> (usize, emitter_core::Error) {
    let flood = Message::with_payload("flood/data", json!("x".repeat(16 * 1024)));
    let mut sent = 0;
    loop {
        match server.send("slow", &flood) {
            Ok(()) => sent += 1,
            Err(error) => return (sent, error),
        }
        assert!(sent < at_most, "the outbound limit never filled after {sent} messages");
        // Let the connection's writer run, so the flood meets the socket's real backpressure.
        tokio::task::yield_now().await;
    }
}

fn slow_consumer_closes(server: &Server) -> usize {
    server
        .metrics_text()
        .lines()
        .find_map(|line| line.strip_prefix("krmx_connection_closes_total{cause=\"slow_consumer\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_slow_consumer_past_its_byte_budget_gets_what_was_queued_then_1013() {
    // Room for thousands of frames, but only 64 KiB: the byte budget is what the flood meets.
    let builder = Server::builder()
        .outbound_budget(64 * 1024)
        .close_drain_deadline(Duration::from_secs(60));
    let (server, events, port) = start(builder).await;
    let mut slow = RawClient::link_and_settle(port, "slow").await.into_inner();
    let (sent, refused) = flood_until_refused(&server, 4_000).await;
    assert_eq!(refused, emitter_core::Error::QueueFull);
    let (received, close) = read_to_end(&mut slow).await;
    assert_eq!(received, sent, "everything queued before the close went out, in order");
    assert_eq!(close, Some(Some((1013, "slow consumer".to_owned()))));
    events.wait_for("unlink slow").await;
    assert_eq!(slow_consumer_closes(&server), 1);
    within("close", server.close()).await.unwrap();
}

#[tokio::test]
async fn a_reader_a_byte_budget_behind_the_broadcasts_is_closed_with_1013() {
    let (server, events, port) = start(Server::builder().outbound_budget(64 * 1024)).await;
    let mut slow = RawClient::link_and_settle(port, "slow").await.into_inner();
    let flood = Message::with_payload("flood/data", json!("x".repeat(16 * 1024)));
    let mut broadcasts = 0;
    loop {
        let report = server.broadcast(&flood, None).unwrap();
        if !report.undelivered.is_empty() || report.delivered == 0 {
            break;
        }
        broadcasts += 1;
        assert!(broadcasts < 4_000, "the slow reader was never closed");
        tokio::task::yield_now().await;
    }
    let (_, close) = read_to_end(&mut slow).await;
    assert_eq!(close, Some(Some((1013, "slow consumer".to_owned()))));
    events.wait_for("unlink slow").await;
    assert_eq!(slow_consumer_closes(&server), 1);
    within("close", server.close()).await.unwrap();
}

#[tokio::test]
async fn a_write_past_the_write_deadline_closes_a_slow_consumer() {
    let (server, events, port) = start(Server::builder().write_deadline(Duration::from_millis(200))).await;
    let slow = RawClient::link_and_settle(port, "slow").await.into_inner();
    // One frame (an empty queue takes any size) far larger than the socket buffers hold: its write cannot finish.
    let huge = Message::with_payload("flood/data", json!("x".repeat(32 << 20)));
    server.send("slow", &huge).unwrap();
    events.wait_for("unlink slow").await;
    assert_eq!(slow_consumer_closes(&server), 1);
    drop(slow);
    within("close", server.close()).await.unwrap();
}

#[tokio::test]
async fn closing_the_server_closes_every_connection_with_1001() {
    let (server, _events, port) = start_default().await;
    let mut simon = RawClient::link_and_settle(port, "simon").await;
    let mut idle = RawClient::connect(port).await;
    let closed = server.close();
    simon.expect_all(&[unlinked("simon"), left("simon")]).await;
    simon.expect_close_with(1001, "server closing").await;
    idle.expect_close_with(1001, "server closing").await;
    within("close", closed).await.unwrap();
}

// ---- refusals before the upgrade -------------------------------------------------------------------------------------

#[tokio::test]
async fn a_refusal_before_the_upgrade_says_why_in_its_body_and_its_log() {
    let (logs, _guard) = CapturedLogs::capture();

    // Mounted, but the server was never marked listening.
    let server = Server::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app: Router = emitter_axum::router(&server);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let refused = http_get(port, "/").await;
    assert_eq!(refused.status_body(), (503, "the server is not listening"));

    let (full, _events, port) = start(Server::builder().max_connections(1)).await;
    let _only = RawClient::connect(port).await;
    let refused = http_get(port, "/").await;
    assert_eq!(refused.status_body(), (503, "too many connections"));
    let error = RawClient::connect_to(port, "/").await.err().unwrap_or_default();
    assert!(error.contains("503"), "{error}");

    let warned = logs.lines(tracing::Level::WARN, "incoming connection refused with 503");
    assert_eq!(
        warned,
        [
            "incoming connection refused with 503 reason=\"the server is not listening\"",
            "incoming connection refused with 503 reason=\"too many connections\"",
            "incoming connection refused with 503 reason=\"too many connections\"",
        ]
    );
    within("close", full.close()).await.unwrap();
}

// ---- why each connection ended, logged once --------------------------------------------------------------------------

#[tokio::test]
async fn each_connection_logs_why_it_ended_once_at_info() {
    let (logs, _guard) = CapturedLogs::capture();
    let (server, events, port) = start(Server::builder().max_message_size(1024)).await;

    let leaving = RawClient::link_and_settle(port, "leaving").await;
    leaving.close().await;
    events.wait_for("unlink leaving").await;

    let mut big = RawClient::link_and_settle(port, "big").await;
    big.send_raw(&"x".repeat(2048)).await;
    big.expect_close_frame().await;
    drop(big);
    events.wait_for("unlink big").await;

    let mut staying = RawClient::link_and_settle(port, "staying").await;
    let closed = server.close();
    staying.expect_close_frame().await;
    within("close", closed).await.unwrap();

    // One line per connection, whatever else was logged about it; each names its connection and the code it got.
    let ended = logs.lines(tracing::Level::INFO, "connection closed");
    let mut connections: Vec<&str> = ended
        .iter()
        .filter_map(|line| line.split(" connection=").nth(1)?.split(' ').next())
        .collect();
    connections.sort();
    connections.dedup();
    assert_eq!(connections.len(), 3, "{ended:?}");
    let mut reasons: Vec<String> = ended
        .iter()
        .map(|line| line.split(" connection=").next().unwrap_or_default().to_owned())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "connection closed: message too big",
            "connection closed: server closing",
            "connection closed: the client closed it without a code",
        ]
    );
    assert!(ended.iter().any(|line| line.ends_with("code=1009")), "{ended:?}");
    assert!(ended.iter().any(|line| line.ends_with("code=1001")), "{ended:?}");
}

// ---- closing the server ----------------------------------------------------------------------------------------------

#[tokio::test]
async fn close_twice_or_at_once_waits_for_the_same_close() {
    let (server, events, port) = start_default().await;
    let mut simon = RawClient::link_and_settle(port, "simon").await;
    let (first, second) = tokio::join!(server.close(), server.close());
    first.unwrap();
    second.unwrap();
    assert_eq!(server.status(), Status::Closed);
    within("a third close", server.close()).await.unwrap();
    assert_eq!(events.count("close"), 1);
    assert_eq!(events.count("leave simon"), 1);
    simon.expect_all(&[unlinked("simon"), left("simon")]).await;
    simon.expect_closed().await;
}

#[tokio::test]
async fn close_lets_a_slow_reader_take_everything_within_the_drain_deadline() {
    // Far more than the socket buffers hold, queued before the reader reads any of it.
    let (server, _events, mut reader) = flooded(Duration::from_secs(60), "reader", 256).await;
    // Let the writer take its first batch and block on the full socket: the close then interrupts a write, and what
    // the writer had taken must still go out.
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    let closed = tokio::spawn(server.close());
    let (received, close) = read_to_end(&mut reader).await;
    assert_eq!(received, 256);
    assert_eq!(close, Some(Some((1001, "server closing".to_owned()))));
    within("close", closed).await.unwrap().unwrap();
}

#[tokio::test]
async fn the_drain_deadline_cuts_a_client_that_never_reads() {
    let (server, events, mut stuck) = flooded(Duration::from_millis(100), "stuck", 512).await;
    // Nobody reads: close() finishes because the deadline cuts the connection.
    within("close", server.close()).await.unwrap();
    assert_eq!(events.count("leave stuck"), 1);
    let (received, close) = read_to_end(&mut stuck).await;
    assert!(received < 512, "the connection was cut, not drained: {received}");
    assert_eq!(close, None, "a cut connection gets no close frame");
}
