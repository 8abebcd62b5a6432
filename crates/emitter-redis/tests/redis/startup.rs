//! Starting a node: errors that say what failed and where, a new cluster's state announced (or refused), and one live
//! process per node id.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use emitter_core::Server;
use emitter_redis::{Cluster, Error, Node, Options};
use emitter_testing::redis_or_skip;
use emitter_testing::{joined, linked, CapturedLogs, RawClient, Receive};

use crate::support::{connect, connect_node, options};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

fn quick() -> Options {
    Options {
        connect_timeout: CONNECT_TIMEOUT,
        command_timeout: CONNECT_TIMEOUT,
        ..Options::default()
    }
}

/// Connects to `url` and returns the error's text and how long it took to fail.
async fn connect_fails(url: &str) -> (String, Duration) {
    let started = Instant::now();
    let error = Cluster::connect(url, "startup", quick())
        .await
        .expect_err("no Redis there");
    let took = started.elapsed();
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    (error.to_string(), took)
}

/// A port that takes connections and runs `answer` on each, on a thread of its own, until the test ends.
fn fake_server(answer: fn(std::net::TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer(stream));
        }
    });
    port
}

#[tokio::test]
async fn a_closed_port_is_named_without_the_password() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (text, took) = connect_fails(&format!("redis://:hunter2@127.0.0.1:{port}/0")).await;
    assert_eq!(
        text,
        format!("could not connect to Redis at redis://:***@127.0.0.1:{port}/0: Connection refused")
    );
    assert!(!text.contains("hunter2"));
    assert!(took < CONNECT_TIMEOUT * 2, "took {took:?}");
}

#[tokio::test]
async fn a_port_that_never_answers_fails_after_the_connect_timeout() {
    let port = fake_server(|mut stream| {
        // Reads what the client sends and never answers; the connection stays open until the client gives up.
        let mut buffer = [0u8; 1024];
        while matches!(stream.read(&mut buffer), Ok(read) if read > 0) {}
    });
    let (text, took) = connect_fails(&format!("redis://127.0.0.1:{port}/")).await;
    assert!(
        text.starts_with(&format!(
            "could not connect to Redis at redis://127.0.0.1:{port}/: no answer within"
        )),
        "{text}"
    );
    assert!(took >= CONNECT_TIMEOUT && took < CONNECT_TIMEOUT * 2, "took {took:?}");
}

#[tokio::test]
async fn an_http_port_is_not_a_redis_server() {
    let port = fake_server(|mut stream| {
        let mut buffer = [0u8; 1024];
        let _ = stream.read(&mut buffer);
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    });
    let (text, took) = connect_fails(&format!("redis://127.0.0.1:{port}/")).await;
    assert!(
        text.starts_with(&format!(
            "could not connect to Redis at redis://127.0.0.1:{port}/: what answered there is not a Redis server"
        )),
        "{text}"
    );
    assert!(took < CONNECT_TIMEOUT * 2, "took {took:?}");
}

#[tokio::test]
async fn creating_a_cluster_state_warns_with_its_name_and_database() {
    let server = redis_or_skip!();
    let (logs, _guard) = CapturedLogs::capture();
    let _first = connect(&server, "typo-prone", options()).await;
    let warned = logs.lines(tracing::Level::WARN, "created a new cluster state");
    assert_eq!(warned.len(), 1, "{:?}", logs.all());
    assert!(
        warned[0].contains("cluster=\"typo-prone\"") && warned[0].contains("db=0"),
        "{}",
        warned[0]
    );
    assert!(
        warned[0].contains("a typo forms a second, separate cluster"),
        "{}",
        warned[0]
    );
    // Joining the state that exists now says nothing at WARN.
    let _second = connect(&server, "typo-prone", options()).await;
    assert_eq!(logs.lines(tracing::Level::WARN, "created a new cluster state").len(), 1);
}

#[tokio::test]
async fn require_existing_cluster_refuses_a_name_without_state() {
    let server = redis_or_skip!();
    let _existing = connect(&server, "chat", options()).await;
    let strict = Options {
        require_existing_cluster: true,
        ..options()
    };
    let error = Cluster::connect(&server.url(), "chta", strict.clone())
        .await
        .expect_err("no such cluster");
    assert!(matches!(error, Error::NoSuchCluster { .. }), "{error:?}");
    let text = error.to_string();
    assert!(
        text.starts_with("cluster chta has no state in Redis at redis://127.0.0.1:"),
        "{text}"
    );
    assert!(text.contains("(database 0)"), "{text}");
    // Nothing was created: the name is still unknown, and the existing cluster is joined as usual.
    let mut admin = server.admin();
    let exists: bool = redis::cmd("EXISTS")
        .arg("emitter:{chta}:epoch")
        .query(&mut admin)
        .unwrap();
    assert!(!exists);
    Cluster::connect(&server.url(), "chat", strict)
        .await
        .expect("the existing cluster");
}

fn short_lease() -> Options {
    Options {
        lease: Duration::from_millis(600),
        ..options()
    }
}

#[tokio::test]
async fn a_second_process_with_a_node_id_in_use_is_refused_while_the_first_serves() {
    let redis = redis_or_skip!();
    let first = Server::new();
    let handle = Cluster::connect(&redis.url(), "dup", short_lease()).await.unwrap();
    let _node = Node::start(&first, handle, "dup").await.unwrap();
    let port = emitter_testing::listen(&first).await;
    let mut alice = RawClient::link_and_settle(port, "alice").await;

    // Another process (another handle: another instance token) with the same id: refused after waiting a lease.
    let second = Server::new();
    let handle = Cluster::connect(&redis.url(), "dup", short_lease()).await.unwrap();
    let started = Instant::now();
    let error = Node::start(&second, handle, "dup").await.expect_err("the id is in use");
    assert!(matches!(error, Error::NodeInUse { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .starts_with("node id dup is in use by another process"),
        "{error}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "it waited for the lease to lapse first"
    );

    // The first kept its lease and its connections: alice hears bob link on it.
    let _bob = RawClient::link_and_settle(port, "bob").await;
    alice.expect_all(&[joined("bob"), linked("bob")]).await;
    assert_eq!(first.health(), emitter_core::Health::Healthy);
}

#[tokio::test]
async fn a_node_restarted_with_the_id_of_a_killed_one_starts() {
    let redis = redis_or_skip!();
    // The killed process: it registered and linked alice, then stopped renewing (nothing keeps its lease).
    let (dead, lease) = connect_node(&redis, "crash", "n1", short_lease()).await;
    dead.submit(&lease, emitter_redis::wire::Change::link("alice", 1, true))
        .await
        .unwrap();
    drop(dead);

    // Its replacement, with the same id, while the old lease still runs: it waits for it to lapse, then starts.
    let server = Server::new();
    let handle = Cluster::connect(&redis.url(), "crash", short_lease()).await.unwrap();
    let started = Instant::now();
    Node::start(&server, handle, "n1").await.expect("the old lease lapses");
    assert!(
        started.elapsed() < Duration::from_millis(600) * 2,
        "within about a lease"
    );
    // alice, linked by the dead process, was unlinked; she links on the new one.
    let port = emitter_testing::listen(&server).await;
    let _alice = RawClient::link_and_settle(port, "alice").await;
}
