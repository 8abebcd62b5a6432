//! The reference server's test suite (`server/test/server.test.ts` of `@krmx/server` 0.6), ported test by test.
//!
//! Every reference `it(...)` is one test here, named after it, over real WebSocket connections on loopback. Where the
//! reference sleeps and then looks, these tests wait for an event, and prove that something did *not* happen by
//! making a later, known thing happen (a marker message, a reply to a follow-up message) and checking the order.
//! Tests about Node's `http.Server` are ported to their closest axum meaning; each says how in its comment.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use emitter_core::{AuthContext, AuthInfo, Message, QueryParam, Server, Status};
use emitter_testing::*;
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

// ---- helpers --------------------------------------------------------------------------------------------------------

/// What the reference's `withServer` does last: close the server, which must finish.
async fn shutdown(server: &Server) {
    tokio::time::timeout(TIMEOUT, server.close())
        .await
        .expect("the server did not close in time")
        .expect("close failed");
    assert_eq!(server.status(), Status::Closed);
}

fn custom(kind: &str) -> Value {
    json!({ "type": kind })
}

fn link_with_version(username: &str, version: &str) -> Value {
    json!({"type": "krmx/link", "payload": {"username": username, "version": version}})
}

/// Proves that `client`'s connection is still open and not linked, and that nothing else was queued for it: an
/// application message from an unlinked connection is answered with `unlinked connection`, and that answer must be
/// the next message.
async fn expect_open_and_unlinked(client: &mut RawClient) {
    client.send(custom("custom/are-you-there")).await;
    client.expect(rejected("unlinked connection")).await;
}

/// Proves that nothing else was queued for the linked `username`: the server sends it a marker, which must be the next
/// message its client reads.
async fn expect_nothing_more(server: &Server, client: &mut RawClient, username: &str) {
    server.send(username, &marker(username)).unwrap();
    client.expect(marker_json(username)).await;
}

/// An app of our own, with a `/health` route beside the Krmx endpoint: the stand-in for the reference's own
/// `http.Server`.
fn own_app(server: &Server) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(emitter_axum::router(server))
}

/// Runs `app` with `axum::serve` ourselves (the Krmx server is not told), stopping when the Krmx server closes.
async fn serve_ourselves(server: &Server, app: Router) -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = server.closing();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .unwrap();
    });
    (port, task)
}

// ---- the suite --------------------------------------------------------------------------------------------------------

/// Reference: "should cycle through all server statuses when starting and closing".
///
/// Adapted: `listen_on` goes from `initializing` to `listening` in one poll (the caller has bound the socket
/// already), so `starting` cannot be seen from outside it. The transport's own steps are done by hand here instead:
/// `Host::start` (status `starting`), bind and serve, `Host::listening`.
#[tokio::test]
async fn should_cycle_through_all_server_statuses_when_starting_and_closing() {
    let server = Server::new();
    let events = Recorder::attach(&server);
    assert_eq!(server.status(), Status::Initializing);

    let host = server.host();
    host.start().unwrap();
    assert_eq!(server.status(), Status::Starting);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let guard = host.transport_guard();
    let shutdown = host.closing();
    let app = emitter_axum::router(&server);
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .unwrap();
        drop(guard);
    });
    assert_eq!(server.status(), Status::Starting);
    host.listening(port).unwrap();
    assert_eq!(server.status(), Status::Listening);
    assert_eq!(events.lines(), ["listen"]);

    let closing = server.close();
    assert_eq!(server.status(), Status::Closing);
    assert!(!events.contains("close"));
    tokio::time::timeout(TIMEOUT, closing).await.unwrap().unwrap();
    assert_eq!(server.status(), Status::Closed);
    assert_eq!(events.lines(), ["listen", "close"]);
}

/// Reference: "should not be allowed to start listening on a server that is already listening".
#[tokio::test]
async fn should_not_be_allowed_to_start_listening_on_a_server_that_is_already_listening() {
    let (server, _events, _port) = start_default().await;
    let another = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = emitter_axum::listen_on(&server, another).await.unwrap_err();
    assert!(matches!(error, emitter_axum::ListenError::Server(_)));
    assert_eq!(error.to_string(), "cannot start listening when the server is listening");
    assert_eq!(server.status(), Status::Listening);
    shutdown(&server).await;
}

/// Reference: "should send messages to a custom logger if provided".
///
/// Adapted: there is no logger option; the server logs through `tracing`, so the custom logger is a `tracing`
/// subscriber set for this test's thread (the current-thread runtime runs the server there too). As in the reference,
/// listening and closing must log at least one `info` message.
#[tokio::test]
async fn should_send_messages_to_a_custom_logger_if_provided() {
    // The stand-in for the reference's custom logger.
    let (logs, _capturing) = CapturedLogs::capture();
    let server = Server::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    emitter_axum::listen_on(&server, listener).await.unwrap();
    shutdown(&server).await;
    let captured = logs.all();
    assert!(
        captured
            .iter()
            .any(|(level, message)| *level == tracing::Level::INFO && !message.is_empty()),
        "no info message was logged: {captured:?}"
    );
}

