//! The state machine without sockets: a fake transport records what each connection would receive.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use emitter_core::transport::ConnectionId;
use emitter_core::{Error, Event, Message, Server, Status, User, UserRef};
use parking_lot::Mutex;
use serde_json::json;

mod support;

use support::{connect, kinds, link_request, listening, record, send, Outbox};

fn link(server: &Server, username: &str) -> (ConnectionId, Outbox) {
    let (id, outbox) = connect(server);
    send(server, id, link_request(username));
    assert_eq!(outbox.frames()[0], json!({"type": "krmx/accepted"}), "{username}");
    (id, outbox)
}

/// The server's users' names, in its order.
fn usernames(server: &Server) -> Vec<String> {
    server.users().into_iter().map(|u| u.username).collect()
}

fn user(username: &str, is_linked: bool) -> User {
    User {
        username: username.to_owned(),
        is_linked,
    }
}

#[test]
fn every_method_refuses_while_initializing_with_the_reference_wording() {
    let server = Server::new();
    let hello = Message::new("custom/hello");
    let cases: [(Result<(), Error>, &str); 5] = [
        (
            server.send("simon", &hello),
            "cannot send a message when the server is initializing",
        ),
        (
            server.broadcast(&hello, None).map(drop),
            "cannot broadcast a message when the server is initializing",
        ),
        (
            server.kick("simon"),
            "cannot kick a user when the server is initializing",
        ),
        (
            server.unlink("simon"),
            "cannot unlink a connection from a user when the server is initializing",
        ),
        (
            server.join("simon"),
            "cannot join a user when the server is initializing",
        ),
    ];
    for (result, wording) in cases {
        assert_eq!(result.unwrap_err().to_string(), wording);
    }
    assert_eq!(server.host().connect().err(), Some("the server is not listening"));
}

#[tokio::test]
async fn lifecycle_moves_forward_refuses_repeated_starts_and_closes_once() {
    let server = Server::new();
    assert_eq!(server.status(), Status::Initializing);
    let closing = server.close().await.unwrap_err();
    assert_eq!(closing.to_string(), "cannot close when the server is initializing");
    server.host().start().unwrap();
    assert_eq!(server.status(), Status::Starting);
    let port = server.wait_for_listen();
    server.host().listening(77).unwrap();
    assert_eq!(port.await.unwrap(), 77);
    assert_eq!(
        server.host().start().unwrap_err().to_string(),
        "cannot start listening when the server is listening"
    );
    let listener_ran = Arc::new(AtomicBool::new(false));
    let ran = listener_ran.clone();
    server.on_close(move |_| ran.store(true, Ordering::SeqCst));
    server.close().await.unwrap();
    assert!(
        listener_ran.load(Ordering::SeqCst),
        "close() resolves after the close listeners ran"
    );
    assert_eq!(server.status(), Status::Closed);
    // Closing again waits for the same close, which is over: Ok, and no second `close` event.
    listener_ran.store(false, Ordering::SeqCst);
    server.close().await.unwrap();
    assert!(!listener_ran.load(Ordering::SeqCst));
}

#[test]
fn send_fails_in_join_and_works_in_link() {
    let server = listening(Server::builder());
    let results: Arc<Mutex<Vec<String>>> = Arc::default();
    let r = results.clone();
    server.on_join(move |u| {
        let outcome = u.send(&Message::new("custom/welcome-on-join"));
        r.lock().push(format!("{outcome:?}"));
    });
    server.on_link(|u| u.send(&Message::new("custom/welcome-on-link")).unwrap());
    let (_, outbox) = link(&server, "simon");
    assert_eq!(*results.lock(), ["Err(SendToUnlinkedUser)"]);
    assert_eq!(
        kinds(&outbox.take()),
        [
            "krmx/accepted",
            "krmx/joined simon",
            "krmx/linked simon",
            "custom/welcome-on-link"
        ]
    );
}

#[test]
fn listeners_see_the_state_of_their_event() {
    let server = listening(Server::builder());
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    for event in ["join", "link", "unlink", "leave"] {
        let seen = seen.clone();
        let listener = move |u: UserRef<'_>| {
            seen.lock().push(format!("{event} {u} {:?}", u.server().users()));
        };
        let _ = match event {
            "join" => server.on_join(listener),
            "link" => server.on_link(listener),
            "unlink" => server.on_unlink(listener),
            _ => server.on_leave(listener),
        };
    }
    let (id, _) = link(&server, "ann");
    send(&server, id, json!({"type": "krmx/leave"}));
    let seen = seen.lock();
    assert_eq!(seen[0], format!("join ann {:?}", vec![user("ann", false)]));
    assert_eq!(seen[1], format!("link ann {:?}", vec![user("ann", true)]));
    assert_eq!(seen[2], format!("unlink ann {:?}", vec![user("ann", false)]));
    assert_eq!(seen[3], format!("leave ann {:?}", Vec::<User>::new()));
}

