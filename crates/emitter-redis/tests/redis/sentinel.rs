//! A real failover under Redis Sentinel: a primary, a replica and one sentinel (`redis-sentinel`, quorum 1) as
//! throwaway processes; two nodes that find the primary through the sentinel (`redis+sentinel://…`), clients linked
//! on both. The primary is killed (SIGKILL) and the replica promoted: once with every write replicated, once after
//! the replica missed the last links. Either way no user ends linked on two nodes and every node ends with Redis's
//! view; where writes were lost, the nodes that had applied them find the fork and rebuild.

use std::time::{Duration, Instant};

use emitter_testing::redis::{RedisSentinel, RedisServer};
use emitter_testing::{redis_or_skip, RawClient};

use emitter_redis::wire::Change;
use emitter_redis::Cluster;

use crate::forks::{forks, redis_view, start_node_with, ForkNode};
use crate::support::options;

/// How long a failover may take: the sentinel's 300 ms `down-after-milliseconds`, its election and promotion, the
/// nodes' next poll of the sentinel, and a rebuild.
const FAILOVER: Duration = Duration::from_secs(30);

/// Links `name` on `node`, retrying while the cluster is still failing over (a link then is refused, or its
/// connection closed by a rebuild).
async fn link_eventually(node: &ForkNode, name: &str) -> RawClient {
    let deadline = Instant::now() + FAILOVER;
    loop {
        if let Ok(client) = RawClient::link_with(node.port, name, None).await {
            return client;
        }
        assert!(Instant::now() < deadline, "{name} could not link after the failover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until both nodes list exactly the users the new primary has; returns that view.
async fn agree(url: &str, a: &ForkNode, b: &ForkNode) -> Vec<(String, Option<String>)> {
    let deadline = Instant::now() + FAILOVER;
    loop {
        let view = redis_view(url, "failover").await;
        let expected: Vec<_> = view
            .iter()
            .map(|(name, node)| emitter_testing::user(name, node.is_some()))
            .collect();
        if a.server.users() == expected && b.server.users() == expected {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes never agreed with redis: redis {view:?}, a {:?}, b {:?}",
            a.server.users(),
            b.server.users()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills the primary with SIGKILL and waits until the sentinel has promoted the replica.
async fn fail_over(primary: &mut RedisServer, replica: &RedisServer, sentinel: RedisSentinel) -> RedisSentinel {
    primary.kill();
    promoted(replica, sentinel).await
}

/// Waits until the sentinel names `replica` the primary.
async fn promoted(replica: &RedisServer, sentinel: RedisSentinel) -> RedisSentinel {
    let port = replica.port();
    tokio::task::spawn_blocking(move || {
        sentinel.wait_for_primary(port, FAILOVER);
        sentinel
    })
    .await
    .expect("waiting for the promotion")
}

async fn failover(lose_writes: bool) {
    let mut primary = redis_or_skip!();
    let replica = RedisServer::start_replica_of(&primary);
    let Some(sentinel) = RedisSentinel::start("failover", &primary) else {
        return;
    };
    let url = sentinel.url();
    // The nodes ask the sentinel for the primary every 4 s: the test writes to the new primary (about 2 s in) before
    // they move. (Should they move first, Redis is behind them and they find the fork by that instead.)
    let slow = emitter_redis::Options {
        poll_interval: Duration::from_secs(4),
        ..options()
    };
    let a = start_node_with(&url, "failover", "a", slow.clone()).await;
    let b = start_node_with(&url, "failover", "b", slow).await;
    let mut alice = RawClient::link_and_settle(a.port, "alice").await;
    let mut bob = RawClient::link_and_settle(b.port, "bob").await;
    let acked: u64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5_000)
        .query(&mut primary.admin())
        .expect("WAIT");
    assert_eq!(acked, 1, "the replica has every write so far");

    if lose_writes {
        // The replica stops, its link to the primary is cut, and what the nodes write next never reaches it.
        replica.suspend();
        let killed: u64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("replica")
            .query(&mut primary.admin())
            .expect("CLIENT KILL TYPE replica");
        assert_eq!(killed, 1);
    }
    let mut carol = RawClient::link_and_settle(a.port, "carol").await;
    let mut dan = RawClient::link_and_settle(b.port, "dan").await;
    crate::forks::eventually("both nodes applied carol's and dan's links", || {
        [&a, &b].iter().all(|node| node.server.users().len() == 4)
    })
    .await;
    if !lose_writes {
        let acked: u64 = redis::cmd("WAIT")
            .arg(1)
            .arg(5_000)
            .query(&mut primary.admin())
            .expect("WAIT");
        assert_eq!(acked, 1, "the replica has carol's and dan's links");
    }
    let sentinel = if lose_writes {
        primary.kill();
        replica.resume();
        promoted(&replica, sentinel).await
    } else {
        fail_over(&mut primary, &replica, sentinel).await
    };
    // Another process writes to the new primary before the nodes have moved to it: where writes were lost, the same
    // seqs are handed out again and the log passes the nodes' place, so only the hash chain tells them apart.
    let other = Cluster::connect(&replica.url(), "failover", options())
        .await
        .expect("connect");
    let lease = other.register_node("x").await.expect("register x");
    for (connection, name) in (1..).zip(["x1", "x2", "x3"]) {
        other
            .submit(&lease, Change::link(name, connection, true))
            .await
            .expect("link");
    }

    // The cluster works on the new primary: a new user links on each node.
    let _erin = link_eventually(&a, "erin").await;
    let _frank = link_eventually(&b, "frank").await;
    let view = agree(&url, &a, &b).await;
    let linked_on = |name: &str| {
        view.iter()
            .find(|(user, _)| user == name)
            .and_then(|(_, node)| node.clone())
    };
    assert_eq!(linked_on("erin").as_deref(), Some("a"), "{view:?}");
    assert_eq!(linked_on("frank").as_deref(), Some("b"), "{view:?}");
    if lose_writes {
        assert!(
            forks(&a.server) >= 1,
            "node a applied lost writes and must have found the fork"
        );
        assert!(
            forks(&b.server) >= 1,
            "node b applied lost writes and must have found the fork"
        );
        assert_eq!(
            linked_on("carol"),
            None,
            "carol's link was lost with the old primary: {view:?}"
        );
        assert_eq!(
            linked_on("dan"),
            None,
            "dan's link was lost with the old primary: {view:?}"
        );
        // Their connections, linked in a history that is gone, were closed by the rebuild: nobody speaks as them.
        for client in [&mut carol, &mut dan, &mut alice, &mut bob] {
            client.expect_close_frame().await;
        }
    } else {
        assert_eq!(
            (forks(&a.server), forks(&b.server)),
            (0, 0),
            "nothing was lost, nothing forked"
        );
        for (name, node) in [("alice", "a"), ("bob", "b"), ("carol", "a"), ("dan", "b")] {
            assert_eq!(linked_on(name).as_deref(), Some(node), "{view:?}");
        }
        // The linked clients kept their connections through the failover: a broadcast reaches each.
        a.server
            .broadcast(&emitter_testing::marker("after"), None)
            .expect("broadcast");
        for client in [&mut alice, &mut bob, &mut carol, &mut dan] {
            emitter_testing::Receive::recv_until(client, &emitter_testing::marker_json("after")).await;
        }
    }
    drop(sentinel);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_with_every_write_replicated_keeps_every_link() {
    failover(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_that_lost_writes_forks_nothing() {
    failover(true).await;
}
