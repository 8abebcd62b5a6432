//! Regression tests for the reference's races, over real sockets. Each one fails on a naive implementation: a timeout
//! left running after a successful async auth, a link decided on stale checks, auth work that outlives its
//! connection, a second link request racing the first, a broken frame that takes the server down, JavaScript's
//! built-in property names, a prefix-based version check, and many links at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use emitter_core::{AcceptedVersions, Server, User};
use emitter_testing::*;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::{oneshot, Barrier, Notify};
use tokio::task::JoinSet;

// ---- helpers ---------------------------------------------------------------------------------------------------------

/// Held inside an auth future; its drop is observed by the matching [`DropWatch`], which proves the future was dropped
/// (cancelled) rather than left running.
struct DropProbe(#[allow(dead_code)] oneshot::Sender<()>);

struct DropWatch(oneshot::Receiver<()>);

fn drop_probe() -> (DropProbe, DropWatch) {
    let (tx, rx) = oneshot::channel();
    (DropProbe(tx), DropWatch(rx))
}

impl DropWatch {
    /// Waits until the probe has been dropped.
    async fn dropped(self) {
        match tokio::time::timeout(TIMEOUT, self.0).await {
            Ok(Err(_)) => {}
            Ok(Ok(())) => unreachable!("nothing sends on a probe"),
            Err(_) => panic!("timed out waiting for the auth future to be dropped"),
        }
    }
}

/// Sends a link request with an explicit version and reads the reply.
async fn link_version(client: &mut RawClient, username: &str, version: &str) -> Result<(), String> {
    client
        .send(json!({"type": "krmx/link", "payload": {"username": username, "version": version}}))
        .await;
    let reply = client.recv().await;
    if reply == accepted() {
        Ok(())
    } else if reply["type"] == "krmx/rejected" {
        Err(reply["payload"]["reason"].as_str().unwrap().to_owned())
    } else {
        panic!("unexpected reply to a link request: {reply}")
    }
}

// ---- async authentication --------------------------------------------------------------------------------------------

/// The reference arms its auth timeout and never disarms it on success: `authentication timeout` then reaches a user
/// that was accepted long before. Here the timeout dies with the decision, and a pending future is dropped at timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_async_auth_is_never_followed_by_a_stray_rejection() {
    let (server, events, port) = start(Server::builder().auth_timeout(Duration::from_millis(300))).await;
    let (probe, watch) = drop_probe();
    let probe = Mutex::new(Some(probe));
    let completed = Arc::new(AtomicBool::new(false));
    let done = completed.clone();
    server.on_authenticate(move |username, _, ctx| match username.username() {
        "simon" => ctx.mark_async(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<(), String>(())
        }),
        "slowpoke" => {
            let probe = probe.lock().take();
            let done = done.clone();
            ctx.mark_async(async move {
                let _probe = probe;
                // Would finish well after the timeout, if it were left running.
                tokio::time::sleep(Duration::from_secs(2)).await;
                done.store(true, Ordering::SeqCst);
                Ok::<(), String>(())
            });
        }
        _ => {}
    });

    let mut simon = RawClient::link_as(port, "simon").await;
    simon.expect_all(&[joined("simon"), linked("simon")]).await;

    // A second async link that starts after simon was accepted and ends by the timeout: when its rejection arrives,
    // simon's own timeout, had it been left armed, has fired too.
    let started = tokio::time::Instant::now();
    match RawClient::link_with(port, "slowpoke", None).await {
        Err(reason) => assert_eq!(reason, "authentication timeout"),
        Ok(_) => panic!("slowpoke was accepted"),
    }
    assert!(started.elapsed() >= Duration::from_millis(300));

    server.send("simon", &marker("after-timeout")).unwrap();
    simon.expect(marker_json("after-timeout")).await;

    // The timed-out future was dropped, not left to run to its end.
    watch.dropped().await;
    assert!(!completed.load(Ordering::SeqCst));
    assert_eq!(server.users(), [user("simon", true)]);
    assert_eq!(
        events.filtered(&["join", "link", "unlink", "leave"]),
        ["join simon", "link simon"]
    );
}

#[tokio::test]
async fn a_handler_that_never_settles_is_rejected_by_the_timeout() {
    let (server, events, port) = start(Server::builder().auth_timeout(Duration::from_millis(200))).await;
    server.on_authenticate(|username, _, ctx| {
        if username == "ghost" {
            ctx.mark_async(std::future::pending::<Result<(), String>>());
        }
    });

    let mut client = RawClient::connect(port).await;
    assert_eq!(
        client.link("ghost", None).await,
        Err("authentication timeout".to_owned())
    );
    // The same connection may try again; its snapshot proves the ghost never joined.
    client.link("simon", None).await.unwrap();
    client.expect_all(&[joined("simon"), linked("simon")]).await;
    events.wait_for("link simon").await;
    assert_eq!(events.filtered(&["join", "link"]), ["join simon", "link simon"]);
    assert_eq!(server.users(), [user("simon", true)]);
}

