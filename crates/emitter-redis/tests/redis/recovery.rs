//! Cross-node messages survive a dropped subscription: what a node's subscription missed is fetched from the
//! origin's window in Redis and delivered once, in the origin's order; what the window no longer holds is counted as
//! lost, never delivered twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use emitter_core::{Message, Server};
use emitter_redis::wire::{Notification, Notifications};
use emitter_redis::{Cluster, ClusterStats, Node, Options};
use emitter_testing::redis::RedisServer;
use emitter_testing::{redis_or_skip, RawClient, Receive};
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::support::{connect, connect_node, options, within};

/// How many messages each sender sends.
const PER_SENDER: u64 = 2_000;

/// A node whose clients' messages are broadcast to everyone else, served on a loopback port.
async fn broadcasting_node(redis: &RedisServer, cluster: &str, id: &str) -> (Server, Node, u16) {
    // A receiver takes up to 6,000 broadcasts, and what a node recovers arrives at once: with the default bound (4,096
    // frames behind) a receiver slowed by a loaded machine would be cut as a slow consumer, which is not what this
    // test is about.
    let server = Server::builder().outbound_queue(1 << 16).build();
    server.on_message(|u, m| {
        let _ = u.server().broadcast(m, Some(u.username()));
    });
    let handle = Cluster::connect(&redis.url(), cluster, options())
        .await
        .expect("connect");
    let node = Node::start(&server, handle, id).await.expect("start the node");
    let port = emitter_testing::listen(&server).await;
    (server, node, port)
}

/// Waits until every node lists every one of `users` as linked (another node's `users()` catches up on its own).
async fn all_linked(servers: &[Server], users: &[String]) {
    let deadline = Instant::now() + emitter_testing::TIMEOUT;
    while !servers
        .iter()
        .all(|server| users.iter().all(|name| server.user(name).is_some_and(|u| u.is_linked)))
    {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for every node to list every user"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads `client`'s frames until `done` of the `senders` each said they are done; returns, per sender, the numbers of
/// its `app/say` messages in the order they arrived. Signals `halfway` once `kill_after` messages arrived.
async fn receive(
    mut client: RawClient,
    senders: usize,
    kill_after: usize,
    halfway: Arc<Notify>,
) -> HashMap<u64, Vec<u64>> {
    let mut got: HashMap<u64, Vec<u64>> = HashMap::new();
    let (mut done, mut count) = (0, 0);
    while done < senders {
        let frame = client.recv().await;
        if frame["type"] != "app/say" {
            continue; // membership
        }
        let payload = &frame["payload"];
        if payload["done"] == true {
            done += 1;
            continue;
        }
        let (Some(sender), Some(i)) = (payload["s"].as_u64(), payload["i"].as_u64()) else {
            panic!("unexpected {frame}");
        };
        got.entry(sender).or_default().push(i);
        count += 1;
        if count == kill_after {
            halfway.notify_one();
        }
    }
    got
}

fn say(sender: u64, i: u64) -> Value {
    json!({"type": "app/say", "payload": {"s": sender, "i": i}})
}

fn total(stats: &[ClusterStats], field: impl Fn(&ClusterStats) -> u64) -> u64 {
    stats.iter().map(field).sum()
}

/// Three nodes, a sender and a receiver on each; 2,000 broadcasts per sender; every pub/sub connection killed in the
/// middle. Every receiver gets every broadcast of every other client exactly once, in its sender's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pubsub_kill_in_the_middle_of_broadcasts_loses_and_repeats_none() {
    let redis = redis_or_skip!();
    let mut nodes = Vec::new();
    for id in ["n0", "n1", "n2"] {
        nodes.push(broadcasting_node(&redis, "recover-broadcasts", id).await);
    }
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (k, (_, _, port)) in nodes.iter().enumerate() {
        receivers.push(RawClient::link_as(*port, &format!("r{k}")).await);
        senders.push(RawClient::link_as(*port, &format!("s{k}")).await);
    }
    let servers: Vec<Server> = nodes.iter().map(|(server, _, _)| server.clone()).collect();
    let names: Vec<String> = (0..3).flat_map(|k| [format!("r{k}"), format!("s{k}")]).collect();
    all_linked(&servers, &names).await;

    // Kill once the first receiver has a quarter of its messages: the senders are still sending.
    let halfway = Arc::new(Notify::new());
    let receiving: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(k, client)| {
            let kill_after = if k == 0 { (PER_SENDER * 3 / 4) as usize } else { 0 };
            tokio::spawn(receive(client, 3, kill_after, halfway.clone()))
        })
        .collect();
    let sending: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(k, mut client)| {
            tokio::spawn(async move {
                for i in 0..PER_SENDER {
                    client.send(say(k as u64, i)).await;
                }
                client
                    .send(json!({"type": "app/say", "payload": {"s": k, "done": true}}))
                    .await;
                client // kept open until the receivers are done: its broadcasts must not race its unlink
            })
        })
        .collect();
    within(
        Duration::from_secs(30),
        "the receivers are a quarter through",
        halfway.notified(),
    )
    .await;
    let killed = redis.kill_pubsub_clients();
    assert!(killed >= 3, "every node's subscription killed: {killed}");

    let mut senders = Vec::new();
    for sending in sending {
        senders.push(
            within(Duration::from_secs(60), "the senders finish", sending)
                .await
                .unwrap(),
        );
    }
    for (k, receiving) in receiving.into_iter().enumerate() {
        let got = within(Duration::from_secs(60), "the receivers get every broadcast", receiving)
            .await
            .unwrap();
        for sender in 0..3u64 {
            assert_eq!(
                got.get(&sender).cloned().unwrap_or_default(),
                (0..PER_SENDER).collect::<Vec<_>>(),
                "receiver r{k}: sender s{sender}'s broadcasts, each once, in order"
            );
        }
    }
    drop(senders);
    let stats: Vec<ClusterStats> = nodes.iter().map(|(_, node, _)| node.cluster().stats()).collect();
    eprintln!(
        "pubsub kill during {} broadcasts: recovered {}, lost {}, repeats dropped {}, resubscriptions {}",
        3 * PER_SENDER,
        total(&stats, |s| s.messages_recovered),
        total(&stats, |s| s.messages_lost),
        total(&stats, |s| s.repeats_dropped),
        total(&stats, |s| s.resubscriptions),
    );
    assert_eq!(total(&stats, |s| s.messages_lost), 0, "{stats:?}");
    assert!(stats.iter().all(|s| s.resubscriptions >= 1), "{stats:?}");
    assert!(
        total(&stats, |s| s.messages_recovered) > 0,
        "the kill made gaps to fill: {stats:?}"
    );
}

