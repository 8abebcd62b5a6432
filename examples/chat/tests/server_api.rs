//! The samples of the book's "Server API" chapter (`docs/src/server-api.md`), run over a real socket on loopback. The
//! chapter shows these functions word for word, and the book's own tests (`docs/lib.rs`) check that it still does, so
//! what it shows is what passes here.

use std::sync::Arc;
use std::time::Duration;

use emitter_core::{Event, Message, Server};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

const TIMEOUT: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

// ---- the samples --------------------------------------------------------------------------------------------------

/// Logs every lifecycle event. Registering returns a `Subscription`; binding it to `_` keeps the listener for the
/// server's lifetime.
fn log_lifecycle(server: &Server) {
    let _ = server.on_listen(|port| tracing::info!(port, "listening"));
    let _ = server.on_join(|username| tracing::info!(username, "joined"));
    let _ = server.on_link(|username| tracing::info!(username, "linked"));
    let _ = server.on_unlink(|username| tracing::info!(username, "unlinked"));
    let _ = server.on_leave(|username| tracing::info!(username, "left"));
    let _ = server.on_close(|| tracing::info!("closed"));
}

/// Records every event, in order, as a line such as `link simon`.
fn record_events(server: &Server) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let _ = server.on_any(move |event| {
        let line = match event {
            Event::Join { username }
            | Event::Link { username }
            | Event::Unlink { username }
            | Event::Leave { username } => {
                format!("{} {username}", event.name())
            }
            Event::Message { username, message } => format!("message {username} {}", message.kind),
            other => other.name().to_owned(), // listen, close, authenticate, and events added later
        };
        if let Ok(mut seen) = record.lock() {
            seen.push(line);
        }
    });
    seen
}

/// Greets every user that links, first time or again, with the list of users.
fn welcome(server: &Server) {
    let s = server.clone();
    let _ = server.on_link(move |username| {
        let welcome = json!({ "type": "room/welcome", "payload": { "users": s.users() } });
        if let Err(error) = s.send_json(username, &welcome) {
            tracing::warn!(username, %error, "could not welcome");
        }
    });
}

/// `room/say` goes to everyone but the sender; `room/kick` from `admin` kicks the user named in the payload.
fn commands(server: &Server) {
    let s = server.clone();
    let _ = server.on_message(move |username, message| match message.kind.as_str() {
        "room/say" => {
            let said = json!({ "type": "room/said", "payload": { "from": username, "text": message.payload } });
            if let Err(error) = s.broadcast_json(&said, Some(username)) {
                tracing::warn!(%error, "could not broadcast");
            }
        }
        "room/kick" if username == "admin" => match message.payload_as::<String>() {
            Ok(target) => {
                if let Err(error) = s.kick(&target) {
                    let _ = s.send(username, &Message::new("room/no-such-user"));
                    tracing::info!(target, %error, "kick refused");
                }
            }
            Err(_) => tracing::debug!(username, "room/kick needs a username"),
        },
        _ => {}
    });
}

/// The first user to join becomes the host; later joins do not change it.
fn first_user_hosts(server: &Server) -> Arc<Mutex<Option<String>>> {
    let host = Arc::new(Mutex::new(None));
    let h = host.clone();
    let _ = server.once_join(move |username| {
        if let Ok(mut host) = h.lock() {
            *host = Some(username.to_owned());
        }
    });
    host
}

/// Waits until some linked user sends `game/ready`, and returns who did. The listener is registered when
/// `wait_for_message_when` is called, not when the future is first polled, so a message that arrives in between
/// still counts.
async fn until_ready(server: &Server) -> String {
    let ready = server.wait_for_message_when(|_, message| message.kind == "game/ready");
    let (username, _message) = ready.await;
    username
}

/// Counts `poll/vote` messages until the poll is closed; then the listener is removed.
fn open_poll(server: &Server) -> (Arc<Mutex<u32>>, emitter_core::Subscription) {
    let votes = Arc::new(Mutex::new(0));
    let v = votes.clone();
    let subscription = server.on_message(move |_, message| {
        if message.kind == "poll/vote" {
            if let Ok(mut votes) = v.lock() {
                *votes += 1;
            }
        }
    });
    (votes, subscription) // later: subscription.unsubscribe()
}

