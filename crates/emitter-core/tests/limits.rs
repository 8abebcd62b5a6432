//! Resource limits, driven through the transport seam with fake connections and paused time.

use std::sync::Arc;
use std::time::Duration;

use emitter_core::transport::{ConnectionId, PushError};
use emitter_core::{Error, Message, Server};
use parking_lot::Mutex;
use serde_json::json;

mod support;

use support::{connect, link_attempt, link_request, listening, send, try_connect};

fn link(server: &Server, id: ConnectionId, username: &str) {
    send(server, id, link_request(username));
}

/// The transport reports that connection `id` closed: its user is unlinked the normal way.
fn disconnect_unlinks(server: &Server, id: ConnectionId, username: &str) {
    server.host().disconnect(id);
    assert!(!server.user(username).unwrap().is_linked);
}

/// Asserts that the host refuses the next connection, for `why`; `because` says what filled the cap.
fn refuses(server: &Server, why: &str, because: &str) {
    assert_eq!(server.host().refusal(), Some(why), "{because}");
    assert!(try_connect(server).is_none(), "{because}");
}

#[tokio::test]
async fn connections_over_the_caps_are_refused() {
    let server = listening(Server::builder().max_connections(3).max_unlinked_connections(2));
    let (a, _) = connect(&server);
    let (_b, _) = connect(&server);
    refuses(
        &server,
        "too many unlinked connections",
        "two unlinked connections fill the unlinked cap",
    );
    link(&server, a, "ann");
    assert_eq!(
        server.host().refusal(),
        None,
        "a linked connection frees an unlinked place"
    );
    let (_c, _) = connect(&server);
    refuses(
        &server,
        "too many connections",
        "three connections fill the connection cap",
    );
    server.host().disconnect(a);
    refuses(
        &server,
        "too many unlinked connections",
        "ann's connection is gone, but two unlinked ones fill that cap again",
    );
    assert!(!server.users()[0].is_linked);
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_stays_unlinked_past_the_deadline_is_closed() {
    let server = listening(Server::builder().link_deadline(Duration::from_millis(200)));
    let (idle, idle_box) = connect(&server);
    let (linked, linked_box) = connect(&server);
    link(&server, linked, "ann");
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!idle_box.closed());
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(idle_box.closed(), "unlinked for 300 ms with a 200 ms deadline");
    assert!(!linked_box.closed(), "a linked connection has no deadline");
    // Messages from a connection the server is closing are ignored.
    link(&server, idle, "late");
    assert!(idle_box.kinds().is_empty());

    // The deadline starts again when the user is unlinked.
    server.unlink("ann").unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!linked_box.closed());
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(linked_box.closed());
}

