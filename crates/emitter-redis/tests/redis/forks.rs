//! A log that forks is found out: Redis loses writes the nodes had applied (as a replica promoted after missing the
//! primary's last writes does), then hands out the same seqs again with other entries. The nodes see the hash chain
//! break, count it, and rebuild from a snapshot, so that every node ends with Redis's view and no user is linked
//! twice. (The same with a real Sentinel failover: `sentinel.rs`.)

use std::time::{Duration, Instant};

use emitter_core::{Server, User};
use emitter_redis::{Cluster, Node, Options};
use emitter_testing::redis::RedisServer;
use emitter_testing::{redis_or_skip, RawClient};

use crate::support::options;

/// A node served over WebSocket on a loopback port.
pub struct ForkNode {
    pub server: Server,
    pub port: u16,
    pub node: Node,
}

pub async fn start_node(url: &str, cluster: &str, id: &str) -> ForkNode {
    start_node_with(url, cluster, id, options()).await
}

pub async fn start_node_with(url: &str, cluster: &str, id: &str, options: Options) -> ForkNode {
    let server = Server::new();
    let handle = Cluster::connect(url, cluster, options).await.expect("connect");
    let node = Node::start(&server, handle, id).await.expect("start the node");
    let port = emitter_testing::listen(&server).await;
    ForkNode { server, port, node }
}

/// `krmx_cluster_resyncs_total{kind="fork"}` of a node.
pub fn forks(server: &Server) -> u64 {
    let text = server.metrics_text();
    text.lines()
        .find_map(|line| line.strip_prefix("krmx_cluster_resyncs_total{kind=\"fork\"} "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no fork count in\n{text}"))
}

/// Waits until `check` holds, polling: for state no client is told of. Bounded like every wait.
pub async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + emitter_testing::TIMEOUT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every user of the cluster as Redis has them now, read through a fresh handle, with the node each is linked on.
pub async fn redis_view(url: &str, cluster: &str) -> Vec<(String, Option<String>)> {
    let handle = Cluster::connect(url, cluster, options()).await.expect("connect");
    let snapshot = handle.snapshot().await.expect("snapshot");
    snapshot
        .users
        .into_iter()
        .map(|user| (user.name, user.link.map(|link| link.node)))
        .collect()
}

/// Waits until every node lists exactly the users Redis has, linked or not as Redis says; returns that view.
pub async fn same_view_everywhere(url: &str, cluster: &str, nodes: &[&ForkNode]) -> Vec<(String, Option<String>)> {
    let deadline = Instant::now() + emitter_testing::TIMEOUT;
    loop {
        let view = redis_view(url, cluster).await;
        let expected: Vec<User> = view
            .iter()
            .map(|(name, node)| emitter_testing::user(name, node.is_some()))
            .collect();
        if nodes.iter().all(|node| node.server.users() == expected) {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes never agreed with redis: redis {view:?}, nodes {:?}",
            nodes.iter().map(|node| node.server.users()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The cluster's keys and their DUMPs: what Redis holds now, to be put back later.
fn dump(redis: &RedisServer, cluster: &str) -> Vec<(String, Vec<u8>)> {
    let mut admin = redis.admin();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("emitter:{{{cluster}}}:*"))
        .query(&mut admin)
        .expect("KEYS");
    keys.into_iter()
        .map(|key| {
            let dumped: Vec<u8> = redis::cmd("DUMP").arg(&key).query(&mut admin).expect("DUMP");
            (key, dumped)
        })
        .collect()
}

/// Puts back what [`dump`] read: Redis forgets every write since, its epoch unchanged.
fn restore(redis: &RedisServer, cluster: &str, dumped: &[(String, Vec<u8>)]) {
    let mut admin = redis.admin();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("emitter:{{{cluster}}}:*"))
        .query(&mut admin)
        .expect("KEYS");
    for key in keys {
        let _: () = redis::cmd("DEL").arg(&key).query(&mut admin).expect("DEL");
    }
    for (key, dumped) in dumped {
        let _: () = redis::cmd("RESTORE")
            .arg(key)
            .arg(0)
            .arg(dumped.as_slice())
            .query(&mut admin)
            .expect("RESTORE");
    }
}

#[tokio::test]
async fn nodes_that_applied_lost_writes_find_the_fork_and_rebuild() {
    let redis = redis_or_skip!();
    let url = redis.url();
    let a = start_node(&url, "fork", "a").await;
    let b = start_node(&url, "fork", "b").await;
    let _alice = RawClient::link_and_settle(a.port, "alice").await;
    let _bob = RawClient::link_and_settle(b.port, "bob").await;
    same_view_everywhere(&url, "fork", &[&a, &b]).await;
    assert_eq!(
        (forks(&a.server), forks(&b.server)),
        (0, 0),
        "no fork while nothing is lost"
    );

    // What a replica has when it stops receiving writes.
    let before = dump(&redis, "fork");
    // Writes both nodes apply, and Redis will lose: carol links on a, dan on b.
    let _carol = RawClient::link_and_settle(a.port, "carol").await;
    let _dan = RawClient::link_and_settle(b.port, "dan").await;
    eventually("both nodes applied the writes redis will lose", || {
        [&a, &b].iter().all(|node| node.server.users().len() == 4)
    })
    .await;
    restore(&redis, "fork", &before);

    // The same seqs again, with other entries: erin links on b, then frank on a.
    let erin = RawClient::link_with(b.port, "erin", None).await;
    let frank = RawClient::link_with(a.port, "frank", None).await;
    eventually("both nodes found the fork", || {
        forks(&a.server) >= 1 && forks(&b.server) >= 1
    })
    .await;
    // After the rebuild every node has Redis's view: carol and dan, lost, are on no node; nobody is linked twice.
    let view = same_view_everywhere(&url, "fork", &[&a, &b]).await;
    assert!(
        view.iter().all(|(name, _)| name != "carol" && name != "dan"),
        "the lost links are gone: {view:?}"
    );
    // Linking works again after the rebuild.
    drop((erin, frank));
    let _gina = RawClient::link_and_settle(a.port, "gina").await;
    let view = same_view_everywhere(&url, "fork", &[&a, &b]).await;
    assert!(
        view.iter()
            .any(|(name, node)| name == "gina" && node.as_deref() == Some("a")),
        "{view:?}"
    );
    drop(b.node);
    drop(a.node);
}
