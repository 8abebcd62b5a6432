//! `GET /metrics` and `GET /health` over real sockets on loopback: the numbers move as connections, links, messages,
//! rejections and closes happen on the WebSocket endpoint beside them.

use std::time::{Duration, Instant};

use emitter_core::Server;
use emitter_testing::*;
use serde_json::json;
use tokio::net::TcpListener;

/// Serves `server` with the Krmx endpoint, `/metrics` and `/health` on one free loopback port.
async fn serve_with_ops(server: &Server) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = emitter_axum::router(server)
        .merge(emitter_axum::metrics_route(server))
        .merge(emitter_axum::health_route(server));
    emitter_axum::serve(server, listener, app).await.unwrap()
}

/// One scrape of `/metrics`.
async fn scrape(port: u16) -> String {
    let response = http_get(port, "/metrics").await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        response.head.contains("text/plain; version=0.0.4"),
        "not the Prometheus text format: {}",
        response.head
    );
    response.body
}

/// The value of one sample (`name` with its labels, as written) in a scrape; `None` when it is not there.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Scrapes until every `(sample, value)` holds, for the numbers that move just after what a client can see (a frame
/// is counted once its write has been flushed, a closed connection once the transport reported it). Bounded.
async fn scrape_until(port: u16, expected: &[(&str, f64)]) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = scrape(port).await;
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(name, value)| sample(&text, name) != Some(*value))
            .map(|(name, value)| format!("{name}: want {value}, got {:?}", sample(&text, name)))
            .collect();
        if wrong.is_empty() {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never settled:\n{}\n\n{text}",
            wrong.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn metrics_follow_connections_links_messages_rejections_and_closes() {
    let server = Server::builder().max_message_size(1024).build();
    server.on_authenticate(|_, info, ctx| {
        if info.auth.as_deref() == Some("nope") {
            ctx.reject("banned: a reason of the app's own");
        }
    });
    server.on_message(|u, m| {
        let _ = u.server().broadcast(m, Some(u.username()));
    });
    let port = serve_with_ops(&server).await;
    let fresh = scrape(port).await;
    assert_eq!(sample(&fresh, "krmx_connections_open"), Some(0.0));
    assert_eq!(
        sample(&fresh, "krmx_link_attempts_total{outcome=\"accepted\"}"),
        Some(0.0)
    );
    assert!(
        !fresh.contains("krmx_cluster_"),
        "a server that is not a node has no cluster metrics"
    );

    let (mut ann, mut bob) = RawClient::link_pair(port, "ann", "bob").await;
    let before = scrape_until(
        port,
        &[
            ("krmx_connections_open", 2.0),
            ("krmx_connections_linked", 2.0),
            ("krmx_users", 2.0),
            ("krmx_users_linked", 2.0),
            ("krmx_link_attempts_total{outcome=\"accepted\"}", 2.0),
            ("krmx_link_duration_seconds_count", 2.0),
            ("krmx_auth_duration_seconds_count", 2.0),
            ("krmx_messages_received_total", 2.0),
            // ann: accepted, her snapshot (joined, linked), bob's joined and linked; bob: accepted, his snapshot.
            ("krmx_messages_sent_total", 10.0),
        ],
    )
    .await;

    // Three messages from ann, each broadcast to bob only.
    let sent: Vec<String> = (0..3)
        .map(|n| json!({"type": "app/say", "payload": n}).to_string())
        .collect();
    for text in &sent {
        ann.send_raw(text).await;
    }
    for n in 0..3 {
        bob.expect(json!({"type": "app/say", "payload": n})).await;
    }
    let in_bytes: usize = sent.iter().map(String::len).sum();
    let value = |text: &str, name: &str| sample(text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"));
    let after = scrape_until(
        port,
        &[
            ("krmx_messages_received_total", 5.0),
            (
                "krmx_received_bytes_total",
                value(&before, "krmx_received_bytes_total") + in_bytes as f64,
            ),
            (
                "krmx_messages_sent_total",
                value(&before, "krmx_messages_sent_total") + 3.0,
            ),
            (
                "krmx_sent_bytes_total",
                value(&before, "krmx_sent_bytes_total") + in_bytes as f64,
            ),
        ],
    )
    .await;
    assert!(value(&after, "krmx_outbound_queue_depth_count") >= 3.0, "{after}");
    assert!(
        value(&after, "krmx_outbound_queue_depth_bucket{le=\"+Inf\"}") >= 3.0,
        "{after}"
    );

    // Two rejected link attempts: one by the app (its reason is never a label), one by the protocol. And an invalid
    // message from an unlinked connection: a rejection, but not of a link attempt.
    let refused = RawClient::link_with(port, "eve", Some("nope")).await.err();
    assert_eq!(refused.as_deref(), Some("banned: a reason of the app's own"));
    let invalid = RawClient::link_with(port, "not valid", None).await.err();
    assert_eq!(invalid.as_deref(), Some("invalid username"));
    let mut stranger = RawClient::connect(port).await;
    stranger.send_raw("not json").await;
    stranger.expect(rejected("invalid message")).await;
    stranger.close().await;

    // An oversize message closes its connection with 1009.
    let mut big = RawClient::link_and_settle(port, "big").await;
    big.send_raw(&format!(r#"{{"type":"app/x","payload":"{}"}}"#, "x".repeat(2000)))
        .await;
    assert_eq!(big.expect_close_frame().await.map(|(code, _)| code), Some(1009));

    let text = scrape_until(
        port,
        &[
            ("krmx_link_attempts_total{outcome=\"accepted\"}", 3.0),
            ("krmx_link_attempts_total{outcome=\"rejected\"}", 2.0),
            ("krmx_rejections_total{reason=\"app\"}", 1.0),
            ("krmx_rejections_total{reason=\"invalid_username\"}", 1.0),
            ("krmx_rejections_total{reason=\"invalid_message\"}", 1.0),
            ("krmx_rejections_total{reason=\"already_linked\"}", 0.0),
            ("krmx_connection_closes_total{cause=\"oversize\"}", 1.0),
            ("krmx_connection_closes_total{cause=\"slow_consumer\"}", 0.0),
            ("krmx_auth_duration_seconds_count", 4.0),
            ("krmx_link_duration_seconds_count", 3.0),
            ("krmx_users", 3.0),
            ("krmx_users_linked", 2.0),
            ("krmx_connections_linked", 2.0),
            ("krmx_connections_open", 2.0),
        ],
    )
    .await;
    assert!(!text.contains("banned"), "an app's reason is never a label: {text}");
    server.close().await.unwrap();
    // ann and bob were still open: the close closed them (its HTTP server is gone, so read the text directly).
    let text = server.metrics_text();
    assert_eq!(
        sample(&text, "krmx_connection_closes_total{cause=\"server_closing\"}"),
        Some(2.0),
        "{text}"
    );
    drop((ann, bob));
}

#[tokio::test]
async fn rate_limit_and_slow_consumer_closes_are_counted() {
    let server = Server::builder().rate_limit(1.0, 3.0).outbound_queue(4).build();
    let port = serve_with_ops(&server).await;
    let mut flooder = RawClient::link_and_settle(port, "flood").await;
    for n in 0..10 {
        flooder.send(json!({"type": "app/spam", "payload": n})).await;
    }
    let code = flooder.expect_close_frame().await.map(|(code, _)| code);
    assert_eq!(code, Some(1008), "rate limit exceeded");

    // A client that is sent more than its queue holds, all at once: this runtime has one thread, so its writer cannot
    // take any of it before the queue is full.
    let mut slow = RawClient::link_and_settle(port, "slow").await;
    let refused = (0..10)
        .map(|n| server.send("slow", &marker(&n.to_string())))
        .find_map(Result::err);
    assert_eq!(refused, Some(emitter_core::Error::QueueFull));
    let code = slow.expect_close_frame().await.map(|(code, _)| code);
    assert_eq!(code, Some(1013), "slow consumer");
    scrape_until(
        port,
        &[
            ("krmx_connection_closes_total{cause=\"rate_limit\"}", 1.0),
            ("krmx_connection_closes_total{cause=\"slow_consumer\"}", 1.0),
            ("krmx_connection_closes_total{cause=\"oversize\"}", 0.0),
            ("krmx_connection_closes_total{cause=\"server_closing\"}", 0.0),
        ],
    )
    .await;
    server.close().await.unwrap();
}

#[tokio::test]
async fn two_servers_in_one_process_keep_their_own_numbers() {
    let busy = Server::new();
    let idle = Server::new();
    let busy_port = serve_with_ops(&busy).await;
    let idle_port = serve_with_ops(&idle).await;
    let _ann = RawClient::link_and_settle(busy_port, "ann").await;
    scrape_until(busy_port, &[("krmx_link_attempts_total{outcome=\"accepted\"}", 1.0)]).await;
    let idle_text = scrape(idle_port).await;
    assert_eq!(
        sample(&idle_text, "krmx_link_attempts_total{outcome=\"accepted\"}"),
        Some(0.0)
    );
    assert_eq!(sample(&idle_text, "krmx_messages_received_total"), Some(0.0));
    assert_eq!(sample(&idle_text, "krmx_users"), Some(0.0));
    busy.close().await.unwrap();
    idle.close().await.unwrap();
}

#[tokio::test]
async fn health_answers_200_only_while_the_server_listens() {
    // An app that serves the routes itself and outlives the Krmx server (as behind a load balancer that drains it):
    // /health must say when the server is not, or no longer, listening.
    let server = Server::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = emitter_axum::router(&server)
        .merge(emitter_axum::health_route(&server))
        .merge(emitter_axum::metrics_route(&server));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });

    let before = http_get(port, "/health").await;
    assert_eq!(before.status_body(), (503, "the server is initializing\n"));
    emitter_axum::mark_listening(&server, port).unwrap();
    assert_eq!(http_get(port, "/health").await.status_body(), (200, "ok\n"));

    let mut ann = RawClient::link_and_settle(port, "ann").await;
    let closing = server.close();
    // Closing started: ann is told and closed; the health check says so from now on.
    ann.expect_closed().await;
    let during = http_get(port, "/health").await;
    assert_eq!(during.status, 503, "{}", during.body);
    assert!(
        during.body.starts_with("the server is clos"),
        "closing or closed: {}",
        during.body
    );
    within("the server to close", closing).await.unwrap();
    assert_eq!(
        http_get(port, "/health").await.status_body(),
        (503, "the server is closed\n")
    );
    let _ = stop.send(());
    within("the HTTP server to stop", http).await.unwrap().unwrap();
}

#[tokio::test]
async fn connections_refused_before_the_upgrade_are_counted_by_reason() {
    let server = Server::builder().max_connections(1).build();
    let port = serve_with_ops(&server).await;
    let _first = RawClient::link_and_settle(port, "ann").await;
    let refused = RawClient::connect_to(port, "/").await;
    assert!(
        refused.is_err(),
        "a second connection past max_connections(1) is refused"
    );
    let text = scrape_until(
        port,
        &[("krmx_connections_refused_total{reason=\"too_many_connections\"}", 1.0)],
    )
    .await;
    assert_eq!(
        sample(&text, "krmx_connections_refused_total{reason=\"not_listening\"}"),
        Some(0.0)
    );
    server.close().await.unwrap();
}
