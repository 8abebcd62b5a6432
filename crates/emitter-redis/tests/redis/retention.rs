//! Log retention: the log stays short, a node that fell behind the retained part notices and resynchronises from a
//! snapshot; a Redis behind its nodes is noticed too.

use emitter_redis::wire::{Change, Replica};
use emitter_redis::{Error, Options};

use crate::support::{connect_node, options};
use emitter_testing::redis_or_skip;

#[tokio::test]
async fn a_node_behind_the_retained_log_resynchronises_from_a_snapshot() {
    let server = redis_or_skip!();
    let options = Options {
        log_retention: 10,
        ..options()
    };
    let (cluster, lease) = connect_node(&server, "retention", "node-a", options).await;
    cluster.submit(&lease, Change::link("alice", 1, true)).await.unwrap();

    // A node that applied up to here, then stopped reading for a while.
    let mut behind = Replica::empty();
    for entry in cluster.entries_after(0).await.unwrap() {
        behind.apply(&entry).unwrap();
    }
    for i in 0..500u64 {
        let user = format!("user{i}");
        cluster
            .submit(&lease, Change::link(&user, 100 + i, true))
            .await
            .unwrap();
        if i % 3 == 0 {
            cluster.submit(&lease, Change::leave(&user)).await.unwrap();
        }
    }
    let (_, head) = cluster.head().await.unwrap();

    // The log is capped (MAXLEN ~ trims whole blocks of up to 100 entries), and no longer reaches back to it.
    let mut admin = server.admin();
    let length: u64 = redis::cmd("XLEN")
        .arg("emitter:{retention}:log")
        .query(&mut admin)
        .unwrap();
    assert!((10..=10 + 100).contains(&length), "log length {length}");
    match cluster.entries_after(behind.seq()).await {
        Err(error @ Error::Trimmed { .. }) => assert!(error.needs_snapshot()),
        other => panic!("expected Trimmed, got {other:?}"),
    }
    // Recent enough is still fine.
    assert_eq!(cluster.entries_after(head - 5).await.unwrap().len(), 5);

    // Resynchronise: the snapshot, then the log after it.
    let mut resynced = Replica::from_snapshot(cluster.snapshot().await.unwrap());
    assert_eq!(resynced.seq(), head);
    cluster.submit(&lease, Change::join("late")).await.unwrap();
    cluster.submit(&lease, Change::leave("user1")).await.unwrap();
    for entry in cluster.entries_after(resynced.seq()).await.unwrap() {
        resynced.apply(&entry).unwrap();
    }
    let now = cluster.snapshot().await.unwrap();
    assert_eq!((resynced.seq(), resynced.users()), (now.seq, now.users));
    assert_eq!(resynced.users().len(), 1 + 500 - 167 + 1 - 1);
}

/// Redis lost writes without losing its epoch (as after a failover to a lagging replica; here, by hand): a node that
/// applied more than Redis has is told so instead of silently waiting for seqs that will mean something else.
#[tokio::test]
async fn a_redis_behind_its_nodes_is_noticed() {
    let server = redis_or_skip!();
    let (cluster, lease) = connect_node(&server, "behind", "node-a", options()).await;
    for user in ["alice", "bob", "carol"] {
        cluster.submit(&lease, Change::join(user)).await.unwrap();
    }
    let mut admin = server.admin();
    let _: () = redis::cmd("SET")
        .arg("emitter:{behind}:seq")
        .arg(1)
        .query(&mut admin)
        .unwrap();
    match cluster.entries_after(3).await {
        Err(error @ Error::Ahead { after: 3, head: 1 }) => assert!(error.needs_snapshot()),
        other => panic!("expected Ahead, got {other:?}"),
    }
}
