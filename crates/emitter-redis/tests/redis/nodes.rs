//! Servers as nodes of one cluster, in one process: each node a real `emitter_core::Server` served over WebSocket on
//! its own loopback port, all of them on one real Redis. Clients connect to whichever node they like and must see one
//! server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use emitter_core::{Error, Message, Server};
use emitter_redis::{Cluster, Node, Options};
use emitter_testing::{joined, left, linked, marker, marker_json, snapshot, unlinked, user, RawClient, Receive};
use serde_json::json;

use crate::support::options;
use emitter_testing::redis::RedisServer;
use emitter_testing::redis_or_skip;

/// One node: its server, the port it serves on, and the node handle.
struct TestNode {
    server: Server,
    port: u16,
    node: Node,
}

async fn start_node(redis: &RedisServer, cluster: &str, id: &str, options: Options) -> TestNode {
    start_node_with(redis, cluster, id, options, Server::new()).await
}

async fn start_node_with(redis: &RedisServer, cluster: &str, id: &str, options: Options, server: Server) -> TestNode {
    let handle = Cluster::connect(&redis.url(), cluster, options).await.expect("connect");
    let node = Node::start(&server, handle, id).await.expect("start the node");
    let port = emitter_testing::listen(&server).await;
    TestNode { server, port, node }
}

/// Nodes `a` and `b` of cluster `cluster`, each a plain server.
async fn two_nodes(redis: &RedisServer, cluster: &str) -> (TestNode, TestNode) {
    let a = start_node(redis, cluster, "a", options()).await;
    let b = start_node(redis, cluster, "b", options()).await;
    (a, b)
}

/// Waits until `check` holds, polling: for state that no client or listener on this node is told of (another node's
/// `users()` catching up). Bounded like every wait.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + emitter_testing::TIMEOUT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A node in step applies the entries its notifications carry: another node's links reach its clients without one
/// read of the log (each read costs Redis, per node and per batch of changes).
#[tokio::test]
async fn a_node_in_step_applies_what_its_notifications_carry_without_reading_the_log() {
    let redis = redis_or_skip!();
    // No poll during the test: a poll that read the head just before a notification came would announce its seq
    // first, and that catch-up reads.
    let quiet = Options {
        poll_interval: Duration::from_secs(3600),
        ..options()
    };
    let a = start_node(&redis, "notified", "a", quiet.clone()).await;
    let b = start_node(&redis, "notified", "b", quiet).await;
    let mut bob = RawClient::link_as(b.port, "bob").await;
    bob.expect_all(&snapshot(&["bob"])).await;
    let reads = b.node.cluster().stats().log_reads;
    let mut crowd = Vec::new();
    for i in 0..20 {
        let name = format!("u{i}");
        crowd.push(RawClient::link_and_settle(a.port, &name).await);
        bob.expect_all(&[joined(&name), linked(&name)]).await;
    }
    assert_eq!(
        b.node.cluster().stats().log_reads,
        reads,
        "node b read the log for entries its notifications carried"
    );
}

#[tokio::test]
async fn nodes_share_one_set_of_users_in_one_order() {
    let redis = redis_or_skip!();
    let (a, b) = two_nodes(&redis, "share").await;
    let mut alice = RawClient::link_and_settle(a.port, "alice").await;
    let mut bob = RawClient::link_as(b.port, "bob").await;
    // bob's snapshot on node b holds alice, who linked on node a, then bob himself.
    bob.expect_all(&snapshot(&["alice", "bob"])).await;
    alice.expect_all(&[joined("bob"), linked("bob")]).await;
    let both = vec![user("alice", true), user("bob", true)];
    assert_eq!(a.server.users(), both);
    eventually("node b lists both users", || b.server.users() == both).await;
}

