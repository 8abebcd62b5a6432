//! The policy endpoint's rows of the contract, over real WebSocket connections on loopback: a new link takes a linked
//! user over, an unlinked user leaves after the grace period, and messages for an unlinked user wait for its relink.

use emitter_core::Server;
use emitter_testing::{left, linked, snapshot, unlinked, RawClient, Receive};
use example_conformance::GRACE_PERIOD;
use serde_json::json;
use tokio::net::TcpListener;

async fn start() -> (Server, u16) {
    let server = example_conformance::build_policy();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = emitter_axum::listen_on(&server, listener).await.unwrap();
    (server, port)
}

fn broadcasted(from: &str, payload: serde_json::Value) -> serde_json::Value {
    json!({"type": "test/broadcasted", "payload": {"from": from, "payload": payload}})
}

#[tokio::test]
async fn a_second_link_takes_the_user_over() {
    let (server, port) = start().await;
    let (_bob, _alice) = RawClient::take_over_alice(port).await;
    server.close().await.unwrap();
}

#[tokio::test]
async fn an_unlinked_user_leaves_after_the_grace_period() {
    let (server, port) = start().await;
    let (mut bob, alice) = RawClient::link_pair(port, "bob", "alice").await;
    let left_at = server.wait_for_leave_when(|name| name == "alice");
    let closed = std::time::Instant::now();
    alice.close().await;
    bob.expect(unlinked("alice")).await;
    bob.expect(left("alice")).await;
    left_at.await.unwrap();
    assert!(closed.elapsed() >= GRACE_PERIOD);
    server.close().await.unwrap();
}

#[tokio::test]
async fn broadcasts_for_an_unlinked_user_wait_for_its_relink() {
    let (server, port) = start().await;
    let (mut bob, mut alice) = RawClient::link_pair(port, "bob", "alice").await;
    alice.send(json!({"type": "krmx/unlink"})).await;
    alice.expect(unlinked("alice")).await;
    bob.expect(unlinked("alice")).await;
    for i in 0..3 {
        bob.send(json!({"type": "test/broadcast", "payload": i})).await;
        bob.expect(broadcasted("bob", json!(i))).await;
    }
    alice.link("alice", None).await.unwrap();
    alice.expect_all(&snapshot(&["bob", "alice"])).await;
    for i in 0..3 {
        alice.expect(broadcasted("bob", json!(i))).await;
    }
    bob.expect(linked("alice")).await;
    bob.send(json!({"type": "test/broadcast", "payload": "live"})).await;
    alice.expect(broadcasted("bob", json!("live"))).await;
    server.close().await.unwrap();
}