/// Both requests pass the early checks (the user does not exist yet) before either is decided: the checks must be
/// made again when the link is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_async_links_to_the_same_new_name_accept_exactly_one() {
    let (server, events, port) = start_default().await;
    let both_asked = Arc::new(Barrier::new(2));
    let b = both_asked.clone();
    server.on_authenticate(move |_, _, ctx| {
        let b = b.clone();
        ctx.mark_async(async move {
            b.wait().await;
            Ok::<(), String>(())
        });
    });

    let (first, second) = tokio::join!(
        RawClient::link_with(port, "simon", None),
        RawClient::link_with(port, "simon", None)
    );
    let (mut winner, reason) = match (first, second) {
        (Ok(winner), Err(reason)) | (Err(reason), Ok(winner)) => (winner, reason),
        (Ok(_), Ok(_)) => panic!("both connections were linked to simon"),
        (Err(a), Err(b)) => panic!("both were rejected: {a} / {b}"),
    };
    assert_eq!(reason, "user simon is already linked to a connection");
    winner.expect_all(&[joined("simon"), linked("simon")]).await;
    events.wait_for("link simon").await;
    server.send("simon", &marker("end")).unwrap();
    winner.expect(marker_json("end")).await;

    assert_eq!(server.users(), [user("simon", true)]);
    assert_eq!(events.count("authenticate simon new=true auth=None"), 2);
    assert_eq!(
        events.filtered(&["join", "link", "unlink", "leave"]),
        ["join simon", "link simon"]
    );
}

#[tokio::test]
async fn a_connection_closed_during_async_auth_leaves_nothing_behind() {
    let (server, events, port) = start_default().await;
    let (probe, watch) = drop_probe();
    let probe = Mutex::new(Some(probe));
    server.on_authenticate(move |_, _, ctx| {
        // Only the first attempt hangs; the auth timeout (10 s) is far off.
        if let Some(probe) = probe.lock().take() {
            ctx.mark_async(async move {
                let _probe = probe;
                std::future::pending::<Result<(), String>>().await
            });
        }
    });

    let mut client = RawClient::connect(port).await;
    client.send(link_request("simon")).await;
    events.wait_for("authenticate simon new=true auth=None").await;
    client.close().await;
    // The attempt died with its connection: its work was dropped at once, not left until the timeout.
    watch.dropped().await;
    assert!(server.users().is_empty());
    assert!(events.filtered(&["join", "link"]).is_empty());

    let mut again = RawClient::link_as(port, "simon").await;
    again.expect_all(&[joined("simon"), linked("simon")]).await;
    events.wait_for("link simon").await;
    assert_eq!(events.count("authenticate simon new=true auth=None"), 2);
    assert_eq!(
        events.filtered(&["join", "link", "unlink", "leave"]),
        ["join simon", "link simon"]
    );
    assert_eq!(server.users(), [user("simon", true)]);
}

#[tokio::test]
async fn a_second_link_request_while_the_first_is_pending_is_rejected() {
    let (server, events, port) = start_default().await;
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    server.on_authenticate(move |username, _, ctx| {
        if username == "simon" {
            let g = g.clone();
            ctx.mark_async(async move {
                g.notified().await;
                Ok::<(), String>(())
            });
        }
    });

    let mut client = RawClient::connect(port).await;
    client.send(link_request("simon")).await;
    events.wait_for("authenticate simon new=true auth=None").await;
    client.send(link_request("simon")).await;
    client.expect(rejected("link request already pending")).await;
    client.send(link_request("lisa")).await;
    client.expect(rejected("link request already pending")).await;
    client.send(json!({"type": "custom/hello"})).await;
    client.expect(rejected("unlinked connection")).await;
    client.send(json!({"type": "krmx/leave"})).await;
    client.expect(rejected("unlinked connection")).await;

    gate.notify_one();
    client.expect_all(&[accepted(), joined("simon"), linked("simon")]).await;
    events.wait_for("link simon").await;
    // Nothing else comes: no late answer to the refused requests.
    server.send("simon", &marker("end")).unwrap();
    client.expect(marker_json("end")).await;

    assert_eq!(server.users(), [user("simon", true)]);
    assert_eq!(events.filtered(&["authenticate"]).len(), 1);
    assert_eq!(
        events.filtered(&["join", "link", "unlink", "leave", "message"]),
        ["join simon", "link simon"]
    );
}