/// Reference: "should not be allowed to close a server that is not running". emitter keeps that for a server that
/// never started; closing a closed server is `Ok` here (close is idempotent: it waits for the same close), where the
/// reference throws `cannot close when the server is closed`.
#[tokio::test]
async fn should_not_be_allowed_to_close_a_server_that_is_not_running() {
    let server = Server::new();
    assert_eq!(
        server.close().await.unwrap_err().to_string(),
        "cannot close when the server is initializing"
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    emitter_axum::listen_on(&server, listener).await.unwrap();
    shutdown(&server).await;
    server.close().await.unwrap();
}

/// Reference: "should emit a listen event with the port once the server successfully started listening".
#[tokio::test]
async fn should_emit_a_listen_event_with_the_port_once_the_server_successfully_started_listening() {
    let server = Server::new();
    let ports = Arc::new(Mutex::new(Vec::new()));
    let p = ports.clone();
    server.on_listen(move |_, port| p.lock().push(port));
    let listened = server.wait_for_listen();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bound = listener.local_addr().unwrap().port();
    let port = emitter_axum::listen_on(&server, listener).await.unwrap();
    assert_eq!(port, bound);
    assert_eq!(tokio::time::timeout(TIMEOUT, listened).await.unwrap().unwrap(), port);
    assert_eq!(*ports.lock(), [port]);
    shutdown(&server).await;
}

/// Reference: "should accept a user with a valid link message".
#[tokio::test]
async fn should_accept_a_user_with_a_valid_link_message() {
    let (server, events, port) = start_default().await;
    // `link_as` asserts that the reply to the link request is `krmx/accepted`.
    let mut simon = RawClient::link_as(port, "simon").await;
    events.wait_for("link simon").await;
    assert_eq!(
        events.lines(),
        [
            "listen",
            "authenticate simon new=true auth=None",
            "join simon",
            "link simon"
        ]
    );
    simon.expect_all(&[joined("simon"), linked("simon")]).await;
    shutdown(&server).await;
}

/// Reference: "should not accept a user with minor or major version mismatch in the link message".
#[tokio::test]
async fn should_not_accept_a_user_with_minor_or_major_version_mismatch_in_the_link_message() {
    let (server, events, port) = start_default().await;
    let mut client = RawClient::connect(port).await;
    let fake_version = format!("1{VERSION}");
    client.send(link_with_version("simon", &fake_version)).await;
    client
        .expect(rejected(&format!(
            "krmx server version mismatch (server=0.5.* || 0.6.*,client={fake_version})"
        )))
        .await;
    assert!(!events.contains("join simon"));
    shutdown(&server).await;
}

/// Reference: "should accept a user with a patch mismatch in the link message".
#[tokio::test]
async fn should_accept_a_user_with_a_patch_mismatch_in_the_link_message() {
    let (server, events, port) = start_default().await;
    let mut client = RawClient::connect(port).await;
    client.send(link_with_version("simon", &format!("{VERSION}1"))).await;
    client.expect(accepted()).await;
    events.wait_for("link simon").await;
    shutdown(&server).await;
}

/// Reference: "should reject authentication when an invalid link message is received" (all 8 scenarios).
#[tokio::test]
async fn should_reject_authentication_when_an_invalid_link_message_is_received() {
    let (server, events, port) = start_default().await;
    let scenarios = [
        json!({ "type": "krmx/link", "payload": { "version": "abc", "username": 11 } }),
        json!({ "type": "krmx/link", "payload": { "version": "def", "missing": "incorrect" } }),
        json!({ "type": "krmx/link", "payload": { "version": 11, "username": "simon" } }),
        json!({ "type": "krmx/link", "payload": { "missing": "incorrect", "username": "simon" } }),
        json!({ "type": "krmx/link", "payload": { "version": 11, "username": 11 } }),
        json!({ "type": "krmx/link", "payload": { "version": "abc", "username": "simon", "auth": 11 } }),
        json!({ "type": "krmx/link", "payload": 3 }),
        json!({ "type": "krmx/link" }),
    ];
    for (index, scenario) in scenarios.into_iter().enumerate() {
        let mut client = RawClient::connect(port).await;
        client.send(scenario.clone()).await;
        assert_eq!(
            client.recv().await,
            rejected("invalid link request"),
            "scenario {index}: {scenario}"
        );
        // Not closed: the same connection can still link.
        let username = format!("user{index}");
        client
            .link(&username, None)
            .await
            .unwrap_or_else(|reason| panic!("scenario {index}: {reason}"));
    }
    assert!(!events.contains("authenticate simon new=true auth=None"));
    shutdown(&server).await;
}

/// Reference: "should unlink a connection when it sends a link message while already linked to a user".
#[tokio::test]
async fn should_unlink_a_connection_when_it_sends_a_link_message_while_already_linked_to_a_user() {
    let (server, events, port) = start_default().await;
    let mut simon = RawClient::link_and_settle(port, "simon").await;
    simon.send(link_request("simon")).await;
    simon.expect(unlinked("simon")).await;
    events.wait_for("unlink simon").await;
    assert_eq!(server.users(), [user("simon", false)]);
    // Not closed: the same connection can link again.
    simon.link("simon", None).await.unwrap();
    simon.expect_all(&[joined("simon"), linked("simon")]).await;
    shutdown(&server).await;
}

/// Reference: "should not emit events when a connection connects and closes before linking".
#[tokio::test]
async fn should_not_emit_events_when_a_connection_connects_and_closes_before_linking() {
    let (server, events, port) = start_default().await;
    let mut client = RawClient::connect(port).await;
    client.send(custom("something")).await;
    client.close().await;
    // `close` finishes only once every connection is gone, so the one above has been fully handled by then.
    shutdown(&server).await;
    assert_eq!(events.lines(), ["listen", "close"]);
}

/// Reference: "should reject when any custom message is sent before linking".
#[tokio::test]
async fn should_reject_when_any_custom_message_is_sent_before_linking() {
    let (server, events, port) = start_default().await;
    let mut client = RawClient::connect(port).await;
    client.send(custom("custom/something")).await;
    client.expect(rejected("unlinked connection")).await;
    // Not closed: the same connection can still link. Its messages are handled in order, so by the link event the
    // custom message has been handled, and it must not have been emitted.
    client.link("simon", None).await.unwrap();
    events.wait_for("link simon").await;
    assert_eq!(events.filtered(&["message"]), Vec::<String>::new());
    shutdown(&server).await;
}

/// Reference: "should reject a user linking with a username that is already linked to a connection".
#[tokio::test]
async fn should_reject_a_user_linking_with_a_username_that_is_already_linked_to_a_connection() {
    let (server, _events, port) = start_default().await;
    let _simon = RawClient::link_as(port, "simon").await;
    let _lisa = RawClient::link_as(port, "lisa").await;
    assert_eq!(
        RawClient::link_with(port, "simon", None).await.err(),
        Some("user simon is already linked to a connection".to_owned())
    );
    shutdown(&server).await;
}

const INVALID_JSON_MESSAGES: [&str; 9] = [
    "",
    "true",
    "\"hello\"",
    "42",
    "null",
    "this-is-not-a-json-message",
    "{}",
    "{\"type\":3}",
    "{\"type\":{\"key\":\"value\"}}",
];

/// Reference: "should send a rejected message if a connection sends a message with unknown format" (all 9 scenarios).
#[tokio::test]
async fn should_send_a_rejected_message_if_a_connection_sends_a_message_with_unknown_format() {
    let (server, _events, port) = start_default().await;
    for (index, raw) in INVALID_JSON_MESSAGES.into_iter().enumerate() {
        let mut client = RawClient::connect(port).await;
        client.send_raw(raw).await;
        assert_eq!(
            client.recv().await,
            rejected("invalid message"),
            "scenario {index}: {raw:?}"
        );
        // Not closed: the same connection can still link.
        client
            .link(&format!("user{index}"), None)
            .await
            .unwrap_or_else(|reason| panic!("scenario {index}: {reason}"));
    }
    shutdown(&server).await;
}

/// Reference: "should unlink a connection from its user if a message with unknown format is send" (all 9 scenarios).
#[tokio::test]
async fn should_unlink_a_connection_from_its_user_if_a_message_with_unknown_format_is_send() {
    let (server, events, port) = start_default().await;
    for (index, raw) in INVALID_JSON_MESSAGES.into_iter().enumerate() {
        let username = format!("simon{index}");
        let mut client = RawClient::link_and_settle(port, &username).await;
        client.send_raw(raw).await;
        assert_eq!(client.recv().await, unlinked(&username), "scenario {index}: {raw:?}");
        events.wait_for(&format!("unlink {username}")).await;
        // Not closed, and unlinked rather than rejected or left.
        expect_open_and_unlinked(&mut client).await;
    }
    assert_eq!(events.filtered(&["leave"]), Vec::<String>::new());
    shutdown(&server).await;
}

/// Reference: "should unlink a user if it sends a message starting with krmx/ that is not a link, unlink, or leave
/// message" (all 8 scenarios).
#[tokio::test]
async fn should_unlink_a_user_if_it_sends_a_message_starting_with_krmx_that_is_not_a_link_unlink_or_leave_message() {
    let (server, events, port) = start_default().await;
    let scenarios = [
        "krmx/accepted",
        "krmx/rejected",
        "krmx/joined",
        "krmx/linked",
        "krmx/unlinked",
        "krmx/left",
        "krmx/custom",
        "krmx/",
    ];
    for (index, kind) in scenarios.into_iter().enumerate() {
        let username = format!("simon{index}");
        let mut client = RawClient::link_and_settle(port, &username).await;
        client.send(custom(kind)).await;
        events.wait_for(&format!("unlink {username}")).await;
        assert_eq!(client.recv().await, unlinked(&username), "scenario {kind}");
        expect_open_and_unlinked(&mut client).await;
    }
    assert_eq!(events.filtered(&["message", "leave"]), Vec::<String>::new());
    shutdown(&server).await;
}

/// Reference: "should allow a user to link using a new connection after the connection was lost".
#[tokio::test]
async fn should_allow_a_user_to_link_using_a_new_connection_after_the_connection_was_lost() {
    let (server, events, port) = start_default().await;
    let simon = RawClient::link_and_settle(port, "simon").await;
    simon.close().await;
    events.wait_for("unlink simon").await;
    let mut simon = RawClient::link_as(port, "simon").await;
    simon.expect_all(&[joined("simon"), linked("simon")]).await;
    assert_eq!(server.users(), [user("simon", true)]);
    assert_eq!(events.count("join simon"), 1);
    assert_eq!(events.count("link simon"), 2);
    shutdown(&server).await;
}

/// Reference: "should emit the message and username if a custom message is received from a linked connection".
#[tokio::test]
async fn should_emit_the_message_and_username_if_a_custom_message_is_received_from_a_linked_connection() {
    let (server, _events, port) = start_default().await;
    let mut simon = RawClient::link_as(port, "simon").await;
    let received = server.wait_for_message();
    simon
        .send(json!({ "type": "custom", "payload": { "key": "value" } }))
        .await;
    let (from, message) = tokio::time::timeout(TIMEOUT, received).await.unwrap().unwrap();
    assert_eq!(from, "simon");
    assert_eq!(
        message,
        Message::with_payload("custom", serde_json::json!(json!({ "key": "value" })))
    );
    shutdown(&server).await;
}

/// Reference: "should inform all users when a user joins".
#[tokio::test]
async fn should_inform_all_users_when_a_user_joins() {
    let (server, _events, port) = start_default().await;
    let mut simon = RawClient::link_and_settle(port, "simon").await;
    let _lisa = RawClient::link_as(port, "lisa").await;
    simon.expect_all(&[joined("lisa"), linked("lisa")]).await;
    // `linked lisa` was the last message simon got.
    expect_nothing_more(&server, &mut simon, "simon").await;
    shutdown(&server).await;
}

/// Reference: "should send information about all users to a new user".
#[tokio::test]
async fn should_send_information_about_all_users_to_a_new_user() {
    let (server, events, port) = start_default().await;
    let _simon = RawClient::link_and_settle(port, "simon").await;
    let lisa = RawClient::link_and_settle(port, "lisa").await;
    lisa.close().await;
    events.wait_for("unlink lisa").await;
    // `link_as` checks that the first message is `krmx/accepted`; five more follow, and nothing else.
    let mut marjolein = RawClient::link_as(port, "marjolein").await;
    marjolein
        .expect_all(&[
            joined("simon"),
            linked("simon"),
            joined("lisa"),
            joined("marjolein"),
            linked("marjolein"),
        ])
        .await;
    expect_nothing_more(&server, &mut marjolein, "marjolein").await;
    assert_eq!(
        server.users(),
        [user("simon", true), user("lisa", false), user("marjolein", true)]
    );
    shutdown(&server).await;
}

/// Reference: "should let a user leave the server and should inform other users about the leave".
#[tokio::test]
async fn should_let_a_user_leave_the_server_and_should_inform_other_users_about_the_leave() {
    let (server, events, port) = start_default().await;
    let mut simon = RawClient::link_and_settle(port, "simon").await;
    let mut lisa = RawClient::link_and_settle(port, "lisa").await;
    lisa.send(json!({ "type": "krmx/leave" })).await;
    simon
        .expect_all(&[joined("lisa"), linked("lisa"), unlinked("lisa"), left("lisa")])
        .await;
    expect_nothing_more(&server, &mut simon, "simon").await;
    events.wait_for("leave lisa").await;
    // Lisa's last message is her own leave, and her connection stays open (and unlinked).
    lisa.expect_all(&[unlinked("lisa"), left("lisa")]).await;
    expect_open_and_unlinked(&mut lisa).await;
    assert_eq!(server.users(), [user("simon", true)]);
    shutdown(&server).await;
}

/// Reference: "should inform all users when a user is unlinked from a connection".
#[tokio::test]
async fn should_inform_all_users_when_a_user_is_unlinked_from_a_connection() {
    let (server, events, port) = start_default().await;
    let (mut simon, mut lisa) = RawClient::link_pair(port, "simon", "lisa").await;
    server.unlink("lisa").unwrap();
    assert!(events.contains("unlink lisa"));
    simon.expect(unlinked("lisa")).await;
    lisa.expect(unlinked("lisa")).await;
    assert_eq!(server.users(), [user("simon", true), user("lisa", false)]);
    shutdown(&server).await;
}

/// Reference: "should inform all users when a user is linked to a connection".
#[tokio::test]
async fn should_inform_all_users_when_a_user_is_linked_to_a_connection() {
    let (server, events, port) = start_default().await;
    let mut simon = RawClient::link_and_settle(port, "simon").await;
    let lisa = RawClient::link_and_settle(port, "lisa").await;
    lisa.close().await;
    simon
        .expect_all(&[joined("lisa"), linked("lisa"), unlinked("lisa")])
        .await;
    events.wait_for("unlink lisa").await;
    let relinked = server.wait_for_link_when(|username| username == "lisa");
    let _lisa = RawClient::link_as(port, "lisa").await;
    tokio::time::timeout(TIMEOUT, relinked).await.unwrap().unwrap();
    // Simon hears that lisa linked, and not that she joined.
    simon.expect(linked("lisa")).await;
    expect_nothing_more(&server, &mut simon, "simon").await;
    assert_eq!(events.count("join lisa"), 1);
    shutdown(&server).await;
}

/// Reference: "should throw when server methods are called while the server is initializing".
#[tokio::test]
async fn should_throw_when_server_methods_are_called_while_the_server_is_initializing() {
    let server = Server::new();
    let hello = Message::new("custom/hello");
    assert_eq!(
        server.send("simon", &hello).unwrap_err().to_string(),
        "cannot send a message when the server is initializing"
    );
    assert_eq!(
        server.broadcast(&hello, None).unwrap_err().to_string(),
        "cannot broadcast a message when the server is initializing"
    );
    assert_eq!(
        server.kick("simon").unwrap_err().to_string(),
        "cannot kick a user when the server is initializing"
    );
    assert_eq!(
        server.unlink("simon").unwrap_err().to_string(),
        "cannot unlink a connection from a user when the server is initializing"
    );
    assert_eq!(
        server.join("simon").unwrap_err().to_string(),
        "cannot join a user when the server is initializing"
    );
}

/// Reference: "should not allow sending a message to a user that does not exist".
#[tokio::test]
async fn should_not_allow_sending_a_message_to_a_user_that_does_not_exist() {
    let (server, _events, _port) = start_default().await;
    assert_eq!(
        server
            .send("simon", &Message::new("custom/hello"))
            .unwrap_err()
            .to_string(),
        "cannot send a message to a user that does not exist"
    );
    shutdown(&server).await;
}

/// Reference: "should not allow sending a message to a user that is not linked".
#[tokio::test]
async fn should_not_allow_sending_a_message_to_a_user_that_is_not_linked() {
    let (server, events, port) = start_default().await;
    let simon = RawClient::link_as(port, "simon").await;
    simon.close().await;
    events.wait_for("unlink simon").await;
    assert_eq!(
        server
            .send("simon", &Message::new("custom/hello"))
            .unwrap_err()
            .to_string(),
        "cannot send a message to a user that is not linked to a connection"
    );
    shutdown(&server).await;
}

/// Reference: "should allow sending a message to a user".
#[tokio::test]
async fn should_allow_sending_a_message_to_a_user() {
    let (server, _events, port) = start_default().await;
    let mut simon = RawClient::link_and_settle(port, "simon").await;
    server.send("simon", &Message::new("custom/hello")).unwrap();
    simon.expect(custom("custom/hello")).await;
    shutdown(&server).await;
}

/// Reference: "should allow broadcasting a message to all linked users".
#[tokio::test]
async fn should_allow_broadcasting_a_message_to_all_linked_users() {
    let (server, events, port) = start_default().await;
    let mut simon = RawClient::link_and_settle(port, "simon").await;
    let lisa = RawClient::link_and_settle(port, "lisa").await;
    let mut marjolein = RawClient::link_and_settle(port, "marjolein").await;
    lisa.close().await;
    events.wait_for("unlink lisa").await;
    server.broadcast(&Message::new("custom/hello"), None).unwrap();
    simon
        .expect_all(&[
            joined("lisa"),
            linked("lisa"),
            joined("marjolein"),
            linked("marjolein"),
            unlinked("lisa"),
            custom("custom/hello"),
        ])
        .await;
    marjolein.expect_all(&[unlinked("lisa"), custom("custom/hello")]).await;
    shutdown(&server).await;
}

/// The two `forEach(['send', 'broadcast'])` tests: greet a new user from `join` (too early: not linked yet) and from
/// `link`; only the greeting from `link` reaches it.
async fn welcome_in_link_but_not_in_join(broadcast: bool) {
    let (server, _events, port) = start_default().await;
    let join_results = Arc::new(Mutex::new(Vec::new()));
    let results = join_results.clone();
    server.on_join(move |u| {
        let welcome = Message::new("custom/welcome-on-join");
        let result = if broadcast {
            u.server().broadcast(&welcome, None).map(drop)
        } else {
            u.send(&welcome)
        };
        results.lock().push(result.map_err(|error| error.to_string()));
    });
    server.on_link(move |u| {
        let welcome = Message::new("custom/welcome-on-link");
        if broadcast {
            u.server().broadcast(&welcome, None).unwrap();
        } else {
            u.send(&welcome).unwrap();
        }
    });
    let mut simon = RawClient::link_as(port, "simon").await;
    simon
        .expect_all(&[joined("simon"), linked("simon"), custom("custom/welcome-on-link")])
        .await;
    expect_nothing_more(&server, &mut simon, "simon").await;
    let expected = if broadcast {
        Ok(())
    } else {
        Err("cannot send a message to a user that is not linked to a connection".to_owned())
    };
    assert_eq!(*join_results.lock(), [expected]);
    shutdown(&server).await;
}

/// Reference: "should allow sending a message to a newly joined user in the link event, but not in the join event".
#[tokio::test]
async fn should_allow_sending_a_message_to_a_newly_joined_user_in_the_link_event_but_not_in_the_join_event() {
    welcome_in_link_but_not_in_join(false).await;
}

/// Reference: "should allow broadcasting a message to a newly joined user in the link event, but not in the join
/// event".
#[tokio::test]
async fn should_allow_broadcasting_a_message_to_a_newly_joined_user_in_the_link_event_but_not_in_the_join_event() {
    welcome_in_link_but_not_in_join(true).await;
}

/// Reference: "should skip broadcasting to a the user with the username equal to skipUsername".
#[tokio::test]
async fn should_skip_broadcasting_to_a_the_user_with_the_username_equal_to_skip_username() {
    let (server, _events, port) = start_default().await;
    let mut simon = RawClient::link_and_settle(port, "simon").await;
    let mut lisa = RawClient::link_and_settle(port, "lisa").await;
    server.broadcast(&Message::new("custom/hello"), Some("simon")).unwrap();
    lisa.expect(custom("custom/hello")).await;
    simon.expect_all(&[joined("lisa"), linked("lisa")]).await;
    expect_nothing_more(&server, &mut simon, "simon").await;
    shutdown(&server).await;
}

/// Reference: "should allow a connection to link after it was rejected before".
#[tokio::test]
async fn should_allow_a_connection_to_link_after_it_was_rejected_before() {
    let (server, _events, port) = start_default().await;
    let _simon = RawClient::link_as(port, "simon").await;
    let mut client = RawClient::connect(port).await;
    assert_eq!(
        client.link("simon", None).await,
        Err("user simon is already linked to a connection".to_owned())
    );
    assert_eq!(client.link("lisa", None).await, Ok(()));
    shutdown(&server).await;
}

/// Reference: "should reject linking a connection to a user, if the reject callback in the authenticate event is called
/// with a reason".
#[tokio::test]
async fn should_reject_linking_a_connection_to_a_user_if_the_reject_callback_in_the_authenticate_event_is_called_with_a_reason(
) {
    let (server, events, port) = start_default().await;
    server.on_authenticate(|user, info: &AuthInfo, ctx: &AuthContext| {
        // `info.auth` is passed on.
        if info.auth.as_deref() == Some("i-am-a-robot") {
            ctx.reject("robots-are-not-allowed");
            return;
        }
        // `info.is_new_user` is passed on.
        if !info.is_new_user {
            ctx.reject("relinking is not allowed here");
        } else if !user.server().users().is_empty() {
            ctx.reject("server is full");
            ctx.reject("this should not show up");
        }
    });
    let simon = RawClient::link_as(port, "simon").await;
    simon.close().await;
    events.wait_for("unlink simon").await;
    assert_eq!(
        RawClient::link_with(port, "simon", None).await.err(),
        Some("relinking is not allowed here".to_owned())
    );
    assert_eq!(
        RawClient::link_with(port, "lisa", None).await.err(),
        Some("server is full".to_owned())
    );
    assert_eq!(
        RawClient::link_with(port, "simon", Some("i-am-a-robot")).await.err(),
        Some("robots-are-not-allowed".to_owned())
    );
    assert_eq!(
        events.filtered(&["authenticate"]),
        [
            "authenticate simon new=true auth=None",
            "authenticate simon new=false auth=None",
            "authenticate lisa new=true auth=None",
            "authenticate simon new=false auth=Some(\"i-am-a-robot\")",
        ]
    );
    assert_eq!(events.filtered(&["join"]), ["join simon"]);
    shutdown(&server).await;
}

/// Reference: "should be able to kick a linked user from the server".
#[tokio::test]
async fn should_be_able_to_kick_a_linked_user_from_the_server() {
    let (server, events, port) = start_default().await;
    let mut simon = RawClient::link_as(port, "simon").await;
    let mut lisa = RawClient::link_as(port, "lisa").await;
    server.kick("simon").unwrap();
    // Messages 2 to 7 of each (the first, `krmx/accepted`, was read by `link_as`).
    let snapshot_then_kick = [
        joined("simon"),
        linked("simon"),
        joined("lisa"),
        linked("lisa"),
        unlinked("simon"),
        left("simon"),
    ];
    simon.expect_all(&snapshot_then_kick).await;
    lisa.expect_all(&snapshot_then_kick).await;
    // Simon's connection stays open; lisa got nothing more.
    expect_open_and_unlinked(&mut simon).await;
    expect_nothing_more(&server, &mut lisa, "lisa").await;
    assert_eq!(events.filtered(&["leave"]), ["leave simon"]);
    assert_eq!(server.users(), [user("lisa", true)]);
    shutdown(&server).await;
}

/// Reference: "should be able to kick an unlinked user from the server".
#[tokio::test]
async fn should_be_able_to_kick_an_unlinked_user_from_the_server() {
    let (server, events, port) = start_default().await;
    let simon = RawClient::link_as(port, "simon").await;
    simon.close().await;
    events.wait_for("unlink simon").await;
    let before = events.lines().len();
    server.kick("simon").unwrap();
    assert_eq!(events.lines()[before..], ["leave simon"]);
    assert_eq!(server.users(), []);
    shutdown(&server).await;
}

/// Reference: "should not allow kicking a user, if that user does not exist".
#[tokio::test]
async fn should_not_allow_kicking_a_user_if_that_user_does_not_exist() {
    let (server, _events, _port) = start_default().await;
    assert_eq!(
        server.kick("simon").unwrap_err().to_string(),
        "cannot kick a user that does not exist"
    );
    shutdown(&server).await;
}

/// Reference: "should not allow server side join on a user that already exists".
#[tokio::test]
async fn should_not_allow_server_side_join_on_a_user_that_already_exists() {
    let (server, _events, _port) = start_default().await;
    server.join("simon").unwrap();
    assert_eq!(
        server.join("simon").unwrap_err().to_string(),
        "cannot join a user that already exist"
    );
    shutdown(&server).await;
}

/// Reference: "should not allow server side unlink on a user that does not exist".
#[tokio::test]
async fn should_not_allow_server_side_unlink_on_a_user_that_does_not_exist() {
    let (server, _events, _port) = start_default().await;
    assert_eq!(
        server.unlink("simon").unwrap_err().to_string(),
        "cannot unlink a connection from a user that does not exist"
    );
    shutdown(&server).await;
}

/// Reference: "should not allow server side unlink on a user that is not linked".
#[tokio::test]
async fn should_not_allow_server_side_unlink_on_a_user_that_is_not_linked() {
    let (server, events, port) = start_default().await;
    let simon = RawClient::link_as(port, "simon").await;
    simon.close().await;
    events.wait_for("unlink simon").await;
    assert_eq!(
        server.unlink("simon").unwrap_err().to_string(),
        "cannot unlink a connection from a user that is not linked"
    );
    shutdown(&server).await;
}

/// Reference: "should only accept known users during authentication when server has acceptNewUser set to false".
#[tokio::test]
async fn should_only_accept_known_users_during_authentication_when_server_has_accept_new_user_set_to_false() {
    let (server, _events, port) = start(Server::builder().accept_new_users(false)).await;
    server.join("simon").unwrap();
    let _simon = RawClient::link_as(port, "simon").await;
    assert_eq!(
        RawClient::link_with(port, "lisa", None).await.err(),
        Some("server is not accepting new users".to_owned())
    );
    shutdown(&server).await;
}

/// Reference: "should not join user with an invalid username when a custom invalid username method is provided".
#[tokio::test]
async fn should_not_join_user_with_an_invalid_username_when_a_custom_invalid_username_method_is_provided() {
    let (server, _events, port) =
        start(Server::builder().is_valid_username(|username: &str| !username.starts_with("bot"))).await;
    let _simon = RawClient::link_as(port, "simon").await;
    server.join("lisa").unwrap();
    assert_eq!(
        RawClient::link_with(port, "bot 1", None).await.err(),
        Some("invalid username".to_owned())
    );
    assert_eq!(
        server.join("bot 2").unwrap_err().to_string(),
        "cannot join a user with an invalid username"
    );
    shutdown(&server).await;
}

/// Reference: "should use existing http server when provided".
///
/// Adapted: "an existing http server" is an axum `Router` of our own (with a `/health` route) into which the Krmx
/// endpoint is merged, served with `emitter_axum::serve` on a listener we bound. Both the Krmx endpoint and our own
/// route must work.
#[tokio::test]
async fn should_use_existing_http_server_when_provided() {
    let server = Server::new();
    let app = own_app(&server);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = emitter_axum::serve(&server, listener, app).await.unwrap();
    let _simon = RawClient::link_as(port, "simon").await;
    assert!(http_get(port, "/health").await.body.ends_with("ok"));
    shutdown(&server).await;
}

/// Reference: "should use existing http server, even if that http server is already listening".
///
/// Adapted: we run `axum::serve` ourselves with the Krmx endpoint merged into our app, wait until it has answered an
/// HTTP request (it is listening), and only then tell the Krmx server with `emitter_axum::mark_listening`.
#[tokio::test]
async fn should_use_existing_http_server_even_if_that_http_server_is_already_listening() {
    let server = Server::new();
    let (port, http_task) = serve_ourselves(&server, own_app(&server)).await;
    assert!(http_get(port, "/health").await.body.ends_with("ok"));
    emitter_axum::mark_listening(&server, port).unwrap();
    let _simon = RawClient::link_as(port, "simon").await;
    shutdown(&server).await;
    // Our own HTTP server stops with the Krmx server (its graceful-shutdown signal is `server.closing()`).
    tokio::time::timeout(TIMEOUT, http_task).await.unwrap().unwrap();
}

/// Reference: "should use existing http server, even if that http server just started listening".
///
/// Adapted: as above, but `mark_listening` is called right after `axum::serve` was spawned, before it served anything.
#[tokio::test]
async fn should_use_existing_http_server_even_if_that_http_server_just_started_listening() {
    let server = Server::new();
    let (port, http_task) = serve_ourselves(&server, own_app(&server)).await;
    emitter_axum::mark_listening(&server, port).unwrap();
    let _simon = RawClient::link_as(port, "simon").await;
    shutdown(&server).await;
    tokio::time::timeout(TIMEOUT, http_task).await.unwrap().unwrap();
}

/// Reference: "should use custom http path when provided".
#[tokio::test]
async fn should_use_custom_http_path_when_provided() {
    let (server, _events, port) = start(Server::builder().path("/my/application")).await;
    let mut client = RawClient::connect_to(port, "/my/application").await.unwrap();
    client.link("simon", None).await.unwrap();
    // Nothing is served on the root path.
    assert!(RawClient::connect_to(port, "/").await.is_err());
    shutdown(&server).await;
}

/// Reference: "should use custom http path when provided even without a starting slash".
#[tokio::test]
async fn should_use_custom_http_path_when_provided_even_without_a_starting_slash() {
    let (server, _events, port) = start(Server::builder().path("my/application")).await;
    let mut client = RawClient::connect_to(port, "/my/application").await.unwrap();
    client.link("simon", None).await.unwrap();
    assert!(RawClient::connect_to(port, "/").await.is_err());
    shutdown(&server).await;
}

/// Reference: "should close a connection immediately when the query parameter do not match".
#[tokio::test]
async fn should_close_a_connection_immediately_when_the_query_parameter_do_not_match() {
    let (server, events, port) = start(Server::builder().query_param("something-else", QueryParam::Present)).await;
    // The reference's `addUser` rejects with `connection closed`: the server closes before any message.
    let mut client = RawClient::connect_to(port, "/").await.unwrap();
    assert_eq!(client.try_recv().await, None);
    // With the parameter the same server accepts the connection.
    let mut client = RawClient::connect_to(port, "/?something-else=1").await.unwrap();
    client.link("simon", None).await.unwrap();
    assert_eq!(
        events.filtered(&["authenticate"]),
        ["authenticate simon new=true auth=None"]
    );
    shutdown(&server).await;
}

/// Reference: "should call listen on server even when provided http server is already listening".
///
/// Adapted: our own `axum::serve` already serves the app with the Krmx endpoint; the Krmx server stays `initializing`
/// (refusing `join` and WebSocket connections) until `emitter_axum::mark_listening` is called with the port, which then
/// emits `listen` with that port. The reference's other check, `listen(httpPort + 1)` failing with `cannot start
/// listening on port … as the underlying http server is already listening on port …`, has no equivalent: the caller
/// binds the socket and tells `mark_listening` its port, so there is no second port to disagree with.
#[tokio::test]
async fn should_call_listen_on_server_even_when_provided_http_server_is_already_listening() {
    let server = Server::new();
    let (port, http_task) = serve_ourselves(&server, own_app(&server)).await;
    assert!(http_get(port, "/health").await.body.ends_with("ok"));
    assert_eq!(
        server.join("simon").unwrap_err().to_string(),
        "cannot join a user when the server is initializing"
    );
    // Not listening yet: the upgrade is refused (the reference upgrades and then terminates the socket).
    let refused = RawClient::connect_to(port, "/").await.err().unwrap_or_default();
    assert!(refused.contains("503"), "{refused}");

    let listened = server.wait_for_listen();
    emitter_axum::mark_listening(&server, port).unwrap();
    assert_eq!(tokio::time::timeout(TIMEOUT, listened).await.unwrap().unwrap(), port);
    server.join("simon").unwrap();
    assert_eq!(server.users(), [user("simon", false)]);
    let _simon = RawClient::link_as(port, "simon").await;
    shutdown(&server).await;
    tokio::time::timeout(TIMEOUT, http_task).await.unwrap().unwrap();
}

/// Reference: "should not kick a client if it responds to the websocket ping with a pong".
///
/// Instead of sleeping 500 ms, the client counts the server's pings: a connection that has not answered the previous
/// ping is closed when the next is due, so still being open after five pings (and able to link) means the pongs
/// were seen.
#[tokio::test]
async fn should_not_kick_a_client_if_it_responds_to_the_websocket_ping_with_a_pong() {
    let (server, _events, port) = start(Server::builder().ping_interval(Duration::from_millis(100))).await;
    let mut ws = RawClient::connect(port).await.into_inner();
    let mut pings = 0;
    while pings < 5 {
        // Reading answers each ping with a pong (tungstenite does that on the next read).
        match tokio::time::timeout(TIMEOUT, ws.next()).await.unwrap() {
            Some(Ok(WsMessage::Ping(_))) => pings += 1,
            other => panic!("expected a ping, got {other:?}"),
        }
    }
    ws.send(WsMessage::text(link_request("simon").to_string()))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(TIMEOUT, ws.next()).await.unwrap() {
            Some(Ok(WsMessage::Ping(_))) => continue,
            Some(Ok(WsMessage::Text(text))) => {
                assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), accepted());
                break;
            }
            other => panic!("expected krmx/accepted, got {other:?}"),
        }
    }
    shutdown(&server).await;
}

