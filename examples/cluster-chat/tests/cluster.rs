//! Two chat nodes in this process on one throwaway `redis-server`, each serving the example's app on its own loopback
//! port: a chat message sent by a client of one node reaches a client of the other over real WebSockets.
//!
//! Without `redis-server` on PATH the tests skip, loudly, unless `EMITTER_REDIS=1` (as `.ci/steps/05-redis.sh` sets
//! it), where a missing server fails them.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use emitter_core::Server;
use emitter_redis::Node;
use emitter_testing::{http_get, joined, linked, unlinked, user, RawClient, Receive};
use serde_json::json;

/// A `redis-server` on a free loopback port, with no persistence, killed when dropped.
struct RedisServer {
    port: u16,
    child: Child,
}

impl RedisServer {
    /// A fresh, empty Redis; `None` (after a loud note) when `redis-server` is missing and that is allowed.
    fn start() -> Option<RedisServer> {
        let Some(binary) = find_redis_server() else {
            if std::env::var("EMITTER_REDIS").is_ok_and(|value| value == "1") {
                panic!("EMITTER_REDIS=1 but redis-server is not on PATH (apt-get install redis-server)");
            }
            // Written to the process's stderr itself, not with eprintln!, which the test harness captures.
            static NOTE: std::sync::Once = std::sync::Once::new();
            NOTE.call_once(|| {
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED example-cluster-chat tests: redis-server is not on PATH, so the chat is NOT tested as a \
                     cluster here. Install it (apt-get install redis-server) or run .ci/steps/05-redis.sh, which \
                     installs it and fails instead of skipping."
                );
            });
            return None;
        };
        // Another process may take the port between our probe and Redis's bind: then try another.
        for _ in 0..10 {
            let port = free_port();
            let child = Command::new(&binary)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(["--dir", &std::env::temp_dir().to_string_lossy()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            let mut server = RedisServer { port, child };
            if server.wait_ready() {
                return Some(server);
            }
        }
        panic!("redis-server did not start on any of 10 ports");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Waits until it answers PING; false if the process exited (its port was taken) or never answered.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if pong(self.port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_redis_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("its address").port()
}

/// Whether a Redis on `port` answers an inline `PING` with `+PONG`.
fn pong(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

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
    let Some(redis) = RedisServer::start() else {
        return;
    };
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
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = start_node(&redis, "node-a").await;
    let page = http_get(a.port, "/").await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("new WebSocket"), "the chat's page");
    let health = http_get(a.port, "/health").await;
    assert_eq!(health.status_body(), (200, "ok"));
    a.server.close().await.unwrap();
    a.node.stopped().await;
}