// ---- broken frames ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn broken_frames_affect_only_their_own_connection() {
    let (server, events, port) = start_default().await;
    let mut alice = RawClient::link_and_settle(port, "alice").await;

    // Invalid UTF-8 in a text frame, a frame the client forgot to mask, and bytes that are no frame at all: each is
    // a WebSocket error that ends its connection, which unlinks its user. The frames are written by hand, past the
    // WebSocket library, which would refuse to send them.
    for name in ["mallory1", "mallory2", "mallory3"] {
        let mut raw = RawClient::link_as(port, name).await;
        alice.expect_all(&[joined(name), linked(name)]).await;
        match name {
            "mallory1" => raw.send_frame(opcode::TEXT, b"{\"type\":\"a/\xff\xfe\"}", true).await,
            "mallory2" => raw.send_frame(opcode::TEXT, br#"{"type":"custom/hi"}"#, false).await,
            _ => {
                raw.write_bytes(b"\xff\xff\xff\xff this is no websocket frame\r\n\r\n")
                    .await
            }
        }
        raw.expect_closed().await;
        events.wait_for(&format!("unlink {name}")).await;
        alice.expect(unlinked(name)).await;
    }

    // A binary frame is read like a text frame, so invalid UTF-8 there is an invalid message: the user is unlinked,
    // the connection stays open and can link again.
    let mut binary = RawClient::link_as(port, "mallory4").await;
    alice.expect_all(&[joined("mallory4"), linked("mallory4")]).await;
    binary.send_binary(b"\xff\xfe\xfd").await;
    events.wait_for("unlink mallory4").await;
    alice.expect(unlinked("mallory4")).await;
    binary.recv_until(&unlinked("mallory4")).await;
    binary.send_binary(b"\xff\xfe\xfd").await;
    assert_eq!(binary.try_recv().await, Some(rejected("invalid message")));
    binary.send(link_request("mallory4")).await;
    assert_eq!(binary.try_recv().await, Some(accepted()));
    alice.expect(linked("mallory4")).await;

    // The others carry on, both ways, and the server still accepts connections.
    let said = server.wait_for_message();
    alice.send(json!({"type": "custom/still-here"})).await;
    let (from, message) = tokio::time::timeout(TIMEOUT, said).await.unwrap().unwrap();
    assert_eq!((from.as_str(), message.kind.as_str()), ("alice", "custom/still-here"));
    server.send("alice", &marker("alive")).unwrap();
    alice.expect(marker_json("alive")).await;
    let mut bob = RawClient::link_as(port, "bob").await;
    bob.recv_until(&linked("bob")).await;
    alice.expect_all(&[joined("bob"), linked("bob")]).await;
    assert_eq!(server.status(), emitter_core::Status::Listening);
    assert_eq!(
        server.users(),
        [
            user("alice", true),
            user("mallory1", false),
            user("mallory2", false),
            user("mallory3", false),
            user("mallory4", true),
            user("bob", true),
        ]
    );
}

// ---- names and versions ----------------------------------------------------------------------------------------------

/// In the reference, users live in a plain object, where these names are inherited properties.
#[tokio::test]
async fn javascript_built_in_property_names_are_ordinary_usernames() {
    let (server, events, port) = start_default().await;
    let names = ["constructor", "toString", "hasOwnProperty", "valueOf"];
    let mut clients = Vec::new();
    for name in names {
        let client = RawClient::link_as(port, name).await;
        events.wait_for(&format!("link {name}")).await;
        assert!(
            events.contains(&format!("authenticate {name} new=true auth=None")),
            "{name}"
        );
        clients.push(client);
    }
    assert_eq!(server.users(), names.map(|name| user(name, true)).to_vec());
    // The last one's snapshot lists every one of them.
    let last = clients.last_mut().unwrap();
    for name in names {
        last.expect_all(&[joined(name), linked(name)]).await;
    }

    // Messages from and to them.
    for (name, client) in names.iter().zip(clients.iter_mut()) {
        let said = server.wait_for_message();
        client.send(json!({"type": "custom/hi"})).await;
        let (from, _) = tokio::time::timeout(TIMEOUT, said).await.unwrap().unwrap();
        assert_eq!(from, *name);
        server.send(name, &marker(name)).unwrap();
        client.recv_until(&marker_json(name)).await;
    }

    // Unlinked, a name is an existing user; after leaving, it is new again.
    let constructor = &mut clients[0];
    constructor.send(json!({"type": "krmx/unlink"})).await;
    constructor.recv_until(&unlinked("constructor")).await;
    constructor.link("constructor", None).await.unwrap();
    events.wait_for("authenticate constructor new=false auth=None").await;

    let to_string = &mut clients[1];
    to_string.send(json!({"type": "krmx/leave"})).await;
    to_string.recv_until(&left("toString")).await;
    events.wait_for("leave toString").await;
    assert!(!server.users().iter().any(|u| u.username == "toString"));
    to_string.link("toString", None).await.unwrap();
    assert_eq!(events.count("authenticate toString new=true auth=None"), 2);
    events.wait_for("link toString").await;
    assert_eq!(server.users().len(), 4);
    assert_eq!(events.count("join toString"), 2);
}