/// Sends to a user linked on another node, mixed with broadcasts, across a pub/sub kill: each arrives once, in the
/// order the node sent them, sends and broadcasts interleaved as sent (they travel on two channels, and come back
/// from one window).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sends_and_broadcasts_to_a_user_on_another_node_survive_a_pubsub_kill_in_order() {
    let redis = redis_or_skip!();
    let (a, node_a, _) = broadcasting_node(&redis, "recover-sends", "a").await;
    let (b, node_b, port_b) = broadcasting_node(&redis, "recover-sends", "b").await;
    let bob = RawClient::link_as(port_b, "bob").await;
    all_linked(&[a.clone(), b.clone()], &["bob".to_owned()]).await;

    let halfway = Arc::new(Notify::new());
    let receiving = tokio::spawn(receive(bob, 1, (PER_SENDER / 4) as usize, halfway.clone()));
    let send = |payload: Value| {
        let broadcast = payload["i"].as_u64().is_some_and(|i| i % 3 == 0);
        let message = Message::with_payload("app/say", payload);
        if broadcast {
            a.broadcast(&message, None).expect("broadcast");
        } else {
            a.send("bob", &message).expect("send");
        }
    };
    for i in 0..PER_SENDER / 2 {
        send(json!({"s": 0, "i": i}));
    }
    // Killed while bob is behind; the second half is published while node b's subscription is away for sure: Redis
    // takes no new connection until it is all out.
    within(Duration::from_secs(30), "bob is a quarter through", halfway.notified()).await;
    let mut admin = redis.admin();
    set_maxclients(&mut admin, 1);
    let killed: u64 = crate::support::kill_pubsub_clients(&mut admin);
    assert!(killed >= 2, "every node's subscription killed: {killed}");
    for i in PER_SENDER / 2..PER_SENDER {
        send(json!({"s": 0, "i": i}));
    }
    send(json!({"s": 0, "done": true}));
    published(&node_a, PER_SENDER + 1).await;
    set_maxclients(&mut admin, 10_000);
    let got = within(Duration::from_secs(60), "bob gets every send", receiving)
        .await
        .unwrap();
    assert_eq!(
        got[&0],
        (0..PER_SENDER).collect::<Vec<_>>(),
        "each message once, in order"
    );
    let stats = node_b.cluster().stats();
    eprintln!(
        "pubsub kill during {PER_SENDER} sends: recovered {}, lost {}, repeats dropped {}",
        stats.messages_recovered, stats.messages_lost, stats.repeats_dropped
    );
    assert_eq!(stats.messages_lost, 0, "{stats:?}");
    assert!(
        stats.messages_recovered > PER_SENDER / 2,
        "the second half came from the window: {stats:?}"
    );
    drop((node_a, b));
}

/// `CONFIG SET maxclients`: at 1, Redis takes no new connection (those open stay), so a killed subscription cannot
/// come back.
fn set_maxclients(admin: &mut redis::Connection, count: u64) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(count)
        .query(admin)
        .unwrap();
}