#[test]
fn a_join_listener_that_kicks_leaves_everything_consistent() {
    let server = listening(Server::builder());
    let events = record(&server);
    server.on_join(|u| {
        if u == "kickme" {
            u.server().kick(&u).unwrap();
        }
    });
    let (_, watcher) = link(&server, "watcher");
    watcher.take();
    let (_, bystander) = connect(&server);
    let (kick_id, kick_box) = connect(&server);
    send(&server, kick_id, link_request("kickme"));
    assert_eq!(kinds(&kick_box.take()), ["krmx/accepted"]);
    assert_eq!(server.users(), [user("watcher", true)]);
    assert_eq!(kinds(&watcher.take()), ["krmx/joined kickme", "krmx/left kickme"]);
    assert_eq!(events.lock()[3..], ["authenticate", "join kickme", "leave kickme"]);
    assert!(bystander.take().is_empty(), "an unlinked connection hears nothing");
    // The connection is free to link again.
    send(&server, kick_id, link_request("other"));
    assert_eq!(kick_box.take()[0], json!({"type": "krmx/accepted"}));
}

#[test]
fn kicking_from_an_unlink_listener_during_a_leave_leaves_once() {
    let server = listening(Server::builder());
    let events = record(&server);
    server.on_unlink(|u| {
        let _ = u.server().kick(&u);
    });
    let (id, _) = link(&server, "ann");
    send(&server, id, json!({"type": "krmx/leave"}));
    let events = events.lock();
    assert_eq!(events.iter().filter(|e| *e == "leave ann").count(), 1, "{events:?}");
    assert!(server.users().is_empty());
}

#[test]
fn join_order_is_kept_across_relinks_and_rejoins() {
    let server = listening(Server::builder());
    let (a, _) = link(&server, "ann");
    let (_b, _) = link(&server, "bob");
    let (_c, _) = link(&server, "cat");
    server.host().disconnect(a);
    let _ = link(&server, "ann");
    assert_eq!(usernames(&server), ["ann", "bob", "cat"]);
    server.kick("bob").unwrap();
    let (_, late) = link(&server, "bob");
    assert_eq!(usernames(&server), ["ann", "cat", "bob"]);
    assert_eq!(
        kinds(&late.take()),
        [
            "krmx/accepted",
            "krmx/joined ann",
            "krmx/linked ann",
            "krmx/joined cat",
            "krmx/linked cat",
            "krmx/joined bob",
            "krmx/linked bob"
        ]
    );
}

#[test]
fn once_and_predicates_and_unsubscribe() {
    let server = listening(Server::builder());
    let fired: Arc<Mutex<Vec<String>>> = Arc::default();
    let f = fired.clone();
    server.once_join(move |u| f.lock().push(format!("once {u}")));
    let f = fired.clone();
    let when = server.once_join_when(|u| u.starts_with('b'), move |u| f.lock().push(format!("when {u}")));
    let f = fired.clone();
    let gone = server.on_join(move |u| f.lock().push(format!("gone {u}")));
    gone.unsubscribe();
    assert!(when.is_active());
    for name in ["ann", "bob", "bea"] {
        server.join(name).unwrap();
    }
    assert!(!when.is_active());
    assert_eq!(*fired.lock(), ["once ann", "when bob"]);
}

#[test]
fn any_listeners_run_first_and_panics_are_isolated() {
    let server = listening(Server::builder());
    let order: Arc<Mutex<Vec<&str>>> = Arc::default();
    let o = order.clone();
    server.on_join(move |_| o.lock().push("join 1"));
    server.on_join(|_| panic!("listener bug"));
    let o = order.clone();
    server.on_join(move |_| o.lock().push("join 3"));
    let o = order.clone();
    server.on_any(move |_, _| o.lock().push("any"));
    server.join("ann").unwrap();
    server.join("bob").unwrap();
    assert_eq!(*order.lock(), ["any", "join 1", "join 3", "any", "join 1", "join 3"]);
    assert_eq!(server.users().len(), 2);
}

#[tokio::test]
async fn wait_for_registers_when_called() {
    let server = listening(Server::builder());
    let join = server.wait_for_join_when(|u| u == "bob");
    let message = server.wait_for_message();
    let any = server.wait_for_event(|e| match e {
        Event::Link { username } => Some(username.to_string()),
        _ => None,
    });
    server.join("ann").unwrap();
    server.join("bob").unwrap();
    let (id, _) = link(&server, "cat");
    send(&server, id, json!({"type": "x/y", "payload": 1}));
    assert_eq!(join.await.unwrap(), "bob");
    assert_eq!(any.await.unwrap(), "cat");
    let (from, message) = message.await.unwrap();
    assert_eq!((from.as_str(), message.kind.as_str()), ("cat", "x/y"));
}

