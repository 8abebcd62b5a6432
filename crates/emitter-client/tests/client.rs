//! The Rust client against emitter's own server (emitter-axum, in process), over real loopback sockets: every method
//! and event of the client's API, and the reference client's test suite ported.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use emitter_client::{Client, ClientEvent, ClientStatus, Error, User};
use emitter_core::{AcceptedVersions, Message, Server};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::json;
use support::{as_simon, check_every_event, connect_and_link, start, start_default, user, within};

fn names(users: &[User]) -> Vec<(String, bool)> {
    let mut list: Vec<_> = users.iter().map(|u| (u.username.clone(), u.is_linked)).collect();
    list.sort();
    list
}

async fn linked_client(url: &str, username: &str) -> Client {
    let client = Client::new();
    connect_and_link(&client, url, username).await;
    client
}

/// A count of calls, and what a listener calls to add one to it.
fn counter() -> (Arc<AtomicUsize>, impl Fn() + Send + Sync + 'static) {
    let count = Arc::new(AtomicUsize::new(0));
    let bump = {
        let count = count.clone();
        move || {
            count.fetch_add(1, Ordering::SeqCst);
        }
    };
    (count, bump)
}

/// A default server, and a client linked to it as simon.
async fn simon_linked() -> (Server, Client) {
    let (server, url) = start_default().await;
    let client = linked_client(&url, "simon").await;
    (server, client)
}

