//! What the emitter-redis tests share: the throwaway Redis comes from `emitter_testing::redis`.

use std::future::Future;
use std::time::Duration;

use emitter_redis::wire::NodeLease;
use emitter_redis::{Cluster, Options};
pub use emitter_testing::redis::RedisServer;

pub async fn connect(server: &RedisServer, name: &str, options: Options) -> Cluster {
    Cluster::connect(&server.url(), name, options).await.expect("connect")
}

/// A handle on cluster `name` and the lease of `node`, registered through it.
pub async fn connect_node(server: &RedisServer, name: &str, node: &str, options: Options) -> (Cluster, NodeLease) {
    let cluster = connect(server, name, options).await;
    let lease = cluster.register_node(node).await.expect("register the node");
    (cluster, lease)
}

/// `count` handles on cluster `name`, each registered as a node of its own (`node-0`, `node-1`, …): as many
/// connections to Redis, so that what they send really arrives interleaved.
pub async fn connect_nodes(server: &RedisServer, name: &str, count: usize) -> Vec<(Cluster, NodeLease)> {
    let mut nodes = Vec::new();
    for i in 0..count {
        nodes.push(connect_node(server, name, &format!("node-{i}"), options()).await);
    }
    nodes
}

/// Options for tests: short timeouts so that a failure shows quickly.
pub fn options() -> Options {
    Options {
        command_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        poll_interval: Duration::from_millis(200),
        ..Options::default()
    }
}

/// Awaits `future`, failing the test if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Redis's clock in milliseconds (TIME), the clock leases are measured by.
pub fn redis_now_ms(admin: &mut redis::Connection) -> u64 {
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query(admin).expect("TIME");
    seconds * 1000 + micros / 1000
}

/// The deadline of `node`'s lease in cluster `name`, by Redis's clock, if it has one.
pub fn lease_deadline(admin: &mut redis::Connection, name: &str, node: &str) -> Option<u64> {
    let value: Option<String> = redis::cmd("HGET")
        .arg(format!("emitter:{{{name}}}:nodes"))
        .arg(node)
        .query(admin)
        .expect("HGET nodes");
    value.and_then(|value| value.split(' ').nth(1).and_then(|deadline| deadline.parse().ok()))
}

/// Kills every pub/sub connection of the Redis `admin` is connected to (`CLIENT KILL TYPE pubsub`, what a proxy or an
/// output-buffer limit does to a subscriber); returns how many there were.
pub fn kill_pubsub_clients(admin: &mut redis::Connection) -> u64 {
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(admin)
        .unwrap()
}