#[tokio::test]
async fn a_dropped_wait_for_leaves_no_listener() {
    let server = listening(Server::builder());
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    server.on_join(move |_| {
        c.fetch_add(1, Ordering::SeqCst);
    });
    drop(server.wait_for_join());
    server.join("ann").unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_listener_may_close_the_server() {
    let server = listening(Server::builder());
    let events = record(&server);
    let s = server.clone();
    server.on_message(move |_, _| drop(s.close()));
    let (a, a_box) = link(&server, "ann");
    let (b, b_box) = link(&server, "bob");
    a_box.take();
    b_box.take();
    send(&server, a, json!({"type": "app/close"}));
    assert_eq!(
        kinds(&b_box.take()),
        [
            "krmx/unlinked ann",
            "krmx/left ann",
            "krmx/unlinked bob",
            "krmx/left bob"
        ]
    );
    assert!(b_box.closed());
    assert_eq!(
        server.status(),
        Status::Closing,
        "closing waits for the connections to go"
    );
    let closed = server.wait_for_close();
    for id in [a, b] {
        server.host().disconnect(id);
    }
    closed.await.unwrap();
    assert_eq!(server.status(), Status::Closed);
    let tail: Vec<String> = events.lock().iter().rev().take(5).rev().cloned().collect();
    assert_eq!(tail, ["unlink ann", "leave ann", "unlink bob", "leave bob", "close"]);
}

#[tokio::test(start_paused = true)]
async fn async_auth_all_must_succeed_and_the_timeout_always_wins() {
    let server = listening(Server::builder().auth_timeout(Duration::from_millis(500)));
    let dropped = Arc::new(AtomicBool::new(false));
    let d = dropped.clone();
    server.on_authenticate(move |u, _, ctx| {
        let name = u.username().to_owned();
        ctx.mark_async(async { Ok::<(), String>(()) });
        let d = d.clone();
        ctx.mark_async(async move {
            struct Flag(Arc<AtomicBool>);
            impl Drop for Flag {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let _flag = Flag(d);
            match name.as_str() {
                "never" => std::future::pending::<()>().await,
                "failing" => return Err("no entry".to_owned()),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            Ok(())
        });
    });
    let (never, never_box) = connect(&server);
    send(&server, never, link_request("never"));
    let (ok, ok_box) = connect(&server);
    send(&server, ok, link_request("fine"));
    let (fail, fail_box) = connect(&server);
    send(&server, fail, link_request("failing"));
    server.wait_for_link().await.unwrap();
    assert_eq!(kinds(&ok_box.take())[0], "krmx/accepted");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        never_box.take(),
        [json!({"type":"krmx/rejected","payload":{"reason":"authentication timeout"}})]
    );
    assert_eq!(
        fail_box.take(),
        [json!({"type":"krmx/rejected","payload":{"reason":"no entry"}})]
    );
    assert!(dropped.load(Ordering::SeqCst), "the pending future was cancelled");
    assert_eq!(server.users(), [user("fine", true)]);
}

#[tokio::test(start_paused = true)]
async fn a_sync_reject_answers_at_once_and_never_runs_the_async_work() {
    let server = listening(Server::builder());
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    server.on_authenticate(|_, _, ctx| ctx.reject("immediately rejected"));
    server.on_authenticate(move |_, _, ctx| {
        let r = r.clone();
        ctx.mark_async(async move {
            r.store(true, Ordering::SeqCst);
            Ok::<(), String>(())
        });
        ctx.reject("this should not show up");
    });
    let (id, outbox) = connect(&server);
    send(&server, id, link_request("marjolein"));
    assert_eq!(
        outbox.take(),
        [json!({"type":"krmx/rejected","payload":{"reason":"immediately rejected"}})]
    );
    tokio::task::yield_now().await;
    assert!(!ran.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn a_reject_from_async_work_is_final_and_later_calls_change_nothing() {
    let server = listening(Server::builder().auth_timeout(Duration::from_millis(300)));
    server.on_authenticate(|_, _, ctx| {
        let ctx2 = ctx.clone();
        ctx.mark_async(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            ctx2.reject("denied by app");
            ctx2.reject("second reason");
            Ok::<(), String>(())
        });
    });
    let (id, outbox) = connect(&server);
    send(&server, id, link_request("deny"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        outbox.take(),
        [json!({"type":"krmx/rejected","payload":{"reason":"denied by app"}})]
    );
    assert!(server.users().is_empty());
}

#[tokio::test(start_paused = true)]
async fn close_drops_pending_link_attempts() {
    let server = listening(Server::builder());
    let events = record(&server);
    server.on_authenticate(|_, _, ctx| {
        ctx.mark_async(async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<(), String>(())
        })
    });
    let (id, outbox) = connect(&server);
    send(&server, id, link_request("slow"));
    let closed = server.close();
    server.host().disconnect(id);
    closed.await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(outbox.take().is_empty());
    assert_eq!(events.lock().last().map(String::as_str), Some("close"));
    assert!(!events.lock().iter().any(|e| e.starts_with("join")));
}