#[tokio::test(start_paused = true)]
async fn no_deadline_when_it_is_zero() {
    let server = listening(Server::builder().link_deadline(Duration::ZERO));
    let (_, outbox) = connect(&server);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(!outbox.closed());
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_floods_past_its_rate_limit_is_closed() {
    let server = listening(Server::builder().rate_limit(10.0, 3.0));
    let events = Arc::new(Mutex::new(0));
    let e = events.clone();
    server.on_message(move |_, _| *e.lock() += 1);
    let (id, outbox) = link_attempt(&server, "ann"); // one token
    send(&server, id, json!({"type": "app/a"}));
    send(&server, id, json!({"type": "app/b"}));
    assert!(!outbox.closed());
    tokio::time::sleep(Duration::from_millis(100)).await; // one token back
    send(&server, id, json!({"type": "app/c"}));
    assert!(!outbox.closed());
    send(&server, id, json!({"type": "app/d"}));
    assert!(outbox.closed(), "the fifth message within ~100 ms is one too many");
    send(&server, id, json!({"type": "app/e"}));
    assert_eq!(*events.lock(), 3, "a, b and c were handled; d and e were not");
}

#[tokio::test]
async fn send_and_broadcast_report_slow_and_closing_connections() {
    let server = listening(Server::builder().outbound_queue(3));
    let (slow_id, slow) = link_attempt(&server, "slow"); // its own frames, unread: accepted and the snapshot (2 of 3)
                                                         // Joined and linked reach slow through the fan-out log, not its own queue.
    let (_, fine) = link_attempt(&server, "fine");
    let hello = Message::new("app/hello");
    assert_eq!(server.send("slow", &hello), Ok(()), "the third place");
    assert_eq!(server.send("slow", &hello), Err(Error::QueueFull));
    assert!(slow.closed(), "a slow consumer is closed");
    assert_eq!(server.send("slow", &hello), Err(Error::ConnectionClosing));
    let report = server.broadcast(&hello, None).unwrap();
    assert_eq!(report.delivered, 1);
    assert_eq!(report.undelivered, [("slow".to_owned(), PushError::Closed)]);
    assert_eq!(fine.kinds().last().map(String::as_str), Some("app/hello"));
    assert_eq!(
        Error::QueueFull.to_string(),
        "cannot send a message to a user whose connection is not reading (its queue is full)"
    );
    disconnect_unlinks(&server, slow_id, "slow");
}

#[tokio::test]
async fn a_connection_far_behind_the_broadcasts_is_closed() {
    let server = listening(Server::builder().outbound_queue(300));
    let (_, reader) = link_attempt(&server, "reader");
    let (idle_id, idle) = link_attempt(&server, "idle");
    for n in 0..600 {
        server
            .broadcast(&Message::with_payload("app/n", serde_json::json!(n)), None)
            .unwrap();
        if n % 100 == 0 {
            reader.take(); // keeps up
        }
    }
    assert!(
        idle.closed(),
        "600 broadcasts behind with room for 300: a slow consumer"
    );
    assert!(!reader.closed());
    let report = server.broadcast(&Message::new("app/last"), None).unwrap();
    assert_eq!(report.undelivered, [("idle".to_owned(), PushError::Closed)]);
    assert_eq!(report.delivered, 1);
    disconnect_unlinks(&server, idle_id, "idle");
}

#[tokio::test]
async fn deep_json_is_an_invalid_message() {
    let server = listening(Server::builder().max_json_depth(4));
    let (id, outbox) = link_attempt(&server, "ann");
    let ok = r#"{"type":"app/x","payload":[[[1]]]}"#;
    let deep = r#"{"type":"app/x","payload":[[[[1]]]]}"#;
    server.host().receive(id, ok.as_bytes());
    assert!(server.user("ann").unwrap().is_linked);
    server.host().receive(id, deep.as_bytes());
    assert!(
        !server.user("ann").unwrap().is_linked,
        "an invalid message from a linked connection unlinks it"
    );
    server.host().receive(id, deep.as_bytes());
    assert_eq!(outbox.frames().last().unwrap()["payload"]["reason"], "invalid message");
}

#[tokio::test]
async fn usernames_are_bounded_whatever_the_rule() {
    let server = listening(Server::builder().is_valid_username(|_| true));
    let (id, outbox) = connect(&server);
    link(&server, id, &"a".repeat(257));
    assert_eq!(outbox.frames()[0]["payload"]["reason"], "invalid username");
    link(&server, id, &"a".repeat(256));
    assert_eq!(outbox.frames()[1]["type"], "krmx/accepted");
}

/// `max_users` refuses a link that would create a user past the cap, with a clear reason that is counted; users that
/// exist (unlinked ones relinking) always get back in, and a user that leaves makes room.
#[tokio::test]
async fn a_link_that_would_create_a_user_past_max_users_is_refused() {
    let server = listening(Server::builder().max_users(2));
    let (ann, _) = link_attempt(&server, "ann");
    let (_bob, _) = link_attempt(&server, "bob");
    let (cat, cat_outbox) = link_attempt(&server, "cat");
    assert_eq!(
        cat_outbox.take(),
        [json!({"type": "krmx/rejected", "payload": {"reason": "server has too many users"}})]
    );
    assert_eq!(server.users().len(), 2);
    let metrics = server.metrics_text();
    assert!(
        metrics.contains(r#"krmx_rejections_total{reason="too_many_users"} 1"#),
        "{metrics}"
    );
    // Ann's connection goes away: she is unlinked but stays a user, and her relink is not refused.
    disconnect_unlinks(&server, ann, "ann");
    let (_ann_again, ann_outbox) = link_attempt(&server, "ann");
    assert_eq!(ann_outbox.take()[0]["type"], "krmx/accepted");
    // Once a user leaves, there is room for a new one.
    server.kick("bob").unwrap();
    link(&server, cat, "cat");
    assert!(server.user("cat").unwrap().is_linked);
    // The app's own joins are its decision: not limited.
    server.join("dan").unwrap();
    assert_eq!(server.users().len(), 3);
}