/// The reference's first client test: connect, link, unlink and disconnect, with every precondition on the way.
#[tokio::test]
async fn connect_link_unlink_and_disconnect() {
    let server = Server::new();
    server.on_authenticate(|_, info, ctx| {
        if info.auth.as_deref() != Some("secret") {
            ctx.reject("authentication failed");
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = emitter_axum::listen_on(&server, listener).await.unwrap();
    let url = format!("ws://127.0.0.1:{port}/");

    let client = Client::new();
    assert_eq!(client.status(), ClientStatus::Initializing);
    assert_eq!(client.username(), None);
    assert!(client.users().is_empty());

    // A port nobody listens on: bind one and drop it.
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let bad = format!("ws://127.0.0.1:{closed_port}/");
    let error = within("failed connect", client.connect(&bad)).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("error while trying to connect to the server at {bad}")
    );
    assert!(std::error::Error::source(&error).is_some());
    assert_eq!(client.status(), ClientStatus::Closed);

    within("connect", client.connect(&url)).await.unwrap();
    assert_eq!(client.status(), ClientStatus::Connected);
    let error = client
        .send(&Message::with_payload(
            "custom/message",
            serde_json::json!("Hello, world!"),
        ))
        .unwrap_err();
    assert_eq!(error.to_string(), "cannot send when the client is connected");
    let error = within("link", client.link("a", Some("secret"))).await.unwrap_err();
    assert!(matches!(&error, Error::Rejected(reason) if reason == "invalid username"));
    let error = within("link", client.link("simon", Some("not-secret")))
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "authentication failed");
    assert_eq!(client.username(), None);
    assert_eq!(client.status(), ClientStatus::Connected);

    within("link", client.link("simon", Some("secret"))).await.unwrap();
    assert_eq!(client.status(), ClientStatus::Linked);
    assert_eq!(client.username().as_deref(), Some("simon"));
    assert_eq!(client.users(), [user("simon", true)]);

    // Client to server.
    let received = server.wait_for_message();
    client
        .send(&Message::with_payload(
            "custom/message",
            serde_json::json!("Hello, universe!"),
        ))
        .unwrap();
    let (from, message) = within("server message", received).await.unwrap();
    assert_eq!(from, "simon");
    assert_eq!(message.payload, Some(json!("Hello, universe!")));
    let error = client.send(&Message::new("krmx/invalid")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "cannot send custom messages with type starting with the internal 'krmx/' prefix"
    );

    // Server to client: the any-event listener runs before the message listener.
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    let _any = client.on_any(move |event| {
        if let ClientEvent::Message { message } = event {
            o.lock().push(format!("any {}", message.kind));
        }
    });
    let o = order.clone();
    let _on = client.on_message(move |message| o.lock().push(format!("on {}", message.kind)));
    let arrived = client.wait_for_message();
    server.send("simon", &Message::new("custom/server-message")).unwrap();
    assert_eq!(within("client message", arrived).await.kind, "custom/server-message");
    assert_eq!(*order.lock(), ["any custom/server-message", "on custom/server-message"]);

    let error = within("link", client.link("lisa", Some("secret"))).await.unwrap_err();
    assert_eq!(error.to_string(), "cannot link when the client is linked");
    within("unlink", client.unlink()).await.unwrap();
    assert!(client.users().is_empty());
    within("link", client.link("lisa", Some("secret"))).await.unwrap();
    // As the reference: the client's own user first, then the others in the server's order.
    assert_eq!(client.users(), [user("lisa", true), user("simon", false)]);
    within("leave", client.leave()).await.unwrap();
    assert!(client.users().is_empty());
    assert_eq!(client.status(), ClientStatus::Connected);
    within("link", client.link("simon", Some("secret"))).await.unwrap();
    assert_eq!(client.users(), [user("simon", true)]);
    let error = within("disconnect", client.disconnect(false)).await.unwrap_err();
    assert_eq!(error.to_string(), "cannot disconnect when the client is linked");
    within("unlink", client.unlink()).await.unwrap();
    assert_eq!(client.username(), None);
    assert_eq!(client.status(), ClientStatus::Connected);
    assert!(client.users().is_empty());
    within("disconnect", client.disconnect(false)).await.unwrap();
    assert_eq!(client.status(), ClientStatus::Closed);
    within("server close", server.close()).await.unwrap();
}

#[tokio::test]
async fn preconditions_have_the_reference_wording() {
    let (server, url) = start_default().await;
    let client = Client::new();
    // Each refusal in the reference's words: `cannot <action> when the client is <status>`.
    let refused = |status: &str, refusals: Vec<(&str, Result<(), Error>)>| {
        for (action, result) in refusals {
            let words = format!("cannot {action} when the client is {status}");
            assert_eq!(result.unwrap_err().to_string(), words);
        }
    };
    refused(
        "initializing",
        vec![
            ("link", client.link("simon", None).await),
            ("unlink", client.unlink().await),
            ("leave", client.leave().await),
            ("disconnect", client.disconnect(true).await),
            ("send", client.send(&Message::new("a/b"))),
        ],
    );
    within("connect", client.connect(&url)).await.unwrap();
    refused(
        "connected",
        vec![
            ("connect", client.connect(&url).await),
            ("unlink", client.unlink().await),
            ("leave", client.leave().await),
        ],
    );
    // A failed call changes nothing.
    assert_eq!(client.status(), ClientStatus::Connected);
    within("link", client.link("simon", None)).await.unwrap();
    refused("linked", vec![("connect", client.connect(&url).await)]);
    within("disconnect", client.disconnect(true)).await.unwrap();
    refused(
        "closed",
        vec![
            ("disconnect", client.disconnect(true).await),
            ("send", client.send(&Message::new("a/b"))),
        ],
    );
    // A closed client connects again.
    connect_and_link(&client, &url, "simon").await;
    within("server close", server.close()).await.unwrap();
}

/// The reference's second client test, waiting on events instead of sleeping.
#[tokio::test]
async fn others_joining_linking_unlinking_and_leaving() {
    let (server, url) = start_default().await;
    let simon = linked_client(&url, "simon").await;
    assert_eq!(simon.users(), [user("simon", true)]);

    let other = Client::new();
    within("connect", other.connect(&url)).await.unwrap();
    assert_eq!(simon.users(), [user("simon", true)]);

    let joined = simon.wait_for_join_when(|u| u == "lisa");
    let linked = simon.wait_for_link_when(|u| u == "lisa");
    within("link", other.link("lisa", None)).await.unwrap();
    within("join lisa", joined).await;
    within("link lisa", linked).await;
    assert_eq!(names(&simon.users()), [("lisa".into(), true), ("simon".into(), true)]);

    let unlinked = simon.wait_for_unlink();
    within("unlink", other.unlink()).await.unwrap();
    assert_eq!(within("unlink lisa", unlinked).await, "lisa");
    assert_eq!(names(&simon.users()), [("lisa".into(), false), ("simon".into(), true)]);

    let linked = simon.wait_for_link_when(|u| u == "marjolein");
    within("link", other.link("marjolein", None)).await.unwrap();
    within("link marjolein", linked).await;
    assert_eq!(simon.users().len(), 3);
    assert!(simon.users().contains(&user("marjolein", true)));
    assert!(simon.users().contains(&user("lisa", false)));

    let left = simon.wait_for_leave();
    within("leave", other.leave()).await.unwrap();
    assert_eq!(within("leave marjolein", left).await, "marjolein");
    assert_eq!(names(&simon.users()), [("lisa".into(), false), ("simon".into(), true)]);

    within("disconnect", other.disconnect(false)).await.unwrap();
    within("disconnect", simon.disconnect(true)).await.unwrap();
    within("server close", server.close()).await.unwrap();
    assert!(simon.users().is_empty());
}

/// The reference's third client test: a relinking client sees users that came and went while it was away, and users
/// the server joins.
#[tokio::test]
async fn a_returning_user_sees_who_joined_meanwhile() {
    let (server, url) = start_default().await;
    let simon = linked_client(&url, "simon").await;
    let unlinked = server.wait_for_unlink();
    within("disconnect", simon.disconnect(true)).await.unwrap();
    within("server unlink", unlinked).await.unwrap();

    let lisa = Client::new();
    connect_and_link(&lisa, &url, "lisa").await;
    assert_eq!(names(&lisa.users()), [("lisa".into(), true), ("simon".into(), false)]);
    let unlinked = server.wait_for_unlink();
    within("disconnect", lisa.disconnect(true)).await.unwrap();
    within("server unlink", unlinked).await.unwrap();

    // The server lists simon before lisa: wait for lisa's join, the last of simon's snapshot.
    within("connect", simon.connect(&url)).await.unwrap();
    let lisa_seen = simon.wait_for_join_when(|u| u == "lisa");
    within("link", simon.link("simon", None)).await.unwrap();
    within("lisa in the snapshot", lisa_seen).await;
    assert_eq!(names(&simon.users()), [("lisa".into(), false), ("simon".into(), true)]);

    let joined = simon.wait_for_join();
    server.join("rik").unwrap();
    assert_eq!(within("join rik", joined).await, "rik");
    assert!(simon.users().contains(&user("rik", false)));
    within("disconnect", simon.disconnect(true)).await.unwrap();
    within("server close", server.close()).await.unwrap();
}

/// The reference's fourth client test: a once listener fires once.
#[tokio::test]
async fn a_once_listener_fires_once() {
    let (server, client) = simon_linked().await;
    let (count, bump) = counter();
    let subscription = client.once_message(move |message| {
        assert_eq!(message.kind, "custom/once");
        bump();
    });
    let marker = client.wait_for_message_when(|m| m.kind == "custom/marker");
    server.send("simon", &Message::new("custom/once")).unwrap();
    server.send("simon", &Message::new("custom/once")).unwrap();
    server.send("simon", &Message::new("custom/marker")).unwrap();
    within("marker", marker).await;
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert!(!subscription.is_active());
    within("server close", server.close()).await.unwrap();
}

/// The reference's fifth client test: every event, with the status, username and users a listener sees at it.
#[tokio::test]
async fn every_event_with_the_state_at_that_moment() {
    let (server, url) = start_default().await;
    let client = Client::new();
    let while_linked = async {
        let joined = client.wait_for_join_when(|u| u == "lisa");
        server.join("lisa").unwrap();
        within("join lisa", joined).await;
        let message = client.wait_for_message();
        server
            .send(
                "simon",
                &Message::with_payload("custom/message", serde_json::json!("Hello, world!")),
            )
            .unwrap();
        within("message", message).await;
        let left = client.wait_for_leave();
        server.kick("lisa").unwrap();
        within("leave lisa", left).await;
    };
    let both = [user("simon", true), user("lisa", false)];
    let expected = vec![
        as_simon("join lisa", &both),
        as_simon("message custom/message", &both),
        as_simon("leave lisa", &[user("simon", true)]),
    ];
    check_every_event(&client, &url, while_linked, expected).await;
    within("server close", server.close()).await.unwrap();
}

/// The reference's last client test: pings are answered, so a linked client outlives several ping intervals.
#[tokio::test]
async fn pings_are_answered() {
    let (server, url) = start(Server::builder().ping_interval(Duration::from_millis(200))).await;
    let client = linked_client(&url, "simon").await;
    // A connection that misses a pong is closed after the next interval; give it five intervals to go wrong.
    let closed = tokio::time::timeout(Duration::from_millis(1000), client.wait_for_close()).await;
    assert!(closed.is_err(), "the server closed a client that answers pings");
    assert_eq!(client.status(), ClientStatus::Linked);
    assert_eq!(server.user("simon").map(|u| u.is_linked), Some(true));
    within("server close", server.close()).await.unwrap();
}

#[tokio::test]
async fn leave_and_kick_arrive_as_unlink_then_leave_of_ones_own_user() {
    let (server, client) = simon_linked().await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let (e, c) = (events.clone(), client.clone());
    let _any = client.on_any(move |event| {
        if let ClientEvent::Unlink { username } | ClientEvent::Leave { username } = event {
            e.lock().push(format!("{} {username} ({})", event.name(), c.status()));
        }
    });

    // Leaving: the future resolves with the unlink; the server's krmx/left about ourselves follows.
    let left = client.wait_for_leave();
    let server_left = server.wait_for_leave();
    within("leave", client.leave()).await.unwrap();
    within("leave event", left).await;
    assert_eq!(within("server leave", server_left).await.unwrap(), "simon");
    assert!(server.user("simon").is_none());

    // Kicked: the same two messages, and the client stays connected.
    within("link", client.link("simon", None)).await.unwrap();
    let left = client.wait_for_leave();
    server.kick("simon").unwrap();
    within("kick", left).await;
    assert_eq!(client.status(), ClientStatus::Connected);
    assert_eq!(client.username(), None);
    assert_eq!(
        *events.lock(),
        [
            "unlink simon (connected)",
            "leave simon (connected)",
            "unlink simon (connected)",
            "leave simon (connected)"
        ]
    );
    // Unlinked by the server: connected and free to link again.
    within("link", client.link("simon", None)).await.unwrap();
    let unlinked = client.wait_for_unlink();
    server.unlink("simon").unwrap();
    within("server unlink", unlinked).await;
    assert_eq!(client.status(), ClientStatus::Connected);
    within("link", client.link("simon", None)).await.unwrap();
    within("server close", server.close()).await.unwrap();
}

#[tokio::test]
async fn closing_the_server_closes_the_client() {
    let (server, client) = simon_linked().await;
    let closed = client.wait_for_close();
    let unlinked = client.wait_for_unlink();
    within("server close", server.close()).await.unwrap();
    within("unlink", unlinked).await;
    within("close", closed).await;
    assert_eq!(client.status(), ClientStatus::Closed);
    assert!(client.users().is_empty());
}

#[tokio::test]
async fn a_pending_link_fails_when_the_connection_closes() {
    // Authentication that never finishes within the test: the link stays pending until the server closes.
    let (server, url) = start(Server::builder().auth_timeout(Duration::from_secs(30))).await;
    server.on_authenticate(|_, _, ctx| ctx.mark_async(std::future::pending::<Result<(), String>>()));
    let client = Client::new();
    within("connect", client.connect(&url)).await.unwrap();
    let authenticating =
        server.wait_for_event(|event| matches!(event, emitter_core::Event::Authenticate { .. }).then_some(()));
    let linking = client.link("simon", None);
    within("authenticate", authenticating).await.unwrap();
    assert_eq!(client.status(), ClientStatus::Linking);
    within("server close", server.close()).await.unwrap();
    let error = within("link", linking).await.unwrap_err();
    assert!(matches!(error, Error::ConnectionClosed), "{error}");
    assert_eq!(client.status(), ClientStatus::Closed);
}

#[tokio::test]
async fn a_forced_disconnect_while_connecting_fails_the_connect() {
    // A listener that accepts TCP but never answers the WebSocket handshake.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        std::future::pending::<()>().await;
        drop(socket);
    });
    let client = Client::new();
    let url = format!("ws://127.0.0.1:{port}/");
    let connecting = client.connect(&url);
    assert_eq!(client.status(), ClientStatus::Connecting);
    assert_eq!(
        client.disconnect(false).await.unwrap_err().to_string(),
        "cannot disconnect when the client is connecting"
    );
    let closing = client.disconnect(true);
    assert_eq!(client.status(), ClientStatus::Closing);
    within("disconnect", closing).await.unwrap();
    let error = within("connect", connecting).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("error while trying to connect to the server at {url}")
    );
    assert_eq!(client.status(), ClientStatus::Closed);
    held.abort();
}