/// Guests are turned away at once; everyone else is looked up asynchronously, which may take up to the server's
/// auth timeout.
fn authenticate(server: &Server) {
    let _ = server.on_authenticate(|username, info, ctx| {
        if username.starts_with("guest") {
            ctx.reject("guests are not allowed"); // answered at once
            return;
        }
        let (username, is_new) = (username.to_owned(), info.is_new_user);
        ctx.mark_async(async move {
            let known = lookup(&username).await; // a database, in a real app
            match (known, is_new) {
                (true, _) => Ok(()),
                (false, true) => Err(format!("{username} has no account")),
                (false, false) => Err("this account was closed".to_owned()),
            }
        });
    });
}

async fn lookup(username: &str) -> bool {
    tokio::task::yield_now().await;
    username != "stranger"
}

/// A server whose authentication never decides: every link is rejected with `authentication timeout` after 200 ms.
fn undecided() -> Server {
    let server = Server::builder().auth_timeout(Duration::from_millis(200)).build();
    let _ = server.on_authenticate(|_username, _info, ctx| {
        ctx.mark_async(std::future::pending::<Result<(), String>>()); // never finishes
    });
    server
}

/// A server whose endpoint is at `/ws`, that only links users created with `join`, and that gives async
/// authentication two seconds.
fn configured() -> Server {
    Server::builder()
        .path("/ws")
        .accept_new_users(false)
        .auth_timeout(Duration::from_secs(2))
        .build()
}

/// Closes the server: every user leaves, every connection closes, then `close` is emitted.
async fn close_and_wait(server: &Server) -> Result<(), emitter_core::Error> {
    server.close().await?; // resolves once the status is `closed` and the `close` listeners have run
    assert_eq!(server.status(), emitter_core::Status::Closed);
    Ok(())
}

// ---- the tests ----------------------------------------------------------------------------------------------------

async fn start(server: &Server) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    emitter_axum::listen_on(server, listener).await.unwrap()
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

async fn recv_type(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let message = recv(ws).await;
        if message["type"] == kind {
            return message;
        }
    }
}

async fn send(ws: &mut Ws, message: Value) {
    ws.send(WsMessage::text(message.to_string())).await.unwrap();
}

/// Connects and asks to link; returns the socket and `Ok` or the rejection reason.
async fn attempt(port: u16, username: &str) -> (Ws, Result<(), String>) {
    let (mut ws, _) = connect_async(format!("ws://127.0.0.1:{port}/")).await.unwrap();
    let link = json!({"type": "krmx/link", "payload": {"username": username, "version": "0.6.0"}});
    send(&mut ws, link).await;
    let answer = recv(&mut ws).await;
    match answer["type"].as_str() {
        Some("krmx/accepted") => (ws, Ok(())),
        _ => (
            ws,
            Err(answer["payload"]["reason"].as_str().unwrap_or_default().to_owned()),
        ),
    }
}

async fn link(port: u16, username: &str) -> Ws {
    let (mut ws, outcome) = attempt(port, username).await;
    assert_eq!(outcome, Ok(()));
    let own = json!({"type": "krmx/linked", "payload": {"username": username}});
    while recv(&mut ws).await != own {}
    ws
}

#[tokio::test]
async fn events_come_in_the_documented_order() {
    let server = Server::new();
    log_lifecycle(&server);
    let seen = record_events(&server);
    let port = start(&server).await;
    let mut simon = link(port, "simon").await;
    let message = server.wait_for_message();
    send(&mut simon, json!({"type": "custom/hello"})).await;
    tokio::time::timeout(TIMEOUT, message).await.unwrap();
    let left = server.wait_for_leave();
    send(&mut simon, json!({"type": "krmx/leave"})).await;
    tokio::time::timeout(TIMEOUT, left).await.unwrap();
    tokio::time::timeout(TIMEOUT, close_and_wait(&server))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "listen",
            "authenticate",
            "join simon",
            "link simon",
            "message simon custom/hello",
            "unlink simon",
            "leave simon",
            "close"
        ]
    );
}

