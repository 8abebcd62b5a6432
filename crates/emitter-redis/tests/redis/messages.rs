//! Messages between nodes: one node's messages keep their order at the others; broadcasts skip their origin; sends
//! reach only their node.

use std::time::Duration;

use bytes::Bytes;
use emitter_redis::wire::{NodeMessage, Notification, Notifications};

use crate::support::{connect, options, within};
use emitter_testing::redis_or_skip;

async fn messages(subscription: &mut Notifications, count: usize) -> Vec<Notification> {
    within(Duration::from_secs(10), "the messages arrive", async {
        let mut got = Vec::new();
        while got.len() < count {
            match subscription.next().await.expect("the subscription lives") {
                Notification::Subscribed { .. } | Notification::Seq(_) => {}
                other => got.push(other),
            }
        }
        got
    })
    .await
}

async fn subscribed(subscription: &mut Notifications) {
    within(Duration::from_secs(10), "subscribed", async {
        while !matches!(subscription.next().await, Some(Notification::Subscribed { .. })) {}
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_nodes_messages_arrive_in_order_at_the_others_and_never_back_at_itself() {
    const COUNT: usize = 2_000;
    let server = redis_or_skip!();
    let a = connect(&server, "messages", options()).await;
    let b = connect(&server, "messages", options()).await;
    let c = connect(&server, "messages", options()).await;
    let (lease_a, lease_b) = (
        a.register_node("node-a").await.unwrap(),
        b.register_node("node-b").await.unwrap(),
    );
    let mut at_a = a.subscribe("node-a").await.unwrap();
    let mut at_b = b.subscribe("node-b").await.unwrap();
    let mut at_c = c.subscribe("node-c").await.unwrap();
    for subscription in [&mut at_a, &mut at_b, &mut at_c] {
        subscribed(subscription).await;
    }

    // Node a interleaves broadcasts and sends to users on node b, as fast as it can queue them.
    for i in 0..COUNT {
        let body = Bytes::from(format!("{{\"i\":{i}}}"));
        if i % 10 == 9 {
            a.publish_send(&lease_a, "node-b", i as u64, "bob", body).unwrap();
        } else {
            a.publish_broadcast(&lease_a, i as u64, Some("alice"), body).unwrap();
        }
    }
    // Then node b sends one message to node a: when it arrives, a has had every chance to see its own broadcasts.
    b.publish_send(&lease_b, "node-a", 0, "alice", Bytes::from_static(b"marker"))
        .unwrap();

    let at_b = messages(&mut at_b, COUNT).await;
    let order: Vec<u64> = at_b
        .iter()
        .map(|notification| match notification {
            Notification::Broadcast(NodeMessage {
                after, origin, user, ..
            }) => {
                assert_eq!((origin.as_str(), user.as_deref()), ("node-a", Some("alice")));
                *after
            }
            Notification::Send(NodeMessage { after, user, .. }) => {
                assert_eq!(user.as_deref(), Some("bob"));
                *after
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        order,
        (0..COUNT as u64).collect::<Vec<_>>(),
        "node a's order, sends and broadcasts together"
    );

    let at_c = messages(&mut at_c, COUNT - COUNT / 10).await;
    assert!(
        at_c.iter().all(|n| matches!(n, Notification::Broadcast(_))),
        "node c gets the broadcasts only"
    );

    let at_a = messages(&mut at_a, 1).await;
    assert!(
        matches!(&at_a[..], [Notification::Send(NodeMessage { origin, body, .. })] if origin == "node-b" && body == "marker"),
        "node a hears none of its own broadcasts: {at_a:?}"
    );
    assert_eq!(a.stats().published, COUNT as u64);
    assert_eq!(a.stats().publish_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_are_counted_as_lost_and_repeats_are_dropped() {
    let server = redis_or_skip!();
    let b = connect(&server, "numbers", options()).await;
    let mut at_b = b.subscribe("node-b").await.unwrap();
    subscribed(&mut at_b).await;
    // Frames as node a would publish them, numbered 1, 2, 5 (3 and 4 never arrive), then 5 again (a repeat).
    let mut admin = server.admin();
    for number in [1, 2, 5, 5, 6] {
        let frame = NodeMessage {
            origin: "node-a".into(),
            generation: 1,
            number,
            order: number,
            after: 0,
            user: None,
            keep: false,
            body: Bytes::from(format!("{{\"n\":{number}}}")),
        };
        let _: i64 = redis::cmd("PUBLISH")
            .arg("emitter:{numbers}:broadcast")
            .arg(frame.encode())
            .query(&mut admin)
            .unwrap();
    }
    let got: Vec<u64> = messages(&mut at_b, 4)
        .await
        .into_iter()
        .map(|notification| match notification {
            Notification::Broadcast(message) => message.number,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(got, vec![1, 2, 5, 6]);
    let stats = b.stats();
    assert_eq!((stats.messages_lost, stats.repeats_dropped), (2, 1));
}