#[tokio::test]
async fn a_user_is_linked_on_one_node_at_a_time() {
    let redis = redis_or_skip!();
    let (a, b) = two_nodes(&redis, "exclusive").await;
    let _alice = RawClient::link_and_settle(a.port, "alice").await;
    let refused = RawClient::link_with(b.port, "alice", None).await.err();
    assert_eq!(refused.as_deref(), Some("user alice is already linked to a connection"));

    // Many connections on both nodes race for one new user: exactly one wins.
    let attempts = (0..16).map(|i| {
        let port = if i % 2 == 0 { a.port } else { b.port };
        tokio::spawn(async move { RawClient::link_with(port, "carol", None).await })
    });
    let mut winners = Vec::new();
    for attempt in attempts {
        if let Ok(client) = attempt.await.unwrap() {
            winners.push(client);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one connection links carol");
}

#[tokio::test]
async fn sends_and_broadcasts_reach_users_on_other_nodes() {
    let redis = redis_or_skip!();
    let (a, b) = two_nodes(&redis, "messages").await;
    let (mut alice, mut bob) = RawClient::link_pair_on((a.port, "alice"), (b.port, "bob")).await;
    eventually("node a sees bob linked", || {
        a.server.user("bob").is_some_and(|u| u.is_linked)
    })
    .await;

    // From node a to bob on node b, in the order node a sent them.
    a.server.send("bob", &marker("one")).unwrap();
    let report = a.server.broadcast(&marker("two"), Some("alice")).unwrap();
    assert_eq!(report.delivered, 1, "bob counts as a recipient on another node");
    a.server.send("bob", &marker("three")).unwrap();
    bob.expect_all(&[marker_json("one"), marker_json("two"), marker_json("three")])
        .await;
    // A broadcast from node b reaches alice on node a, and skips bob.
    b.server.broadcast(&marker("four"), Some("bob")).unwrap();
    alice.expect(marker_json("four")).await;
    b.server.send("bob", &marker("five")).unwrap();
    bob.expect(marker_json("five")).await;
}

#[tokio::test]
async fn a_message_never_overtakes_the_membership_change_before_it() {
    let redis = redis_or_skip!();
    let (a, b) = two_nodes(&redis, "overtake").await;
    // Every link on node a is followed at once by a broadcast; bob on node b must see each krmx/linked first.
    a.server.on_link(|u| {
        let _ = u
            .server()
            .broadcast(&Message::with_payload("test/welcome", u.username()), None);
    });
    let mut bob = RawClient::link_and_settle(b.port, "bob").await;
    let mut clients = Vec::new();
    for i in 0..10 {
        let name = format!("user{i}");
        clients.push(RawClient::link_as(a.port, &name).await);
        bob.expect_all(&[
            joined(&name),
            linked(&name),
            json!({"type": "test/welcome", "payload": name}),
        ])
        .await;
    }
}

#[tokio::test]
async fn a_user_relinks_on_another_node_after_its_connection_drops() {
    let redis = redis_or_skip!();
    let (a, b) = two_nodes(&redis, "relink").await;
    let (links_a, links_b) = (count_links(&a.server), count_links(&b.server));
    let (mut bob, alice) = RawClient::link_pair_on((b.port, "bob"), (a.port, "alice")).await;
    alice.close().await;
    bob.expect(unlinked("alice")).await;
    let mut alice = RawClient::link_as(b.port, "alice").await;
    alice.expect_all(&snapshot(&["bob", "alice"])).await;
    bob.expect(linked("alice")).await;
    // Listeners ran once per link, on the node the link was made on.
    assert_eq!(links_a.load(Ordering::SeqCst), 1);
    assert_eq!(links_b.load(Ordering::SeqCst), 2);
}

fn count_links(server: &Server) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    server.on_link(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    count
}

#[tokio::test]
async fn server_methods_act_on_the_whole_cluster() {
    let redis = redis_or_skip!();
    let (a, b) = two_nodes(&redis, "methods").await;
    let (mut alice, mut bob) = RawClient::link_pair_on((a.port, "alice"), (b.port, "bob")).await;

    // Node b kicks alice, who is linked on node a: her connection hears of its unlink and its leave.
    b.server.kick("alice").unwrap();
    alice.expect_all(&[unlinked("alice"), left("alice")]).await;
    bob.expect_all(&[unlinked("alice"), left("alice")]).await;
    // The errors read as on one server, as far as the node's view tells (the node applied what its clients heard).
    assert_eq!(a.server.kick("alice"), Err(Error::KickUnknownUser));
    // A method's change is queued: its effect shows once it is ordered and applied, as its event says.
    a.server.join("dave").unwrap();
    bob.expect(joined("dave")).await;
    assert_eq!(b.server.join("dave"), Err(Error::JoinExistingUser));
    eventually("node a applied its join", || a.server.user("dave").is_some()).await;
    assert_eq!(a.server.unlink("dave"), Err(Error::UnlinkUnlinkedUser));
    // Node a unlinks bob, who is linked on node b; his connection stays open and links again.
    a.server.unlink("bob").unwrap();
    bob.expect(unlinked("bob")).await;
    bob.link("bob", None).await.unwrap();
}

#[tokio::test]
async fn a_closing_node_unlinks_only_its_own_users() {
    let redis = redis_or_skip!();
    let (a, b) = two_nodes(&redis, "closing").await;
    let (mut alice, mut bob) = RawClient::link_pair_on((a.port, "alice"), (b.port, "bob")).await;
    let TestNode { server, node, .. } = a;
    server.close().await.unwrap();
    node.stopped().await;
    alice.expect(unlinked("alice")).await;
    alice.expect_closed().await;
    bob.expect(unlinked("alice")).await;
    // alice stays a user of the cluster, and can link again on node b.
    b.server.send("bob", &marker("after")).unwrap();
    bob.expect(marker_json("after")).await;
    assert_eq!(b.server.users(), vec![user("alice", false), user("bob", true)]);
    let _alice = RawClient::link_as(b.port, "alice").await;
    bob.expect(linked("alice")).await;
}

#[tokio::test]
async fn replace_takes_a_user_over_from_another_node() {
    let redis = redis_or_skip!();
    let replacing = || {
        Server::builder()
            .link_policy(emitter_core::config::LinkPolicy::Replace)
            .build()
    };
    let a = start_node_with(&redis, "replace", "a", options(), replacing()).await;
    let b = start_node_with(&redis, "replace", "b", options(), replacing()).await;
    let (mut bob, mut old) = RawClient::link_pair_on((b.port, "bob"), (a.port, "alice")).await;
    // alice links again on node b: the cluster unlinks her old link on node a in the same step.
    let mut new = RawClient::link_as(b.port, "alice").await;
    new.expect_all(&snapshot(&["bob", "alice"])).await;
    old.expect(unlinked("alice")).await;
    old.expect_closed().await;
    bob.expect_all(&[unlinked("alice"), linked("alice")]).await;
    assert_eq!(b.server.users(), vec![user("bob", true), user("alice", true)]);
}

#[tokio::test]
async fn the_grace_period_outlives_the_node_that_unlinked_the_user() {
    let redis = redis_or_skip!();
    let options = Options {
        reap_interval: Some(Duration::from_millis(100)),
        ..options()
    };
    let grace = Duration::from_millis(300);
    let graceful = || Server::builder().grace_period(grace).build();
    let a = start_node_with(&redis, "grace", "a", options.clone(), graceful()).await;
    let b = start_node_with(&redis, "grace", "b", options, graceful()).await;
    let (mut bob, _alice) = RawClient::link_pair_on((b.port, "bob"), (a.port, "alice")).await;
    // Node a closes (unlinking alice) and is gone before her period is over: node b's reaper makes her leave. The
    // close runs beside the reads, so that each frame is timed as it arrives (a close may take up to its drain
    // deadline, longer than the grace period).
    let TestNode { server, node, .. } = a;
    let closing = tokio::spawn(async move {
        server.close().await.unwrap();
        node.stopped().await;
    });
    bob.expect(unlinked("alice")).await;
    let unlinked_at = Instant::now();
    bob.expect(left("alice")).await;
    closing.await.unwrap();
    assert!(
        unlinked_at.elapsed() >= grace / 2,
        "left after {:?}",
        unlinked_at.elapsed()
    );
    assert_eq!(b.server.users(), vec![user("bob", true)]);
}

#[tokio::test]
async fn messages_kept_for_an_unlinked_user_wait_on_whichever_node_it_relinks_on() {
    let redis = redis_or_skip!();
    let limits = emitter_core::config::KeepLimits {
        messages: 100,
        bytes: 1 << 20,
        age: Duration::from_secs(60),
    };
    let keeping = || Server::builder().keep_unlinked(limits).build();
    let a = start_node_with(&redis, "kept", "a", options(), keeping()).await;
    let b = start_node_with(&redis, "kept", "b", options(), keeping()).await;
    let c = start_node_with(&redis, "kept", "c", options(), keeping()).await;
    let mut bob = RawClient::link_and_settle(b.port, "bob").await;
    let mut carol = RawClient::link_and_settle(c.port, "carol").await;
    bob.expect_all(&[joined("carol"), linked("carol")]).await;
    let alice = RawClient::link_and_settle(a.port, "alice").await;
    bob.expect_all(&[joined("alice"), linked("alice")]).await;
    carol.expect_all(&[joined("alice"), linked("alice")]).await;
    alice.close().await;
    bob.expect(unlinked("alice")).await;
    carol.expect(unlinked("alice")).await;

    // Sent on node b while alice is linked nowhere: every node keeps them for her, in node b's order.
    eventually("node b saw alice unlinked", || {
        b.server.user("alice").is_some_and(|u| !u.is_linked)
    })
    .await;
    b.server.send("alice", &marker("sent on b")).unwrap();
    b.server.broadcast(&marker("broadcast on b"), Some("bob")).unwrap();
    // carol (on node c) gets node b's broadcast after node c has kept the send before it.
    carol.expect(marker_json("broadcast on b")).await;
    c.server.send("alice", &marker("sent on c")).unwrap();

    // alice relinks on node c, which neither unlinked her nor sent the first two: they come right after her snapshot.
    let mut alice = RawClient::link_as(c.port, "alice").await;
    let kept = [
        marker_json("sent on b"),
        marker_json("broadcast on b"),
        marker_json("sent on c"),
    ];
    let everyone = snapshot(&["bob", "carol", "alice"]);
    alice.expect_all(&everyone).await;
    alice.expect_all(&kept).await;
    bob.expect(linked("alice")).await;

    // The other nodes dropped their copies when she linked: relinking on node a brings nothing old.
    alice.close().await;
    bob.expect(unlinked("alice")).await;
    eventually("node a saw alice unlinked", || {
        a.server.user("alice").is_some_and(|u| !u.is_linked)
    })
    .await;
    let mut alice = RawClient::link_as(a.port, "alice").await;
    alice.expect_all(&everyone).await;
    a.server.send("alice", &marker("fresh")).unwrap();
    alice.expect(marker_json("fresh")).await;
    bob.expect(linked("alice")).await;
}

/// The value of one sample (`name` with its labels, as written) in a `/metrics` scrape.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Serves a node with the Krmx endpoint, `/health` and `/metrics` on one loopback port.
async fn serve_node_with_ops(redis: &RedisServer, cluster: &str, lease: Duration) -> (Server, Node, u16) {
    serve_node_with_ops_as(redis, cluster, "a", lease).await
}

async fn serve_node_with_ops_as(redis: &RedisServer, cluster: &str, id: &str, lease: Duration) -> (Server, Node, u16) {
    let options = Options { lease, ..options() };
    let server = Server::new();
    let handle = Cluster::connect(&redis.url(), cluster, options).await.expect("connect");
    let node = Node::start(&server, handle, id).await.expect("start the node");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = emitter_axum::router(&server)
        .merge(emitter_axum::health_route(&server))
        .merge(emitter_axum::metrics_route(&server));
    let port = emitter_axum::serve(&server, listener, app).await.unwrap();
    (server, node, port)
}

/// Scrapes until the renewal histogram has a sample: renewals come every third of a lease.
async fn scrape_after_a_renewal(port: u16) -> String {
    let deadline = Instant::now() + emitter_testing::TIMEOUT;
    loop {
        let text = emitter_testing::http_get(port, "/metrics").await.body;
        if sample(&text, "krmx_cluster_renew_duration_seconds_count").unwrap_or_default() >= 1.0 {
            return text;
        }
        assert!(Instant::now() < deadline, "no renewal was ever timed: {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn health_says_unhealthy_while_the_node_has_lost_its_lease() {
    let mut redis = redis_or_skip!();
    let lease = Duration::from_millis(600);
    let (_server, _node, port) = serve_node_with_ops(&redis, "health", lease).await;
    assert_eq!(health_until(port, 200).await, "ok\n");
    let mut alice = RawClient::link_and_settle(port, "alice").await;
    let text = scrape_after_a_renewal(port).await;
    assert_eq!(sample(&text, "krmx_cluster_lease_held"), Some(1.0), "{text}");
    let age = sample(&text, "krmx_cluster_lease_age_seconds").unwrap_or(f64::MAX);
    assert!(age < lease.as_secs_f64(), "renewed within the lease: {text}");
    assert_eq!(
        sample(&text, "krmx_cluster_resyncs_total{kind=\"restart\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "krmx_cluster_resyncs_total{kind=\"catch_up\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(sample(&text, "krmx_cluster_messages_lost_total"), Some(0.0), "{text}");
    let submits = sample(&text, "krmx_cluster_submit_duration_seconds_count").unwrap_or_default();
    assert!(submits >= 1.0, "alice's link was submitted to Redis: {text}");

    // Redis is gone: no renewal for a whole lease, the node stops serving and says so.
    redis.kill();
    alice.expect_closed().await;
    assert_eq!(health_until(port, 503).await, "this node lost its cluster lease\n");
    let text = emitter_testing::http_get(port, "/metrics").await.body;
    assert_eq!(sample(&text, "krmx_cluster_lease_held"), Some(0.0), "{text}");
    let age = sample(&text, "krmx_cluster_lease_age_seconds").unwrap_or_default();
    assert!(age >= lease.as_secs_f64() / 3.0, "no renewal since the kill: {text}");

    // Redis is back (empty): the node registers again, starts over once, and is healthy. Its subscription told of the
    // new state too (it polled while the node rejoined): old news by the time the node reads it.
    redis.start_again();
    assert_eq!(health_until(port, 200).await, "ok\n");
    let text = emitter_testing::http_get(port, "/metrics").await.body;
    assert_eq!(sample(&text, "krmx_cluster_lease_held"), Some(1.0), "{text}");
    let text = after_renewals(port, 3).await;
    assert_eq!(
        sample(&text, "krmx_cluster_resyncs_total{kind=\"restart\"}"),
        Some(1.0),
        "it started over from the cluster's state, once: {text}"
    );
}

/// A scrape taken once `count` more renewals have been timed: what a notice still queued would do has been done.
async fn after_renewals(port: u16, count: u32) -> String {
    let renewals = |text: &str| sample(text, "krmx_cluster_renew_duration_seconds_count").unwrap_or_default();
    let before = renewals(&emitter_testing::http_get(port, "/metrics").await.body);
    let deadline = Instant::now() + emitter_testing::TIMEOUT;
    loop {
        let text = emitter_testing::http_get(port, "/metrics").await.body;
        if renewals(&text) >= before + f64::from(count) {
            return text;
        }
        assert!(Instant::now() < deadline, "no renewals: {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn health_says_unhealthy_while_redis_is_paused_longer_than_the_lease() {
    let redis = redis_or_skip!();
    let lease = Duration::from_millis(600);
    let (_server, _node, port) = serve_node_with_ops(&redis, "health-pause", lease).await;
    let mut bob = RawClient::link_and_settle(port, "bob").await;
    assert_eq!(health_until(port, 200).await, "ok\n");

    // Paused for more than three leases: the node gives its lease up on its own clock, while Redis still sleeps.
    let pause = redis.pause(2.0);
    bob.expect_closed().await;
    assert_eq!(health_until(port, 503).await, "this node lost its cluster lease\n");
    assert!(
        !pause.is_finished(),
        "the lease was given up during the pause, not after it"
    );
    let text = emitter_testing::http_get(port, "/metrics").await.body;
    assert_eq!(sample(&text, "krmx_cluster_lease_held"), Some(0.0), "{text}");

    // Redis wakes: the node's old lease is fenced; it registers again, starts over, and is healthy again.
    pause.join().unwrap();
    assert_eq!(health_until(port, 200).await, "ok\n");
    let text = scrape_after_a_renewal(port).await;
    assert_eq!(sample(&text, "krmx_cluster_lease_held"), Some(1.0), "{text}");
    let restarts = sample(&text, "krmx_cluster_resyncs_total{kind=\"restart\"}").unwrap_or_default();
    assert!(restarts >= 1.0, "it started over from the cluster's state: {text}");
    let mut bob = RawClient::link_and_settle(port, "bob").await;
    bob.send(json!({"type": "app/hello", "payload": 1})).await;
    bob.close().await;
}

/// Asks `GET /health` on `port` until it answers `status`; returns the body.
async fn health_until(port: u16, status: u16) -> String {
    emitter_testing::get_until_status(port, "/health", status).await
}

/// While Redis is paused for 2 s, links wait on it (or fail: they are refused, never stuck), and nothing else does:
/// no thread waits on Redis, so the messages of linked users keep flowing, on a multi-threaded runtime and on a
/// current-thread one (where one parked thread would stop the whole node).
async fn a_paused_redis_holds_up_links_not_messages(cluster: &str) {
    let redis = redis_or_skip!();
    let server = Server::new();
    server.on_message(|u, m| {
        let _ = u.server().broadcast(m, Some(u.username()));
    });
    let a = start_node_with(&redis, cluster, "a", options(), server).await;
    let (mut ann, mut bob) = RawClient::link_pair(a.port, "ann", "bob").await;

    let paused_at = Instant::now();
    let paused = redis.pause(2.0);
    // Give the pause a moment to begin, then start links that wait for Redis: more than there are worker threads.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let links: Vec<_> = (0..6)
        .map(|i| {
            let port = a.port;
            tokio::spawn(async move { RawClient::link_with(port, &format!("late{i}"), None).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    for round in 0..3 {
        ann.send(json!({"type": "app/say", "payload": round})).await;
        // (bob may hear of a link first, if one got through.)
        bob.recv_until(&json!({"type": "app/say", "payload": round})).await;
    }
    let arrived = paused_at.elapsed();
    assert!(
        arrived < Duration::from_millis(1500),
        "the messages arrived {arrived:?} after Redis was paused for 2 s: they waited for Redis with the links"
    );

    // Once Redis answers, every link has its answer: accepted, or refused (it timed out, or came during the
    // back-off).
    for link in links {
        let _answered = emitter_testing::within("a link's answer once Redis is back", link)
            .await
            .unwrap();
    }
    paused.join().unwrap();
    // And the node links again.
    let _carl = RawClient::link_as(a.port, "carl").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_holds_up_links_not_messages_on_a_multi_threaded_runtime() {
    a_paused_redis_holds_up_links_not_messages("slow-mt").await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_paused_redis_holds_up_links_not_messages_on_a_current_thread_runtime() {
    a_paused_redis_holds_up_links_not_messages("slow-ct").await;
}

/// A listener calls `kick` and `join` while Redis is paused for 2 s: the methods queue their changes and return, so
/// the messages of linked users keep flowing (an echo round trip completes during the pause), on a multi-threaded and
/// on a current-thread runtime (where a method waiting for Redis would stop the whole node). Once Redis wakes, the
/// kick and the join are applied, and everyone hears of them.
async fn a_paused_redis_holds_up_server_methods_not_messages(cluster: &str) {
    let redis = redis_or_skip!();
    let server = Server::new();
    let answered = Arc::new(AtomicUsize::new(0));
    let methods_answered = answered.clone();
    server.on_message(move |u, m| {
        let server = u.server();
        match m.kind.as_str() {
            "app/kick-and-join" => {
                assert_eq!(server.kick("carl"), Ok(()));
                assert_eq!(server.join("dave"), Ok(()));
                methods_answered.fetch_add(1, Ordering::SeqCst);
            }
            _ => {
                let _ = server.send(u.username(), m);
            }
        }
    });
    let a = start_node_with(&redis, cluster, "a", options(), server).await;
    let (mut ann, mut bob) = RawClient::link_pair(a.port, "ann", "bob").await;
    let mut carl = RawClient::link_and_settle(a.port, "carl").await;
    ann.expect_all(&[joined("carl"), linked("carl")]).await;
    bob.expect_all(&[joined("carl"), linked("carl")]).await;

    let paused = redis.pause(2.0);
    // Give the pause a moment to begin.
    tokio::time::sleep(Duration::from_millis(100)).await;
    ann.send(json!({"type": "app/kick-and-join"})).await;
    for round in 0..3 {
        bob.send(json!({"type": "app/echo", "payload": round})).await;
        bob.expect(json!({"type": "app/echo", "payload": round})).await;
    }
    assert!(!paused.is_finished(), "the echoes came back while Redis slept");
    assert_eq!(
        answered.load(Ordering::SeqCst),
        1,
        "kick and join returned during the pause"
    );
    assert!(
        a.server.user("carl").is_some_and(|u| u.is_linked),
        "the kick waits for Redis"
    );

    // Redis wakes: the kick and the join are ordered and applied, and every linked client hears of them.
    paused.join().unwrap();
    carl.expect_all(&[unlinked("carl"), left("carl")]).await;
    for client in [&mut ann, &mut bob] {
        client
            .expect_all(&[unlinked("carl"), left("carl"), joined("dave")])
            .await;
    }
    assert_eq!(
        a.server.users(),
        vec![user("ann", true), user("bob", true), user("dave", false)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_holds_up_server_methods_not_messages_on_a_multi_threaded_runtime() {
    a_paused_redis_holds_up_server_methods_not_messages("methods-mt").await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_paused_redis_holds_up_server_methods_not_messages_on_a_current_thread_runtime() {
    a_paused_redis_holds_up_server_methods_not_messages("methods-ct").await;
}

/// A closing node unlinks all of its users in a few round trips to Redis (its change queue sends up to 500 per
/// pipeline), not one per user; every other node sees them all unlinked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_node_unlinks_a_thousand_users_in_two_round_trips() {
    let redis = redis_or_skip!();
    let (a, b) = two_nodes(&redis, "closing-many").await;
    let mut clients = Vec::new();
    for chunk in 0..20 {
        let linking: Vec<_> = (0..50)
            .map(|i| {
                let port = a.port;
                tokio::spawn(async move { RawClient::link_as(port, &format!("u{}", chunk * 50 + i)).await })
            })
            .collect();
        for link in linking {
            clients.push(link.await.unwrap());
        }
    }
    let everyone_linked = || b.server.users().iter().filter(|user| user.is_linked).count() == 1_000;
    crate::support::within(Duration::from_secs(20), "node b sees the 1,000 links", async {
        while !everyone_linked() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let before = a.node.cluster().stats().change_batches;
    let TestNode { server, node, .. } = a;
    let stats = node.cluster().clone();
    server.close().await.unwrap();
    let round_trips = stats.stats().change_batches - before;
    assert!(
        round_trips <= 2,
        "closing a node with 1,000 users took {round_trips} round trips"
    );
    node.stopped().await;
    let nobody_linked = || b.server.users().iter().all(|user| !user.is_linked);
    crate::support::within(Duration::from_secs(20), "node b sees the 1,000 unlinks", async {
        while !nobody_linked() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(b.server.users().len(), 1_000);
    drop(clients);
}

/// Links that find the node's change queue full are refused at once, with the reason, and counted; after Redis fails
/// a batch (here: a reply that times out), links are refused at once for the back-off period instead of queueing
/// behind a Redis that is away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_change_queue_and_a_failed_redis_refuse_links_at_once() {
    let redis = redis_or_skip!();
    let options = Options {
        change_queue: 1,
        command_timeout: Duration::from_millis(500),
        change_backoff: Duration::from_secs(5),
        ..options()
    };
    let a = start_node_with(&redis, "refusing", "a", options, Server::new()).await;
    let paused = redis.pause(1.5);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // One link is out to the sleeping Redis, one waits in the queue: the others find it full.
    let links: Vec<_> = (0..5)
        .map(|i| {
            let port = a.port;
            tokio::spawn(async move { RawClient::link_with(port, &format!("late{i}"), None).await.err() })
        })
        .collect();
    let mut reasons = Vec::new();
    for link in links {
        reasons.push(emitter_testing::within("a link's answer", link).await.unwrap());
    }
    let full = "the cluster is unavailable: this node's queue of membership changes is full";
    let refused_full = reasons.iter().filter(|reason| reason.as_deref() == Some(full)).count();
    assert!(refused_full >= 3, "{reasons:?}");
    assert!(a.node.cluster().stats().change_queue_full >= 3);
    // The batch out to Redis timed out: for the back-off period, links are refused at once.
    let started = Instant::now();
    let reason = RawClient::link_with(a.port, "after", None).await.err();
    assert_eq!(
        reason.as_deref(),
        Some("the cluster is unavailable: redis failed a moment ago: membership changes are refused for a moment")
    );
    assert!(started.elapsed() < Duration::from_secs(1), "refused at once");
    assert!(a.node.cluster().stats().changes_backed_off >= 1);
    paused.join().unwrap();
}

/// A node that fell behind a trimmed log rebuilds from a snapshot without closing the connections whose links still
/// hold: its linked client stays connected, hears of every change it missed as membership messages, and ends with
/// the cluster's full list; a connection whose link is gone from the cluster is closed (its client relinks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_a_trimmed_log_rebuilds_keeping_its_valid_links() {
    let redis = redis_or_skip!();
    let options = Options {
        log_retention: 10,
        ..options()
    };
    let a = start_node(&redis, "rebuild", "a", options.clone()).await;
    let b = start_node(&redis, "rebuild", "b", options.clone()).await;
    let _alice = RawClient::link_and_settle(a.port, "alice").await;
    let mut bob = RawClient::link_as(b.port, "bob").await;
    bob.expect_all(&snapshot(&["alice", "bob"])).await;
    let mut carol = RawClient::link_and_settle(b.port, "carol").await;
    bob.expect_all(&[joined("carol"), linked("carol")]).await;
    let mut view = vec![
        ("alice".to_owned(), true),
        ("bob".to_owned(), true),
        ("carol".to_owned(), true),
    ];

    // Node b stops applying the log: its turn is held (the keeper reads, then waits to apply).
    let (held_tx, held) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let lagging = b.server.clone();
    let holder = std::thread::spawn(move || {
        lagging.atomically(|_| {
            held_tx.send(()).unwrap();
            let _ = released.recv();
        })
    });
    held.recv().unwrap();
    let behind = emitter_core::cluster::ClusterHost::of(&b.server).applied();

    // Meanwhile the cluster moves on by far more than the log keeps: a crowd links (a third of it leaves again),
    // alice is kicked, carol unlinked, more of the crowd, and dave joins. (Node b's keeper may read the first entries
    // before it waits for the turn: the changes that matter come after a crowd, so that they are all but surely in
    // the part it misses, and enough follows them for the log to be trimmed past whatever it read.)
    let (other, lease) = crate::support::connect_node(&redis, "rebuild", "z", options).await;
    use emitter_redis::wire::Change;
    let crowd = |from: u64, to: u64| {
        let (other, lease) = (other.clone(), lease.clone());
        async move {
            for i in from..to {
                let name = format!("u{i}");
                other.submit(&lease, Change::link(&name, 100 + i, true)).await.unwrap();
                if i % 3 == 0 {
                    other.submit(&lease, Change::leave(&name)).await.unwrap();
                }
            }
        }
    };
    crowd(0, 150).await;
    other.submit(&lease, Change::leave("alice")).await.unwrap();
    other.submit(&lease, Change::unlink("carol")).await.unwrap();
    crowd(150, 450).await;
    other.submit(&lease, Change::join("dave")).await.unwrap();
    assert!(
        matches!(
            other.entries_after(behind).await,
            Err(emitter_redis::Error::Trimmed { .. })
        ),
        "the log no longer reaches back to node b"
    );

    // Node b applies again: it cannot catch up, so it rebuilds. carol's link is gone from the cluster: her connection
    // is closed (or, had node b read her unlink before it fell behind, she is told of it as usual).
    release.send(()).unwrap();
    holder.join().unwrap();
    loop {
        match carol.try_recv().await {
            None => break,
            Some(frame) if frame == unlinked("carol") => break,
            Some(_) => {}
        }
    }
    for frame in bob.recv_until(&joined("dave")).await {
        let name = frame["payload"]["username"].as_str().unwrap().to_owned();
        let at = view.iter().position(|(user, _)| *user == name);
        match (frame["type"].as_str().unwrap(), at) {
            ("krmx/joined", None) => view.push((name, false)),
            ("krmx/linked", Some(at)) if !view[at].1 => view[at].1 = true,
            ("krmx/unlinked", Some(at)) if view[at].1 => view[at].1 = false,
            ("krmx/left", Some(at)) if !view[at].1 => drop(view.remove(at)),
            _ => panic!("a frame that does not follow from bob's view: {frame}"),
        }
    }
    view.push(("dave".to_owned(), false));
    let cluster: Vec<(String, bool)> = other
        .snapshot()
        .await
        .unwrap()
        .users
        .into_iter()
        .map(|user| (user.name, user.link.is_some()))
        .collect();
    assert_eq!(
        cluster.len(),
        1 + 1 + 300 + 1,
        "bob, carol, the crowd that stayed, dave"
    );
    assert_eq!(view, cluster, "bob's view is the cluster's list");
    let listed: Vec<(String, bool)> = b
        .server
        .users()
        .into_iter()
        .map(|u| (u.username, u.is_linked))
        .collect();
    assert_eq!(listed, cluster, "node b lists the cluster's users");
    // bob is still linked on his connection, which stayed open.
    b.server.send("bob", &marker("still here")).unwrap();
    bob.expect(marker_json("still here")).await;
    let text = b.server.metrics_text();
    assert!(
        text.contains("\nkrmx_cluster_resyncs_total{kind=\"rebuild\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("\nkrmx_cluster_resyncs_total{kind=\"restart\"} 0\n"),
        "{text}"
    );
}

/// One Redis restart (empty) makes each node start over once: its keep-alive, its subscriber's poll and the other
/// nodes' notices of the new epoch all tell of it, and a notice about the epoch the node has started over in
/// already is old news. Three nodes, each with a user that relinks at once (their links are such notices).
#[tokio::test]
async fn a_redis_restart_makes_each_node_start_over_once() {
    let mut redis = redis_or_skip!();
    // Long enough that the subscribers hear of the restart before the keep-alives do.
    let lease = Duration::from_secs(3);
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        nodes.push(serve_node_with_ops_as(&redis, "restart-once", id, lease).await);
    }
    let mut users = Vec::new();
    for (i, (server, _, port)) in nodes.iter().enumerate() {
        users.push(RawClient::link_and_settle(*port, &format!("user{i}")).await);
        // A server method goes through the node's blocking connection: after the restart that connection is dead, so
        // the first catch-up fails on it and the node learns of the restart from its poll, its keep-alive or the
        // other nodes' notices instead, whichever comes first.
        server.join(&format!("guest{i}")).unwrap();
    }
    redis.restart_empty();
    // Each start-over closes the node's connections; the users relink as soon as their node serves again.
    for (i, mut user) in users.into_iter().enumerate() {
        user.expect_closed().await;
        let port = nodes[i].2;
        let deadline = Instant::now() + emitter_testing::TIMEOUT;
        loop {
            let mut client = RawClient::connect(port).await;
            if client.link(&format!("user{i}"), None).await.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "user{i} could not relink");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Two renewals and several polls of each subscriber later, a second notice of the restart has been handled.
    let renewals = |text: &str| sample(text, "krmx_cluster_renew_duration_seconds_count").unwrap_or_default();
    for (_, _, port) in &nodes {
        let before = renewals(&emitter_testing::http_get(*port, "/metrics").await.body);
        let deadline = Instant::now() + emitter_testing::TIMEOUT;
        let text = loop {
            let text = emitter_testing::http_get(*port, "/metrics").await.body;
            if renewals(&text) >= before + 2.0 {
                break text;
            }
            assert!(Instant::now() < deadline, "no renewals after the restart: {text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            sample(&text, "krmx_cluster_resyncs_total{kind=\"restart\"}"),
            Some(1.0),
            "{text}"
        );
    }
}

/// Many notices of one lost state (a subscriber polling every millisecond queues one per poll until the node has started
/// over) make the node start over once: a notice about the state it has started over in already is old news.
#[tokio::test]
async fn a_flushed_redis_makes_the_node_start_over_once_however_many_notices_tell_of_it() {
    let redis = redis_or_skip!();
    let options = Options {
        lease: Duration::from_millis(600),
        poll_interval: Duration::from_millis(1),
        ..options()
    };
    let server = Server::new();
    let handle = Cluster::connect(&redis.url(), "flushed", options)
        .await
        .expect("connect");
    let _node = Node::start(&server, handle, "a").await.expect("start the node");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = emitter_axum::router(&server).merge(emitter_axum::metrics_route(&server));
    let port = emitter_axum::serve(&server, listener, app).await.unwrap();
    let mut alice = RawClient::link_and_settle(port, "alice").await;
    let _: () = redis::cmd("FLUSHALL").query(&mut redis.admin()).unwrap();
    alice.expect_closed().await;
    let text = after_renewals(port, 3).await;
    assert_eq!(
        sample(&text, "krmx_cluster_resyncs_total{kind=\"restart\"}"),
        Some(1.0),
        "{text}"
    );
}

/// As on one process, a link for a user linked on another node is refused with the reference's words before the
/// app's authenticate listener runs (the view knows every node's links); the claim in Redis still decides after it.
#[tokio::test]
async fn already_linked_on_another_node_is_refused_before_authenticate() {
    let redis = redis_or_skip!();
    let a = start_node(&redis, "before-auth", "a", options()).await;
    let server = Server::new();
    let asked = Arc::new(AtomicUsize::new(0));
    let count = asked.clone();
    server.on_authenticate(move |_, _, ctx| {
        count.fetch_add(1, Ordering::SeqCst);
        ctx.reject("rejected by app");
    });
    let b = start_node_with(&redis, "before-auth", "b", options(), server).await;
    let _alice = RawClient::link_and_settle(a.port, "alice").await;
    let mut bob = RawClient::link_as(a.port, "bob").await;
    bob.expect_all(&snapshot(&["alice", "bob"])).await;
    // Node b has applied alice's link once its view shows her linked.
    eventually("node b sees alice linked", || {
        b.server
            .users()
            .iter()
            .any(|user| user.username == "alice" && user.is_linked)
    })
    .await;
    let mut second = RawClient::connect(b.port).await;
    assert_eq!(
        second.link("alice", Some("anything")).await,
        Err("user alice is already linked to a connection".to_owned())
    );
    assert_eq!(asked.load(Ordering::SeqCst), 0, "authenticate never ran for it");
    // A user that is not linked anywhere is authenticated as usual (here: rejected by the app).
    let mut carol = RawClient::connect(b.port).await;
    assert_eq!(carol.link("carol", None).await, Err("rejected by app".to_owned()));
    assert_eq!(asked.load(Ordering::SeqCst), 1);
}

/// The messages `server` has dropped from its connections for want of a valid lease.
fn fenced_received(server: &Server) -> u64 {
    let metrics = server.metrics_text();
    let line = metrics
        .lines()
        .find(|line| line.starts_with("krmx_cluster_fenced_messages_total{at=\"received\"}"));
    line.and_then(|line| line.rsplit(' ').next())
        .and_then(|count| count.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_lease_runs_out_by_its_own_clock_takes_no_message_even_before_it_closes() {
    let redis = redis_or_skip!();
    let server = Server::new();
    server.on_message(|u, message| {
        let _ = u.server().send(u.username(), message);
    });
    let lease = Duration::from_millis(1000);
    let a = start_node_with(&redis, "clock", "a", Options { lease, ..options() }, server).await;
    let mut alice = RawClient::link_and_settle(a.port, "alice").await;
    let say = |n: u64| json!({"type": "app/say", "payload": n});
    alice.send(say(0)).await;
    alice.recv_until(&say(0)).await;
    // Redis sleeps longer than the lease: the renewals wait, the keeper gives up a whole lease after the last one was
    // sent, and the node's own clock says the lease is over a fifth of a lease before that. In between, the node
    // still has its connections and must not speak for them.
    let mut admin = redis.admin();
    let sleeper = std::thread::spawn(move || {
        let _: () = redis::cmd("DEBUG").arg("SLEEP").arg("3").query(&mut admin).unwrap();
    });
    let deadline = Instant::now() + emitter_testing::TIMEOUT;
    let mut sent = 0;
    while fenced_received(&a.server) == 0 {
        assert!(Instant::now() < deadline, "no message was dropped for want of a lease");
        sent += 1;
        alice.send(say(sent)).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The message that found the lease over got no echo; nor did any after it (the connection closes soon after).
    let mut echoed = 0;
    while let Some(frame) = alice.try_recv().await {
        if frame["type"] == "app/say" {
            echoed = frame["payload"].as_u64().unwrap_or(0);
        }
    }
    assert!(echoed < sent, "message {sent} was dropped yet echoed");
    sleeper.join().unwrap();
}
