//! Two chat nodes in this process on one throwaway `redis-server`, each serving the example's app on its own loopback
//! port: a chat message sent by a client of one node reaches a client of the other over real WebSockets.
//!
//! Without `redis-server` on PATH the tests skip, loudly, unless `EMITTER_REDIS=1` (as `.ci/steps/05-redis.sh` sets
//! it), where a missing server fails them.

use emitter_core::Server;
use emitter_redis::Node;
use emitter_testing::redis::RedisServer;
use emitter_testing::{http_get, joined, linked, redis_or_skip, unlinked, user, RawClient, Receive};
use serde_json::json;

/// One chat node, started as `main` starts it, on a free loopback port.
struct ChatNode {
    server: Server,
    node: Node,
    port: u16,
}

async fn start_node(redis: &RedisServer, node_id: &str) -> ChatNode {
    let server = example_cluster_chat::build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (node, port) = example_cluster_chat::start(&server, &redis.url(), "chat", node_id, listener)
        .await
        .unwrap_or_else(|error| panic!("start node {node_id}: {error}"));
    ChatNode { server, node, port }
}

/// Connects to the node's `/ws`, links as `username` and reads the snapshot up to its own `krmx/linked`.
async fn link(port: u16, username: &str) -> RawClient {
    let mut client = RawClient::connect_to(port, "/ws").await.unwrap();
    client
        .link(username, None)
        .await
        .unwrap_or_else(|reason| panic!("{username} was rejected: {reason}"));
    client.recv_until(&linked(username)).await;
    client
}

#[tokio::test]
async fn a_chat_message_reaches_a_user_on_another_node() {
    let redis = redis_or_skip!();
    let a = start_node(&redis, "node-a").await;
    let b = start_node(&redis, "node-b").await;

    let mut simon = link(a.port, "simon").await;
    let mut lisa = link(b.port, "lisa").await;
    // simon, on node a, hears that lisa linked on node b: one registry for the cluster.
    simon.expect_all(&[joined("lisa"), linked("lisa")]).await;

    // lisa talks on node b; both get it, simon through Redis.
    lisa.send(json!({"type": "chat/message", "payload": "hello from b"}))
        .await;
    let said = json!({"type": "chat/message", "payload": {"username": "lisa", "text": "hello from b"}});
    lisa.expect(said.clone()).await;
    simon.expect(said).await;
    // And back the other way.
    simon
        .send(json!({"type": "chat/message", "payload": "hello from a"}))
        .await;
    let said = json!({"type": "chat/message", "payload": {"username": "simon", "text": "hello from a"}});
    simon.expect(said.clone()).await;
    lisa.expect(said).await;

    // Node a closes: simon is unlinked but stays a user of the cluster, and lisa hears of it.
    let ChatNode { server, node, .. } = a;
    server.close().await.unwrap();
    node.stopped().await;
    lisa.expect(unlinked("simon")).await;
    assert_eq!(b.server.users(), vec![user("simon", false), user("lisa", true)]);
}

#[tokio::test]
async fn health_is_ok_while_the_node_serves() {
    let redis = redis_or_skip!();
    let a = start_node(&redis, "node-a").await;
    let page = http_get(a.port, "/").await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("new WebSocket"), "the chat's page");
    let health = http_get(a.port, "/health").await;
    assert_eq!(health.status_body(), (200, "ok\n"));
    let metrics = http_get(a.port, "/metrics").await;
    assert!(
        metrics.body.contains("\nkrmx_cluster_lease_held 1\n"),
        "a node that holds its lease says so: {}",
        metrics.body
    );
    a.server.close().await.unwrap();
    a.node.stopped().await;
}

/// Closed tabs do not pile up as users of the cluster: an unlinked user leaves after the grace period.
#[test]
fn the_chat_sets_a_grace_period() {
    assert_eq!(
        example_cluster_chat::build().config().grace_period(),
        Some(example_cluster_chat::GRACE_PERIOD)
    );
}
