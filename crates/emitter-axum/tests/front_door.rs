//! The front door over real WebSocket connections on loopback: the `Origin` policy, the upgrade request reaching the
//! `authenticate` listeners, and nothing secret in what the server logs or prints.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use emitter_core::{Event, Handshake, Server};
use emitter_testing::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::{connect_async, MaybeTlsStream};

/// Opens a WebSocket to `path` with extra `headers`: `Ok` with the socket, or `Err` with the HTTP status of the
/// refusal.
async fn connect_with(port: u16, path: &str, headers: &[(&'static str, &str)]) -> Result<WsStream, u16> {
    let mut request = ws_url(port, path).into_client_request().unwrap();
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, HeaderValue::from_str(value).unwrap());
    }
    match within("the handshake", connect_async(request)).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(error) => panic!("the handshake failed: {error}"),
    }
}

/// Opens a WebSocket with `Origin: origin`: `Ok` when it was accepted, `Err` with the status otherwise.
async fn connect_from(port: u16, origin: &str) -> Result<(), u16> {
    connect_with(port, "/", &[("origin", origin)]).await.map(|_| ())
}

fn refused_for_origin(server: &Server) -> u64 {
    let text = server.metrics_text();
    let line = text
        .lines()
        .find(|line| line.starts_with("krmx_connections_refused_total{reason=\"origin\"}"))
        .expect("the origin refusals are exposed");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn without_an_origin_or_from_the_same_origin_an_upgrade_is_accepted() {
    let (server, _recorder, port) = start_default().await;
    // Not a browser: no Origin at all.
    let mut client = RawClient::connect(port).await;
    assert_eq!(client.link("simon", None).await, Ok(()));
    // A page served by this server: the Origin names the Host the request went to.
    assert_eq!(connect_from(port, &format!("http://127.0.0.1:{port}")).await, Ok(()));
    assert_eq!(connect_from(port, &format!("http://LOCALHOST:{port}")).await, Err(403));
    assert_eq!(refused_for_origin(&server), 1);
}

#[tokio::test]
async fn a_foreign_origin_gets_403_before_the_upgrade_logged_and_counted() {
    let (logs, _capturing) = CapturedLogs::capture();
    let (server, recorder, port) = start_default().await;
    assert_eq!(connect_from(port, "https://evil.example").await, Err(403));
    // The same host on another port is another origin.
    assert_eq!(
        connect_from(port, &format!("http://127.0.0.1:{}", port.wrapping_add(1))).await,
        Err(403)
    );
    assert_eq!(connect_from(port, "null").await, Err(403));
    assert_eq!(refused_for_origin(&server), 3);
    let lines = logs.lines(tracing::Level::WARN, "incoming connection refused with 403");
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].contains("origin=\"https://evil.example\""), "{lines:?}");
    // Refused before it was opened: the core never saw a connection.
    assert!(server.metrics_text().contains("\nkrmx_connections_open 0\n"));
    let _linked = RawClient::link_as(port, "simon").await;
    recorder.wait_for("link simon").await;
}

#[tokio::test]
async fn allowed_origins_adds_exact_origins_and_subdomains() {
    let builder = Server::builder().allowed_origins(["https://app.example", "*.games.example"]);
    let (server, _recorder, port) = start(builder).await;
    assert_eq!(connect_from(port, "https://app.example").await, Ok(()));
    assert_eq!(connect_from(port, "https://eu.games.example").await, Ok(()));
    assert_eq!(connect_from(port, "http://eu.games.example").await, Ok(()));
    assert_eq!(connect_from(port, &format!("http://127.0.0.1:{port}")).await, Ok(()));
    assert_eq!(connect_from(port, "http://app.example").await, Err(403));
    assert_eq!(connect_from(port, "https://app.example:8443").await, Err(403));
    assert_eq!(connect_from(port, "https://games.example").await, Err(403));
    assert_eq!(connect_from(port, "https://evilgames.example").await, Err(403));
    assert_eq!(refused_for_origin(&server), 4);
}

#[tokio::test]
async fn allow_any_origin_switches_the_check_off() {
    let (server, _recorder, port) = start(Server::builder().allow_any_origin()).await;
    assert_eq!(connect_from(port, "https://evil.example").await, Ok(()));
    assert_eq!(connect_from(port, "null").await, Ok(()));
    assert_eq!(refused_for_origin(&server), 0);
}

#[tokio::test]
async fn the_upgrade_request_reaches_the_authenticate_listeners() {
    let (server, _recorder, port) = start_default().await;
    let seen: Arc<Mutex<Vec<Handshake>>> = Arc::default();
    let record = seen.clone();
    server.on_authenticate(move |_, info, auth| {
        record.lock().unwrap().push(info.handshake().clone());
        if info.handshake().cookie("session") != Some("s-42") {
            auth.reject("log in first");
        }
    });
    let ws = connect_with(
        port,
        "/?room=7",
        &[("cookie", "theme=dark; session=s-42"), ("x-app", "a")],
    )
    .await
    .unwrap();
    let MaybeTlsStream::Plain(tcp) = ws.get_ref() else {
        panic!("not a plain TCP stream")
    };
    let client_address: SocketAddr = tcp.local_addr().unwrap();
    let mut cookie_client = RawClient::on(ws);
    assert_eq!(cookie_client.link("simon", None).await, Ok(()));
    let mut cookieless = RawClient::connect(port).await;
    assert_eq!(cookieless.link("lisa", None).await, Err("log in first".to_owned()));

    let seen = seen.lock().unwrap();
    let handshake = &seen[0];
    assert_eq!(handshake.peer(), Some(client_address));
    assert_eq!(handshake.path(), "/");
    assert_eq!(handshake.query(), Some("room=7"));
    assert_eq!(handshake.header("X-App"), Some("a"));
    assert_eq!(handshake.header("host"), Some(format!("127.0.0.1:{port}").as_str()));
    assert_eq!(seen[1].cookie("session"), None);
    assert!(seen[1].peer().is_some());
}