#[tokio::test]
async fn versions_are_compared_by_number_not_by_prefix() {
    let (_server, _events, port) = start_default().await;
    let mut client = RawClient::connect(port).await;
    assert_eq!(
        link_version(&mut client, "simon", "0.60.1").await,
        Err("krmx server version mismatch (server=0.5.* || 0.6.*,client=0.60.1)".to_owned())
    );
    assert_eq!(link_version(&mut client, "simon", "0.5.3").await, Ok(()));
    let mut other = RawClient::connect(port).await;
    assert_eq!(link_version(&mut other, "lisa", "0.6").await, Ok(()));

    let (_strict, _events, port) = start(Server::builder().accepted_versions(AcceptedVersions::only(&[(0, 6)]))).await;
    let mut client = RawClient::connect(port).await;
    assert_eq!(
        link_version(&mut client, "simon", "0.5.3").await,
        Err("krmx server version mismatch (server=0.6.*,client=0.5.3)".to_owned())
    );
    assert_eq!(link_version(&mut client, "simon", "0.6.1").await, Ok(()));
}

// ---- many at once ----------------------------------------------------------------------------------------------------

/// A client's view of the users, rebuilt from the protocol messages it received, in join order.
fn apply(view: &mut Vec<User>, message: &Value) {
    let username = message["payload"]["username"].as_str().unwrap_or_default();
    let position = view.iter().position(|u| u.username == username);
    match (message["type"].as_str().unwrap(), position) {
        ("krmx/joined", None) => view.push(user(username, false)),
        ("krmx/linked", Some(i)) => view[i].is_linked = true,
        ("krmx/unlinked", Some(i)) => view[i].is_linked = false,
        ("krmx/left", Some(i)) => {
            view.remove(i);
        }
        _ => panic!("unexpected message {message} for view {view:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_links_keep_one_connection_per_user_and_agree_on_the_users() {
    let (server, events, port) = start_default().await;
    let mut linking = JoinSet::new();
    for i in 0..200 {
        linking.spawn(async move {
            let name = format!("user{i}");
            let client = RawClient::link_as(port, &name).await;
            (name, Some(client))
        });
    }
    for i in 0..20 {
        linking.spawn(async move {
            let name = format!("race{}", i % 5);
            match RawClient::link_with(port, &name, None).await {
                Ok(client) => (name, Some(client)),
                Err(reason) => {
                    assert_eq!(reason, format!("user {name} is already linked to a connection"));
                    (name, None)
                }
            }
        });
    }
    let mut clients = Vec::new();
    let mut winners: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(joined) = linking.join_next().await {
        let (name, client) = joined.unwrap();
        if let Some(client) = client {
            *winners.entry(name).or_default() += 1;
            clients.push(client);
        }
    }
    assert_eq!(clients.len(), 205);
    assert!(winners.values().all(|&n| n == 1), "{winners:?}");

    // Every link is done; a broadcast now is queued after everything they sent.
    let users = server.users();
    assert_eq!(users.len(), 205);
    assert!(users.iter().all(|u| u.is_linked));
    server.broadcast(&marker("quiet"), None).unwrap();
    let mut reading = JoinSet::new();
    for mut client in clients {
        reading.spawn(async move {
            let mut view = Vec::new();
            for message in client.recv_until(&marker_json("quiet")).await {
                apply(&mut view, &message);
            }
            (client.username.clone().unwrap(), view, client)
        });
    }
    let users = server.users();
    // Keep every connection open until the checks are done: a closing one would unlink its user.
    let mut still_open = Vec::new();
    while let Some(read) = reading.join_next().await {
        let (name, view, client) = read.unwrap();
        assert_eq!(view, users, "the view of {name}");
        still_open.push(client);
    }
    assert_eq!(still_open.len(), 205);
    for user in &users {
        assert_eq!(events.count(&format!("join {}", user.username)), 1);
        assert_eq!(events.count(&format!("link {}", user.username)), 1);
    }
    assert!(events.filtered(&["unlink", "leave"]).is_empty());
    // Links are decided one at a time: a loser is refused by the early checks, before `authenticate`.
    let mut asked = events.filtered(&["authenticate race"]);
    asked.sort();
    let expected: Vec<String> = (0..5)
        .map(|i| format!("authenticate race{i} new=true auth=None"))
        .collect();
    assert_eq!(asked, expected);
}