#[tokio::test]
async fn the_version_sent_is_configurable() {
    let (server, url) = start(Server::builder().accepted_versions(AcceptedVersions::only(&[(0, 6)]))).await;
    let old = Client::builder().version("0.5.5").build();
    assert_eq!(old.version(), "0.5.5");
    within("connect", old.connect(&url)).await.unwrap();
    let error = within("link", old.link("simon", None)).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "krmx server version mismatch (server=0.6.*,client=0.5.5)"
    );
    // The default is accepted.
    let client = Client::new();
    assert_eq!(client.version(), emitter_client::DEFAULT_VERSION);
    connect_and_link(&client, &url, "simon").await;
    within("server close", server.close()).await.unwrap();
}

#[test]
fn the_default_version_is_the_servers_protocol_version() {
    let (major, minor) = emitter_core::PROTOCOL_VERSION;
    assert!(emitter_client::DEFAULT_VERSION.starts_with(&format!("{major}.{minor}.")));
}

#[tokio::test]
async fn auth_reaches_the_server_and_rejections_carry_its_reason() {
    let (server, url) = start(Server::builder().accept_new_users(false)).await;
    server.join("admin").unwrap();
    let auths = Arc::new(Mutex::new(Vec::new()));
    let a = auths.clone();
    server.on_authenticate(move |username, info, _| a.lock().push((username.to_string(), info.auth.clone())));
    let client = Client::new();
    within("connect", client.connect(&url)).await.unwrap();
    let reject_event = client.wait_for_reject();
    let error = within("link", client.link("simon", None)).await.unwrap_err();
    assert_eq!(error.to_string(), "server is not accepting new users");
    assert_eq!(
        within("reject event", reject_event).await,
        "server is not accepting new users"
    );
    within("link", client.link("admin", Some("token"))).await.unwrap();
    assert_eq!(*auths.lock(), [("admin".to_owned(), Some("token".to_owned()))]);

    let second = Client::new();
    within("connect", second.connect(&url)).await.unwrap();
    let error = within("link", second.link("admin", None)).await.unwrap_err();
    assert_eq!(error.to_string(), "user admin is already linked to a connection");
    within("server close", server.close()).await.unwrap();
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Move {
    x: u8,
    y: u8,
}

#[tokio::test]
async fn typed_payloads_both_ways() {
    let (server, client) = simon_linked().await;

    let received = server.wait_for_message();
    client.send_payload("game/move", &Move { x: 1, y: 2 }).unwrap();
    let (_, message) = within("move", received).await.unwrap();
    assert_eq!(message.payload_as::<Move>().unwrap(), Move { x: 1, y: 2 });

    // send_json keeps fields beside type and payload, as JSON.stringify does; the server sees type and payload.
    let received = server.wait_for_message();
    client
        .send_json(&json!({"type": "game/chat", "payload": "hi", "extra": true}))
        .unwrap();
    assert_eq!(within("chat", received).await.unwrap().1.payload, Some(json!("hi")));
    assert!(matches!(client.send_json(&json!([1, 2])), Err(Error::NotAMessage)));
    assert!(matches!(client.send_json(&json!({"type": 3})), Err(Error::NotAMessage)));
    assert!(matches!(
        client.send_json(&json!({"type": "krmx/leave"})),
        Err(Error::ReservedType)
    ));
    assert!(matches!(client.send_payload("krmx/x", &1), Err(Error::ReservedType)));

    // on_payload skips payloads of another shape; wait_for_payload reports them.
    let moves = Arc::new(Mutex::new(Vec::new()));
    let m = moves.clone();
    let _sub = client.on_payload("game/move", move |mv: Move| m.lock().push(mv));
    let bad = client.wait_for_payload::<Move>("game/move");
    let marker = client.wait_for_message_when(|m| m.kind == "game/marker");
    server
        .send(
            "simon",
            &Message::with_payload("game/move", serde_json::json!("not a move")),
        )
        .unwrap();
    server
        .send(
            "simon",
            &Message::with_payload("game/move", serde_json::json!(Move { x: 3, y: 4 })),
        )
        .unwrap();
    server.send("simon", &Message::new("game/marker")).unwrap();
    assert!(within("bad payload", bad).await.is_err());
    within("marker", marker).await;
    assert_eq!(*moves.lock(), [Move { x: 3, y: 4 }]);
    within("server close", server.close()).await.unwrap();
}

#[tokio::test]
async fn listeners_can_call_back_into_the_client() {
    let (server, url) = start_default().await;
    let client = Client::new();
    // On its own link, the client greets the server from inside the listener.
    let c = client.clone();
    let _greet = client.on_link(move |username| {
        if c.username().as_deref() == Some(username) {
            c.send(&Message::with_payload("custom/hello", serde_json::json!(username)))
                .unwrap();
        }
    });
    let greeted = server.wait_for_message();
    connect_and_link(&client, &url, "simon").await;
    let (from, message) = within("greeting", greeted).await.unwrap();
    assert_eq!((from.as_str(), message.payload), ("simon", Some(json!("simon"))));
    // A panicking listener is isolated: the others run and the client carries on.
    let _boom = client.on_message(|_| panic!("boom"));
    let after = client.wait_for_message();
    server.send("simon", &Message::new("custom/after")).unwrap();
    assert_eq!(within("after", after).await.kind, "custom/after");
    assert_eq!(client.status(), ClientStatus::Linked);
    within("server close", server.close()).await.unwrap();
}

#[tokio::test]
async fn unsubscribed_listeners_and_dropped_waits_are_removed() {
    let (server, client) = simon_linked().await;
    let (count, bump) = counter();
    let subscription = client.on_message(move |_| bump());
    drop(client.wait_for_message()); // a dropped wait leaves nothing behind
    let first = client.wait_for_message();
    server.send("simon", &Message::new("custom/one")).unwrap();
    within("one", first).await;
    subscription.unsubscribe();
    let second = client.wait_for_message();
    server.send("simon", &Message::new("custom/two")).unwrap();
    within("two", second).await;
    assert_eq!(count.load(Ordering::SeqCst), 1);
    within("server close", server.close()).await.unwrap();
}