/// Waits until `node` has handed `count` messages to Redis.
async fn published(node: &Node, count: u64) {
    let deadline = Instant::now() + emitter_testing::TIMEOUT;
    while node.cluster().stats().published < count {
        assert!(
            Instant::now() < deadline,
            "timed out publishing: {:?}",
            node.cluster().stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits for `subscription`'s next message notification (skipping the others), and returns its number.
async fn next_message(subscription: &mut Notifications) -> Option<u64> {
    within(Duration::from_secs(10), "a message", async {
        loop {
            match subscription.next().await? {
                Notification::Broadcast(message) => return Some(message.number),
                Notification::Send(message) => panic!("unexpected send {message:?}"),
                _ => {}
            }
        }
    })
    .await
}

/// The subscription stays away (Redis takes no new connections) while its origin publishes far more than its window
/// keeps: once back, it gets what the window still holds, in order, counts the rest as lost, and gets nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_past_the_window_is_counted_lost_and_nothing_comes_twice() {
    const WINDOW: u64 = 10;
    const AWAY: u64 = 500;
    let redis = redis_or_skip!();
    let small_window = Options {
        message_window: WINDOW,
        ..options()
    };
    let (a, lease) = connect_node(&redis, "recover-window", "node-a", small_window).await;
    let reader = connect(&redis, "recover-window", options()).await;
    let mut subscription = reader.subscribe("node-r").await.unwrap();
    within(Duration::from_secs(10), "subscribed", async {
        while !matches!(subscription.next().await, Some(Notification::Subscribed { .. })) {}
    })
    .await;
    let body = || Bytes::from_static(b"{}");
    a.publish_broadcast(&lease, 0, None, body()).unwrap();
    let mut got = vec![next_message(&mut subscription).await.unwrap()];

    // No new connections: the subscription, once killed, cannot come back until this is undone.
    let mut admin = redis.admin();
    set_maxclients(&mut admin, 1);
    let killed: u64 = crate::support::kill_pubsub_clients(&mut admin);
    assert_eq!(killed, 1);
    for _ in 0..AWAY {
        a.publish_broadcast(&lease, 0, None, body()).unwrap();
    }
    let deadline = Instant::now() + emitter_testing::TIMEOUT;
    while a.stats().published < 1 + AWAY {
        assert!(Instant::now() < deadline, "timed out publishing: {:?}", a.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    set_maxclients(&mut admin, 10_000);
    // One more once it is back: it comes after whatever the window gave.
    within(Duration::from_secs(10), "resubscribed", async {
        while reader.stats().resubscriptions == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    a.publish_broadcast(&lease, 0, None, body()).unwrap();
    let last = 2 + AWAY;
    while *got.last().unwrap() < last {
        got.push(next_message(&mut subscription).await.unwrap());
    }

    let stats = reader.stats();
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order, none twice: {got:?}");
    // Those published while it was away that came back (the one after may have come through the window too).
    let recovered = got.len() as u64 - 2;
    assert!(recovered >= WINDOW, "at least the window's {WINDOW} come back: {got:?}");
    assert!(stats.messages_lost > 0, "{stats:?}");
    assert_eq!(
        stats.messages_lost + recovered,
        AWAY,
        "every message delivered or counted lost: {stats:?}"
    );
    assert!(stats.messages_recovered >= recovered, "{stats:?}");
    // The recovered ones are the newest: a contiguous run up to the last.
    assert!(got[1..].windows(2).all(|w| w[1] == w[0] + 1), "{got:?}");
}

/// Redis restarts empty: the generations start again, so a node restarted with it may come back as the very node and
/// generation a receiver heard from before, numbering from 1 again. The receiver forgets what it heard in the old
/// state, so the new messages are not taken for repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_restarts_empty_a_reused_generation_is_heard_afresh() {
    let mut redis = redis_or_skip!();
    let (a, lease) = connect_node(&redis, "recover-restart", "node-a", options()).await;
    let reader = connect(&redis, "recover-restart", options()).await;
    let mut subscription = reader.subscribe("node-r").await.unwrap();
    within(Duration::from_secs(10), "subscribed", async {
        while !matches!(subscription.next().await, Some(Notification::Subscribed { .. })) {}
    })
    .await;
    for _ in 0..3 {
        a.publish_broadcast(&lease, 0, None, Bytes::from_static(b"{}")).unwrap();
    }
    for number in 1..=3 {
        assert_eq!(next_message(&mut subscription).await, Some(number));
    }

    redis.restart_empty();
    within(
        Duration::from_secs(10),
        "the reader sees that redis lost its state",
        async { while !matches!(subscription.next().await, Some(Notification::EpochChanged { .. })) {} },
    )
    .await;
    // node-a as a new process: a new handle (its numbering starts over) on the new state, where the generations do
    // too: it gets the generation it had.
    drop(a);
    let (a, again) = connect_node(&redis, "recover-restart", "node-a", options()).await;
    assert_eq!(again.generation(), lease.generation(), "the same node and generation");
    for _ in 0..3 {
        a.publish_broadcast(&again, 0, None, Bytes::from_static(b"{}")).unwrap();
    }
    for number in 1..=3 {
        assert_eq!(next_message(&mut subscription).await, Some(number), "heard afresh");
    }
    assert_eq!(reader.stats().messages_lost, 0);
}
