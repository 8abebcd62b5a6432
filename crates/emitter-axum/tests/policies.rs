//! The production policies over real WebSocket connections on loopback: taking over a linked user
//! (`LinkPolicy::Replace`), the grace period, and messages kept for unlinked users.

use std::time::Duration;

use emitter_core::config::{KeepLimits, LinkPolicy};
use emitter_core::{Message, Server};
use emitter_testing::*;
use serde_json::json;

fn message(tag: &str) -> serde_json::Value {
    json!({"type": "app/note", "payload": tag})
}

fn note(tag: &str) -> Message {
    Message::with_payload("app/note", tag)
}

/// A server with a grace period of `grace` on which alice's connection closed: bob, linked too, has seen her unlink.
async fn alice_gone_within(grace: Duration) -> (Server, Recorder, u16, RawClient) {
    let (server, recorder, port) = start(Server::builder().grace_period(grace)).await;
    let (mut bob, alice) = RawClient::link_pair(port, "bob", "alice").await;
    alice.close().await;
    bob.expect(unlinked("alice")).await;
    (server, recorder, port, bob)
}

#[tokio::test]
async fn replace_lets_a_new_connection_take_over_a_linked_user() {
    let (_server, recorder, port) = start(Server::builder().link_policy(LinkPolicy::Replace)).await;
    let (_bob, _alice) = RawClient::take_over_alice(port).await;
    recorder.wait_for("link alice").await;
    assert_eq!(recorder.count("link alice"), 2);
    assert_eq!(recorder.count("unlink alice"), 1);
    assert!(!recorder.contains("leave alice"));
}

#[tokio::test]
async fn reject_stays_the_default() {
    let (server, _recorder, port) = start_default().await;
    assert_eq!(server.config().link_policy(), LinkPolicy::Reject);
    let _alice = RawClient::link_and_settle(port, "alice").await;
    let refused = RawClient::link_with(port, "alice", None).await.err();
    assert_eq!(refused.as_deref(), Some("user alice is already linked to a connection"));
}

#[tokio::test]
async fn an_unlinked_user_leaves_when_its_grace_period_is_over() {
    let (server, recorder, _port, mut bob) = alice_gone_within(Duration::from_millis(200)).await;
    // No relink within the period: alice leaves, as if kicked.
    bob.expect(left("alice")).await;
    recorder.wait_for("leave alice").await;
    assert_eq!(server.users(), vec![user("bob", true)]);
}

#[tokio::test]
async fn a_relink_within_the_grace_period_keeps_the_user() {
    let grace = Duration::from_millis(300);
    let (server, _recorder, port, mut bob) = alice_gone_within(grace).await;
    let _alice = RawClient::link_as(port, "alice").await;
    bob.expect(linked("alice")).await;
    // Past the first unlink's period, alice is still there: the next thing bob gets is a marker sent now.
    tokio::time::sleep(grace * 2).await;
    server.broadcast(&marker("after"), None).unwrap();
    bob.expect(marker_json("after")).await;
    assert_eq!(server.users(), vec![user("bob", true), user("alice", true)]);
}

#[tokio::test]
async fn messages_for_an_unlinked_user_wait_for_its_relink() {
    let limits = KeepLimits {
        messages: 3,
        bytes: 1 << 20,
        age: Duration::from_secs(60),
    };
    let (server, _recorder, port) = start(Server::builder().keep_unlinked(limits)).await;
    let (mut bob, mut alice) = RawClient::link_pair(port, "bob", "alice").await;
    alice.send(json!({"type": "krmx/unlink"})).await;
    alice.expect(unlinked("alice")).await;
    bob.expect(unlinked("alice")).await;
    // A send to alice now succeeds, and broadcasts she would have got are kept too; four is one over the limit.
    server.send("alice", &note("one")).unwrap();
    server.broadcast(&note("two"), None).unwrap();
    server.broadcast(&note("three"), Some("bob")).unwrap();
    server.send("alice", &note("four")).unwrap();
    bob.expect(message("two")).await;
    assert_eq!(server.stats().unlinked_dropped, 1, "the oldest went past the limit");
    // She relinks: her snapshot, then what was kept, oldest first, then anything newer.
    alice.link("alice", None).await.unwrap();
    alice.expect_all(&snapshot(&["bob", "alice"])).await;
    alice
        .expect_all(&[message("two"), message("three"), message("four")])
        .await;
    server.broadcast(&note("five"), None).unwrap();
    alice.expect(message("five")).await;
    // Kept messages are delivered once.
    alice.send(json!({"type": "krmx/unlink"})).await;
    alice.expect(unlinked("alice")).await;
    alice.link("alice", None).await.unwrap();
    alice.expect_all(&snapshot(&["bob", "alice"])).await;
    server.broadcast(&marker("end"), None).unwrap();
    alice.expect(marker_json("end")).await;
}

#[tokio::test]
async fn without_keeping_a_send_to_an_unlinked_user_still_fails() {
    let (server, _recorder, port) = start_default().await;
    let (_bob, mut alice) = RawClient::link_pair(port, "bob", "alice").await;
    alice.send(json!({"type": "krmx/unlink"})).await;
    alice.expect(unlinked("alice")).await;
    assert_eq!(
        server.send("alice", &note("lost")).unwrap_err().to_string(),
        "cannot send a message to a user that is not linked to a connection"
    );
}
