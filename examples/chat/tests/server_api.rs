//! The samples of the book's "Server API" chapter (`docs/src/server-api.md`), run over a real socket on loopback. The
//! chapter shows these functions word for word, and the book's own tests (`docs/lib.rs`) check that it still does, so
//! what it shows is what passes here.

use std::sync::Arc;
use std::time::Duration;

use emitter_core::{Event, Message, Server};
use emitter_testing::{within, ws_url, Receive, TestClient};
use serde_json::json;
use std::sync::Mutex;

// ---- the samples --------------------------------------------------------------------------------------------------

/// Logs every lifecycle event. A listener stays for the server's lifetime; the `Subscription` a registration returns
/// can remove it (see `open_poll` below).
fn log_lifecycle(server: &Server) {
    server.on_listen(|_, port| tracing::info!(port, "listening"));
    server.on_join(|u| tracing::info!(username = %u, "joined"));
    server.on_link(|u| tracing::info!(username = %u, "linked"));
    server.on_unlink(|u| tracing::info!(username = %u, "unlinked"));
    server.on_leave(|u| tracing::info!(username = %u, "left"));
    server.on_close(|_| tracing::info!("closed"));
}

/// Records every event, in order, as a line such as `link simon`.
fn record_events(server: &Server) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    server.on_any(move |_, event| {
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
    server.on_link(|u| {
        let welcome = json!({ "users": u.server().users() });
        if let Err(error) = u.send_payload("room/welcome", &welcome) {
            tracing::warn!(username = %u, %error, "could not welcome");
        }
    });
}

/// `room/say` goes to everyone but the sender; `room/kick` from `admin` kicks the user named in the payload.
fn commands(server: &Server) {
    server.on_message(|u, m| match m.kind.as_str() {
        "room/say" => {
            let said = json!({ "from": u, "text": m.payload });
            if let Err(error) = u.server().broadcast_payload("room/said", &said, Some(u.username())) {
                tracing::warn!(%error, "could not broadcast");
            }
        }
        "room/kick" if u == "admin" => match m.payload_as::<String>() {
            Ok(target) => {
                if let Err(error) = u.server().kick(&target) {
                    let _ = u.send(&Message::new("room/no-such-user"));
                    tracing::info!(target, %error, "kick refused");
                }
            }
            Err(_) => tracing::debug!(username = %u, "room/kick needs a username"),
        },
        _ => {}
    });
}

/// The first user to join becomes the host; later joins do not change it.
fn first_user_hosts(server: &Server) -> Arc<Mutex<Option<String>>> {
    let host = Arc::new(Mutex::new(None));
    let h = host.clone();
    server.once_join(move |u| {
        if let Ok(mut host) = h.lock() {
            *host = Some(u.to_string());
        }
    });
    host
}

/// Waits until some linked user sends `game/ready`, and returns who did. The listener is registered when
/// `wait_for_message_when` is called, not when the future is first polled, so a message that arrives in between
/// still counts.
async fn until_ready(server: &Server) -> Result<String, emitter_core::Error> {
    let ready = server.wait_for_message_when(|_, message| message.kind == "game/ready");
    let (username, _message) = ready.await?; // an error if the server closes first
    Ok(username)
}

/// Counts `poll/vote` messages until the poll is closed; then the listener is removed.
fn open_poll(server: &Server) -> (Arc<Mutex<u32>>, emitter_core::Subscription) {
    let votes = Arc::new(Mutex::new(0));
    let v = votes.clone();
    let subscription = server.on_message(move |_, m| {
        if m.kind == "poll/vote" {
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
    server.on_authenticate(|u, info, auth| {
        if u.starts_with("guest") {
            auth.reject("guests are not allowed"); // answered at once
            return;
        }
        let (username, is_new) = (u.to_string(), info.is_new_user);
        auth.mark_async(async move {
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
    server.on_authenticate(|_, _, auth| {
        auth.mark_async(std::future::pending::<Result<(), String>>()); // never finishes
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

async fn start(server: &Server) -> String {
    ws_url(emitter_testing::listen(server).await, "/")
}

#[tokio::test]
async fn events_come_in_the_documented_order() {
    let server = Server::new();
    log_lifecycle(&server);
    let seen = record_events(&server);
    let url = start(&server).await;
    let simon = TestClient::linked(&url, "simon").await;
    let message = server.wait_for_message();
    simon.send(json!({"type": "custom/hello"}));
    within("a message", message).await.unwrap();
    let left = server.wait_for_leave();
    simon.client().leave().await.unwrap();
    within("a leave", left).await.unwrap();
    within("the close", close_and_wait(&server)).await.unwrap();
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
    let url = start(&server).await;
    let mut admin = TestClient::linked(&url, "admin").await;
    let welcome = admin.recv_type("room/welcome").await;
    assert_eq!(
        welcome["payload"]["users"],
        json!([{"username": "admin", "isLinked": true}])
    );
    let mut lisa = TestClient::linked(&url, "lisa").await;
    assert_eq!(
        lisa.recv_type("room/welcome").await["payload"]["users"][1]["username"],
        "lisa"
    );

    lisa.send(json!({"type": "room/say", "payload": "hi"}));
    let said = admin.recv_type("room/said").await;
    assert_eq!(said["payload"], json!({"from": "lisa", "text": "hi"}));

    lisa.send(json!({"type": "room/kick", "payload": "admin"})); // not the admin: ignored
    admin.send(json!({"type": "room/kick", "payload": "nobody"}));
    assert_eq!(admin.recv().await, json!({"type": "room/no-such-user"}));
    admin.send(json!({"type": "room/kick", "payload": "lisa"}));
    assert_eq!(lisa.recv_type("krmx/left").await["payload"]["username"], "lisa");
    assert_eq!(admin.recv_type("krmx/left").await["payload"]["username"], "lisa");
    assert_eq!(server.users().len(), 1);
    server.close().await.unwrap();
}

#[tokio::test]
async fn once_wait_for_and_unsubscribe() {
    let server = Server::new();
    let host = first_user_hosts(&server);
    let (votes, poll) = open_poll(&server);
    let url = start(&server).await;
    let simon = TestClient::linked(&url, "simon").await;
    let _lisa = TestClient::linked(&url, "lisa").await;
    assert_eq!(host.lock().unwrap().as_deref(), Some("simon"));

    let ready = until_ready(&server);
    simon.send(json!({"type": "poll/vote"}));
    simon.send(json!({"type": "game/ready"}));
    assert_eq!(within("game/ready", ready).await.unwrap(), "simon");
    assert_eq!(*votes.lock().unwrap(), 1); // the vote came before game/ready, on the same connection

    poll.unsubscribe();
    let after = server.wait_for_message();
    simon.send(json!({"type": "poll/vote"}));
    within("a message", after).await.unwrap();
    assert_eq!(*votes.lock().unwrap(), 1);
    server.close().await.unwrap();
}

#[tokio::test]
async fn authentication_sync_async_and_timeout() {
    let server = Server::builder().auth_timeout(Duration::from_secs(5)).build();
    authenticate(&server);
    let url = start(&server).await;
    TestClient::expect_rejected(&url, "guest1", None, "guests are not allowed").await;
    TestClient::expect_rejected(&url, "stranger", None, "stranger has no account").await;
    assert_eq!(TestClient::attempt(&url, "simon", None).await.1, Ok(()));
    server.close().await.unwrap();

    let server = undecided();
    let url = start(&server).await;
    TestClient::expect_rejected(&url, "simon", None, "authentication timeout").await;
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_configured_server() {
    let server = configured();
    assert_eq!(server.config().path(), "/ws");
    assert!(!server.config().accept_new_users());
    let port = emitter_testing::listen(&server).await;
    server.join("simon").unwrap();
    let mut client = TestClient::connect(&ws_url(port, "/ws")).await;
    for (username, accepted) in [("lisa", false), ("simon", true)] {
        let answer = client.link(username, None).await;
        assert_eq!(answer.is_ok(), accepted, "{username}: {answer:?}");
    }
    close_and_wait(&server).await.unwrap();
}