#[tokio::test]
async fn nothing_secret_is_printed_or_logged() {
    let (logs, _capturing) = CapturedLogs::capture();
    let (server, _recorder, port) = start_default().await;
    let printed: Arc<Mutex<Vec<String>>> = Arc::default();
    let print = printed.clone();
    server.on_any(move |_, event| {
        if let Event::Authenticate { .. } = event {
            print.lock().unwrap().push(format!("{event:?}"));
        }
    });
    let print = printed.clone();
    server.on_authenticate(move |_, info, _| print.lock().unwrap().push(format!("{info:?} {:?}", info.handshake())));
    let ws = connect_with(
        port,
        "/?key=query-s3cret",
        &[
            ("cookie", "session=cookie-s3cret"),
            ("authorization", "Bearer header-s3cret"),
        ],
    )
    .await
    .unwrap();
    let mut client = RawClient::on(ws);
    assert_eq!(client.link("simon", Some("token-s3cret")).await, Ok(()));
    client.recv_until(&linked("simon")).await;
    client.send(json!({"type": "krmx/nonsense"})).await;
    client.expect(unlinked("simon")).await;
    server.close().await.unwrap();

    let printed = printed.lock().unwrap();
    assert_eq!(printed.len(), 2, "{printed:?}");
    assert!(printed[0].contains("<redacted>"), "{printed:?}");
    for line in printed.iter().chain(logs.all().iter().map(|(_, line)| line)) {
        assert!(!line.contains("s3cret"), "a secret was printed: {line}");
    }
}

/// Keeps the panic in the marked future from making the rest of it unreachable.
fn username_is_never_empty() -> bool {
    std::hint::black_box(true)
}

#[tokio::test]
async fn a_panicking_authenticate_listener_is_logged_and_the_client_gets_a_generic_reason() {
    let (logs, _capturing) = CapturedLogs::capture();
    let (server, _recorder, port) = start_default().await;
    server.on_authenticate(|u, _, auth| match u.username() {
        "bug" => panic!("database password is hunter2"),
        "told" => auth.reject("you may read this"),
        _ => {}
    });
    server.on_authenticate(|u, _, auth| {
        if u == "slowbug" {
            auth.mark_async(async {
                if username_is_never_empty() {
                    panic!("stack trace with hunter2");
                }
                Ok::<(), String>(())
            });
        }
    });
    let mut client = RawClient::connect(port).await;
    assert_eq!(client.link("bug", None).await, Err("authentication failed".to_owned()));
    assert_eq!(
        client.link("slowbug", None).await,
        Err("authentication failed".to_owned())
    );
    assert_eq!(client.link("told", None).await, Err("you may read this".to_owned()));
    // The connection survives and can link.
    assert_eq!(client.link("simon", None).await, Ok(()));
    let errors = logs.lines(tracing::Level::ERROR, "");
    assert!(
        errors.iter().any(|line| line.contains("database password is hunter2")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|line| line.contains("stack trace with hunter2")),
        "{errors:?}"
    );
}

#[tokio::test]
async fn a_linked_users_invalid_message_is_logged_with_user_and_cause_and_counted() {
    let (logs, _capturing) = CapturedLogs::capture();
    let (server, recorder, port) = start_default().await;
    let mut simon = RawClient::link_and_settle(port, "simon").await;
    simon.send_raw("not json").await;
    simon.expect(unlinked("simon")).await;
    recorder.wait_for("unlink simon").await;
    let lines = logs.lines(tracing::Level::WARN, "invalid message from a linked user");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("username=\"simon\"") && lines[0].contains("not JSON"),
        "{lines:?}"
    );
    assert!(server
        .metrics_text()
        .contains("\nkrmx_linked_invalid_messages_total 1\n"));
}

#[tokio::test]
async fn warnings_a_client_causes_with_every_message_are_rate_limited_per_connection() {
    let (logs, _capturing) = CapturedLogs::capture();
    let (_server, _recorder, port) = start_default().await;
    let mut flooder = RawClient::connect(port).await;
    for _ in 0..20 {
        flooder.send_raw("{}").await;
    }
    for _ in 0..20 {
        flooder.expect(rejected("invalid message")).await;
    }
    // Another connection has an allowance of its own.
    let mut other = RawClient::connect(port).await;
    other.send_raw("[]").await;
    other.expect(rejected("invalid message")).await;
    let lines = logs.lines(tracing::Level::WARN, "invalid message: rejected");
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines[0].contains("not an object with a string type"), "{lines:?}");
}

#[tokio::test]
async fn headers_over_what_a_connection_may_keep_get_431() {
    let (_server, _recorder, port) = start_default().await;
    let big = "x".repeat(emitter_core::config::MAX_HANDSHAKE_HEADER_BYTES);
    assert_eq!(connect_with(port, "/", &[("cookie", &big)]).await.err(), Some(431));
}