/// Reference: "should allow authenticate to be asynchronous".
///
/// The reference's `throw` cases map to the ways a marked Rust future fails: `Err(message)` (a thrown string), a panic
/// with a message (a thrown `Error`), a panic with a non-string payload (a thrown object) and a runtime fault
/// (`Option::unwrap` on `None` for reading a property of `undefined`). Unlike the reference, a panic's text is logged,
/// never sent: the client gets `authentication failed` for every panic (an app that wants a text sent rejects with
/// it, or returns it as the future's `Err`). The timeout is 2 s rather than
/// 500 ms so that the check that a synchronous reject answers at once (well under 1 s, while async work of the same
/// request would take 5 s and the timeout 2 s) cannot pass by luck nor fail on a slow machine.
#[tokio::test]
async fn should_allow_authenticate_to_be_asynchronous() {
    let (server, _events, port) = start(Server::builder().auth_timeout(Duration::from_secs(2))).await;
    server.on_authenticate(|username, _info, ctx| {
        if username == "marjolein" {
            ctx.reject("immediately rejected");
        }
        if username == "rens" {
            panic!("immediately rejected by throw");
        }
    });
    server.on_authenticate(|username, _info, ctx| {
        let ctx2 = ctx.clone();
        let username = username.to_string();
        ctx.mark_async(async move {
            let work = match username.as_str() {
                "kevin" | "marjolein" | "rens" => Duration::from_secs(5),
                _ => Duration::from_millis(250),
            };
            tokio::time::sleep(work).await;
            match username.as_str() {
                "simon" => ctx2.reject("slowly rejected"),
                "govie" => return Err("slowly rejected by throwing".to_owned()),
                "jac" => panic!("slowly rejected by throwing an error"),
                "tim" => std::panic::panic_any(42_i32),
                "rik" => {
                    let missing: Option<&str> = std::hint::black_box(None);
                    let _length = missing.unwrap().len();
                }
                _ => {}
            }
            Ok::<(), String>(())
        });
    });
    let reject_reason = |username: &'static str| async move {
        RawClient::link_with(port, username, None)
            .await
            .err()
            .unwrap_or_else(|| panic!("{username} was accepted"))
    };
    assert_eq!(reject_reason("simon").await, "slowly rejected");
    assert_eq!(reject_reason("govie").await, "slowly rejected by throwing");
    assert_eq!(reject_reason("jac").await, "authentication failed");
    assert_eq!(reject_reason("tim").await, "authentication failed");
    assert_eq!(reject_reason("rik").await, "authentication failed");
    assert_eq!(reject_reason("kevin").await, "authentication timeout");
    let _lisa = RawClient::link_as(port, "lisa").await;

    let started = Instant::now();
    assert_eq!(reject_reason("marjolein").await, "immediately rejected");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(1),
        "a synchronous reject took {elapsed:?}"
    );
    assert_eq!(reject_reason("rens").await, "authentication failed");
    assert_eq!(server.users(), [user("lisa", true)]);
    shutdown(&server).await;
}