#[tokio::test]
async fn send_broadcast_and_kick() {
    let server = Server::new();
    welcome(&server);
    commands(&server);
    let port = start(&server).await;
    let mut admin = link(port, "admin").await;
    let welcome = recv_type(&mut admin, "room/welcome").await;
    assert_eq!(
        welcome["payload"]["users"],
        json!([{"username": "admin", "isLinked": true}])
    );
    let mut lisa = link(port, "lisa").await;
    assert_eq!(
        recv_type(&mut lisa, "room/welcome").await["payload"]["users"][1]["username"],
        "lisa"
    );

    send(&mut lisa, json!({"type": "room/say", "payload": "hi"})).await;
    let said = recv_type(&mut admin, "room/said").await;
    assert_eq!(said["payload"], json!({"from": "lisa", "text": "hi"}));

    send(&mut lisa, json!({"type": "room/kick", "payload": "admin"})).await; // not the admin: ignored
    send(&mut admin, json!({"type": "room/kick", "payload": "nobody"})).await;
    assert_eq!(recv(&mut admin).await, json!({"type": "room/no-such-user"}));
    send(&mut admin, json!({"type": "room/kick", "payload": "lisa"})).await;
    assert_eq!(recv_type(&mut lisa, "krmx/left").await["payload"]["username"], "lisa");
    assert_eq!(recv_type(&mut admin, "krmx/left").await["payload"]["username"], "lisa");
    assert_eq!(server.users().len(), 1);
    server.close().await.unwrap();
}

#[tokio::test]
async fn once_wait_for_and_unsubscribe() {
    let server = Server::new();
    let host = first_user_hosts(&server);
    let (votes, poll) = open_poll(&server);
    let port = start(&server).await;
    let mut simon = link(port, "simon").await;
    let _lisa = link(port, "lisa").await;
    assert_eq!(host.lock().unwrap().as_deref(), Some("simon"));

    let ready = until_ready(&server);
    send(&mut simon, json!({"type": "poll/vote"})).await;
    send(&mut simon, json!({"type": "game/ready"})).await;
    assert_eq!(tokio::time::timeout(TIMEOUT, ready).await.unwrap(), "simon");
    assert_eq!(*votes.lock().unwrap(), 1); // the vote came before game/ready, on the same connection

    poll.unsubscribe();
    let after = server.wait_for_message();
    send(&mut simon, json!({"type": "poll/vote"})).await;
    tokio::time::timeout(TIMEOUT, after).await.unwrap();
    assert_eq!(*votes.lock().unwrap(), 1);
    server.close().await.unwrap();
}

#[tokio::test]
async fn authentication_sync_async_and_timeout() {
    let server = Server::builder().auth_timeout(Duration::from_secs(5)).build();
    authenticate(&server);
    let port = start(&server).await;
    assert_eq!(
        attempt(port, "guest1").await.1,
        Err("guests are not allowed".to_owned())
    );
    assert_eq!(
        attempt(port, "stranger").await.1,
        Err("stranger has no account".to_owned())
    );
    assert_eq!(attempt(port, "simon").await.1, Ok(()));
    server.close().await.unwrap();

    let server = undecided();
    let port = start(&server).await;
    assert_eq!(attempt(port, "simon").await.1, Err("authentication timeout".to_owned()));
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_configured_server() {
    let server = configured();
    assert_eq!(server.config().path(), "/ws");
    assert!(!server.config().accept_new_users());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = emitter_axum::listen_on(&server, listener).await.unwrap();
    server.join("simon").unwrap();
    let (mut ws, _) = connect_async(format!("ws://127.0.0.1:{port}/ws")).await.unwrap();
    for (username, answer) in [("lisa", "krmx/rejected"), ("simon", "krmx/accepted")] {
        let link = json!({"type": "krmx/link", "payload": {"username": username, "version": "0.6.0"}});
        send(&mut ws, link).await;
        let reply = recv(&mut ws).await;
        assert_eq!(reply["type"], answer, "{reply}");
    }
    close_and_wait(&server).await.unwrap();
}
