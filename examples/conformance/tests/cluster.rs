//! The conformance server as a cluster: several conformance processes (separate OS processes, `REDIS_URL` set) on one
//! throwaway `redis-server`, driven over real WebSockets on loopback. The faults are real too: SIGKILL and
//! SIGSTOP/SIGCONT of a node's process, Redis restarted empty, paused (`DEBUG SLEEP`), its pub/sub connections killed.
//!
//! Without `redis-server` on PATH these tests skip with a note, unless `EMITTER_REDIS=1` (CI), where they fail.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use emitter_testing::redis::RedisServer;
use emitter_testing::{joined, left, linked, redis_or_skip, snapshot, unlinked, RawClient, Receive};
use serde_json::{json, Value};

/// One conformance process, a node of the cluster `conformance` (main endpoint) on a test's Redis.
struct NodeProcess {
    child: Child,
    port: u16,
    /// The policy endpoint's port (a node of the cluster `conformance-policy`).
    policy_port: u16,
}

impl NodeProcess {
    /// Starts nodes `n1`, `n2`, … (as many as asked for), each with a lease of `lease_ms`, and waits until they serve.
    fn start_all<const N: usize>(redis: &RedisServer, lease_ms: u64) -> [NodeProcess; N] {
        std::array::from_fn(|i| NodeProcess::start(redis, &format!("n{}", i + 1), lease_ms))
    }

    /// The command that runs node `id` with a lease of `lease_ms`.
    fn command(redis: &RedisServer, id: &str, lease_ms: u64) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_example-conformance"));
        command
            .env("PORT", "0")
            .env("CLOSED_PORT", "0")
            .env("POLICY_PORT", "0")
            .env("REDIS_URL", redis.url())
            .env("NODE_ID", id)
            .env("KRMX_LEASE_MS", lease_ms.to_string())
            .env(
                "RUST_LOG",
                std::env::var("NODE_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdin(Stdio::null());
        command
    }

    /// Starts node `id` with a lease of `lease_ms`, and waits until it serves.
    fn start(redis: &RedisServer, id: &str, lease_ms: u64) -> NodeProcess {
        let mut child = NodeProcess::command(redis, id, lease_ms)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the conformance server");
        let stdout = child.stdout.take();
        // Killed and reaped when dropped, also if it never comes up.
        let mut node = NodeProcess {
            child,
            port: 0,
            policy_port: 0,
        };
        let stdout = stdout.expect("its stdout");
        let (lines, serving) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // The node's log (warnings and errors), shown with a failing test's output.
                if !line.starts_with("conformance ") {
                    eprintln!("[node] {line}");
                }
                let _ = lines.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = serving.recv_timeout(left).expect("the node did not start serving");
            // `conformance server: main on ws://localhost:PORT/, closed on …, policy on ws://localhost:PORT/`
            if let Some(rest) = line.strip_prefix("conformance server: main on ws://localhost:") {
                let port_after = |text: &str| -> u16 {
                    text.split('/')
                        .next()
                        .and_then(|port| port.parse().ok())
                        .expect("a port")
                };
                node.port = port_after(rest);
                let policy = rest
                    .split("policy on ws://localhost:")
                    .nth(1)
                    .expect("the policy endpoint");
                node.policy_port = port_after(policy);
                return node;
            }
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
        if signal == "-STOP" {
            emitter_testing::redis::wait_until_stopped(self.child.id());
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The users a client has been told of: its snapshot and every membership frame since, applied in order.
#[derive(Default)]
struct View {
    order: Vec<String>,
    linked: BTreeMap<String, bool>,
}

impl View {
    /// Applies a frame; returns whether it was a membership frame.
    fn apply(&mut self, frame: &Value) -> bool {
        let Some(name) = frame["payload"]["username"].as_str().map(str::to_owned) else {
            return false;
        };
        match frame["type"].as_str() {
            Some("krmx/joined") => {
                self.order.push(name.clone());
                self.linked.insert(name, false);
            }
            Some("krmx/linked") => {
                self.linked.insert(name, true);
            }
            Some("krmx/unlinked") => {
                self.linked.insert(name, false);
            }
            Some("krmx/left") => {
                self.order.retain(|user| *user != name);
                self.linked.remove(&name);
            }
            _ => return false,
        }
        true
    }

    /// As `test/users` lists users.
    fn users(&self) -> Value {
        Value::Array(
            self.order
                .iter()
                .map(|name| json!({"username": name, "isLinked": self.linked[name]}))
                .collect(),
        )
    }
}

/// A client that keeps its view of the users up to date while it reads.
struct Observer {
    client: RawClient,
    view: View,
}

impl Observer {
    async fn link(port: u16, username: &str) -> Observer {
        let client = RawClient::link_as(port, username).await;
        let mut observer = Observer {
            client,
            view: View::default(),
        };
        observer.read_until(&linked(username)).await;
        observer
    }

    /// Links once the node serves again after a fault (its links are refused while it rejoins its cluster).
    async fn link_when_available(port: u16, username: &str) -> Observer {
        let client = link_once_available(port, username).await;
        let mut observer = Observer {
            client,
            view: View::default(),
        };
        observer.read_until(&linked(username)).await;
        observer
    }

    /// Reads up to and including `expected`, applying membership frames on the way.
    async fn read_until(&mut self, expected: &Value) {
        loop {
            let frame = self.client.recv().await;
            self.view.apply(&frame);
            if &frame == expected {
                return;
            }
        }
    }

    /// The node's `users()`, as `test/users` replies, after everything before it.
    async fn node_users(&mut self) -> Value {
        self.client.send(json!({"type": "test/users"})).await;
        loop {
            let frame = self.client.recv().await;
            if frame["type"] == "test/users" {
                return frame["payload"].clone();
            }
            self.view.apply(&frame);
        }
    }
}

fn broadcasted(from: &str, payload: Value) -> Value {
    json!({"type": "test/broadcasted", "payload": {"from": from, "payload": payload}})
}

/// Every observer broadcasts a marker and reads every observer's marker. A node delivers another node's broadcast
/// only once it applied everything its origin had applied when sending it, so afterwards every node has applied
/// every change made before the markers were sent: then every view is one and the same list
/// ([`assert_one_view`]), which it returns.
async fn settle(observers: &mut [Observer], round: u32) -> Value {
    for observer in observers.iter_mut() {
        observer
            .client
            .send(json!({"type": "test/broadcast", "payload": format!("settle-{round}")}))
            .await;
    }
    let names: Vec<String> = observers
        .iter()
        .map(|observer| observer.client.username.clone().unwrap_or_default())
        .collect();
    for observer in observers.iter_mut() {
        let mut pending = names.clone();
        while !pending.is_empty() {
            let frame = observer.client.recv().await;
            if !observer.view.apply(&frame) && frame["type"] == "test/broadcasted" {
                let from = frame["payload"]["from"].as_str().unwrap_or_default();
                if frame["payload"]["payload"] == format!("settle-{round}") {
                    pending.retain(|name| name != from);
                }
            }
        }
    }
    assert_one_view(observers).await
}

/// Every observer's view, and every node's `users()`, are one and the same list.
async fn assert_one_view(observers: &mut [Observer]) -> Value {
    let expected = observers[0].view.users();
    for observer in observers.iter_mut() {
        let name = observer.client.username.clone();
        assert_eq!(observer.view.users(), expected, "{name:?}'s view");
        assert_eq!(observer.node_users().await, expected, "the users() of {name:?}'s node");
    }
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_serve_one_set_of_users() {
    let redis = redis_or_skip!();
    let nodes: [NodeProcess; 3] = NodeProcess::start_all(&redis, 10_000);
    let mut alice = Observer::link(nodes[0].port, "alice").await;
    let mut bob = Observer::link(nodes[1].port, "bob").await;
    let carol = Observer::link(nodes[2].port, "carol").await;
    // carol's snapshot, on the third process, holds the users the other two linked, in join order.
    assert_eq!(
        carol.view.users(),
        json!([
            {"username": "alice", "isLinked": true},
            {"username": "bob", "isLinked": true},
            {"username": "carol", "isLinked": true},
        ])
    );
    alice.read_until(&linked("carol")).await;
    bob.read_until(&linked("carol")).await;
    let mut observers = [alice, bob, carol];
    settle(&mut observers, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_name_raced_on_two_processes_has_one_winner() {
    let redis = redis_or_skip!();
    let [one, two] = NodeProcess::start_all(&redis, 10_000);
    const TRIALS: usize = 200;
    const AT_ONCE: usize = 20;
    for batch in 0..TRIALS / AT_ONCE {
        let mut races = Vec::new();
        for trial in 0..AT_ONCE {
            let name = format!("racer{}", batch * AT_ONCE + trial);
            let (first, second) = (one.port, two.port);
            races.push(tokio::spawn(async move {
                let (a, b) = tokio::join!(
                    RawClient::link_with(first, &name, None),
                    RawClient::link_with(second, &name, None)
                );
                (name, a.map(|_| ()), b.map(|_| ()))
            }));
        }
        for race in races {
            let (name, a, b) = race.await.unwrap();
            let refusal = format!("user {name} is already linked to a connection");
            match (a, b) {
                (Ok(()), Err(reason)) | (Err(reason), Ok(())) => assert_eq!(reason, refusal),
                other => panic!("{name}: expected exactly one winner, got {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relink_kick_join_and_leave_across_processes() {
    let redis = redis_or_skip!();
    let [one, two] = NodeProcess::start_all(&redis, 10_000);
    let (alice, mut bob) = alice_watched_by_bob(&one, &two).await;
    // alice's connection drops on one process; she relinks on the other.
    alice.close().await;
    bob.read_until(&unlinked("alice")).await;
    let mut alice = RawClient::link_as(two.port, "alice").await;
    alice.recv_until(&linked("alice")).await;
    bob.read_until(&linked("alice")).await;
    // bob (process two) kicks dave, whom a client of process one joins first.
    let mut carol = RawClient::link_and_settle(one.port, "carol").await;
    carol.send(json!({"type": "test/join", "payload": "dave"})).await;
    carol
        .recv_until(&json!({"type": "test/joined-ok", "payload": "dave"}))
        .await;
    bob.read_until(&joined("dave")).await;
    bob.client.send(json!({"type": "test/kick", "payload": "dave"})).await;
    bob.read_until(&left("dave")).await;
    bob.read_until(&json!({"type": "test/kicked-ok", "payload": "dave"}))
        .await;
    // Joining an existing user fails with the reference's words, whichever process asks.
    carol.send(json!({"type": "test/join", "payload": "alice"})).await;
    carol
        .recv_until(&json!({"type": "test/error", "payload": "cannot join a user that already exist"}))
        .await;
    // carol leaves from process one: process two's client hears of it.
    carol.send(json!({"type": "krmx/leave"})).await;
    carol.recv_until(&left("carol")).await;
    bob.read_until(&left("carol")).await;
    let mut observers = [bob];
    assert_one_view(&mut observers).await;
}

/// Two processes with a lease of `lease_ms`, alice linked on the first and bob on the second, once alice has seen bob
/// link and bob has read his catch-up (nothing is left for him to read).
async fn alice_and_bob(redis: &RedisServer, lease_ms: u64) -> ([NodeProcess; 2], RawClient, RawClient) {
    let [one, two] = NodeProcess::start_all(redis, lease_ms);
    let mut alice = RawClient::link_and_settle(one.port, "alice").await;
    let mut bob = RawClient::link_and_settle(two.port, "bob").await;
    // The main endpoint's state app catches bob up after his snapshot: its last message is the tally's.
    bob.recv_type("projection/set").await;
    alice.recv_until(&linked("bob")).await;
    ([one, two], alice, bob)
}

/// alice linked on `one`, and bob observing from `two` once he has seen her link.
async fn alice_watched_by_bob(one: &NodeProcess, two: &NodeProcess) -> (RawClient, Observer) {
    let mut bob = Observer::link(two.port, "bob").await;
    let alice = RawClient::link_and_settle(one.port, "alice").await;
    bob.read_until(&linked("alice")).await;
    (alice, bob)
}

/// Links `username` on `port`, trying again while its previous connection's unlink is still on its way: a client
/// whose socket closed is unlinked once the server has noticed, which the client cannot wait for.
async fn link_once_unlinked(port: u16, username: &str) -> RawClient {
    let deadline = Instant::now() + emitter_testing::TIMEOUT;
    let busy = format!("user {username} is already linked to a connection");
    loop {
        match RawClient::link_with(port, username, None).await {
            Ok(client) => return client,
            Err(reason) if reason == busy && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(reason) => panic!("{username} was rejected: {reason}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_churn_every_view_equals_users_on_every_process() {
    let redis = redis_or_skip!();
    let nodes: [NodeProcess; 3] = NodeProcess::start_all(&redis, 10_000);
    let ports: Vec<u16> = nodes.iter().map(|node| node.port).collect();
    let mut observers = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        observers.push(Observer::link(*port, &format!("observer{i}")).await);
    }
    // Churn: 12 workers, each on its own user, link, unlink, relink elsewhere, leave, on all three processes at once.
    let workers = (0..12).map(|worker| {
        let ports = ports.clone();
        tokio::spawn(async move {
            let name = format!("churn{worker}");
            for round in 0..6 {
                let port = ports[(worker + round) % ports.len()];
                let mut client = link_once_unlinked(port, &name).await;
                client.recv_until(&linked(&name)).await;
                match round % 3 {
                    0 => client.close().await,
                    1 => {
                        client.send(json!({"type": "krmx/unlink"})).await;
                        client.recv_until(&unlinked(&name)).await;
                    }
                    _ => {
                        client.send(json!({"type": "krmx/leave"})).await;
                        client.recv_until(&left(&name)).await;
                    }
                }
            }
            // Every other worker ends linked.
            if worker % 2 == 0 {
                let mut client = link_once_unlinked(ports[worker % ports.len()], &name).await;
                client.recv_until(&linked(&name)).await;
                Some(client)
            } else {
                None
            }
        })
    });
    let mut kept = Vec::new();
    for worker in workers {
        kept.push(worker.await.unwrap());
    }
    let users = settle(&mut observers, 1).await;
    let linked_churners = users
        .as_array()
        .unwrap()
        .iter()
        .filter(|user| user["username"].as_str().unwrap().starts_with("churn") && user["isLinked"] == true)
        .count();
    assert_eq!(
        linked_churners, 6,
        "the six workers that kept a connection are linked: {users}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_has_its_users_unlinked_everywhere_within_the_lease() {
    let redis = redis_or_skip!();
    let lease = Duration::from_millis(1500);
    let [doomed, survivor] = NodeProcess::start_all(&redis, lease.as_millis() as u64);
    let (_alice, mut bob) = alice_watched_by_bob(&doomed, &survivor).await;
    let killed = Instant::now();
    doomed.signal("-KILL");
    // The lease runs out and a reaper (the survivor, every second) unlinks alice for everyone.
    bob.read_until(&unlinked("alice")).await;
    let took = killed.elapsed();
    assert!(
        took >= lease / 2,
        "unlinked after {took:?}: before the lease could have run out"
    );
    eprintln!("SIGKILL: alice unlinked on the other process {took:?} after the kill (lease {lease:?}, reap every 1 s)");
    // alice is still a user, and links again on the survivor.
    let _alice = RawClient::link_as(survivor.port, "alice").await;
    bob.read_until(&linked("alice")).await;
}

/// A second process started with a node id in use is refused at start, naming the id, while the first keeps serving
/// with its connections open; a process started with the id of a killed one (its lease still running) starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_live_process_per_node_id() {
    let redis = redis_or_skip!();
    let lease_ms = 1000;
    let [first] = NodeProcess::start_all(&redis, lease_ms);
    let mut alice = Observer::link(first.port, "alice").await;

    let mut second = NodeProcess::command(&redis, "n1", lease_ms)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a second n1");
    let mut stderr = second.stderr.take().expect("its stderr");
    // It waits one lease for the first's to lapse, then gives up: bounded by a generous deadline.
    let exited = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).expect("read its stderr");
        (second.wait().expect("its exit status"), text)
    });
    let (status, text) = tokio::time::timeout(Duration::from_secs(20), exited)
        .await
        .expect("the second process exits")
        .unwrap();
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("Error: node id n1 is in use by another process"),
        "{text}"
    );
    // The first still serves, alice's connection included.
    let _bob = RawClient::link_as(first.port, "bob").await;
    alice.read_until(&linked("bob")).await;

    // Killed: a new process with its id starts once the old lease lapses, and alice comes back on it.
    first.signal("-KILL");
    drop(first);
    let restarted = NodeProcess::start(&redis, "n1", lease_ms);
    let _alice = Observer::link_when_available(restarted.port, "alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_paused_past_its_lease_comes_back_without_the_users_taken_over() {
    let redis = redis_or_skip!();
    let lease = Duration::from_millis(1500);
    let [paused, other] = NodeProcess::start_all(&redis, lease.as_millis() as u64);
    let (mut stale_alice, mut bob) = alice_watched_by_bob(&paused, &other).await;
    paused.signal("-STOP");
    bob.read_until(&unlinked("alice")).await;
    // alice is taken over on the other process while the first one sleeps.
    let mut alice = RawClient::link_as(other.port, "alice").await;
    alice.recv_until(&linked("alice")).await;
    bob.read_until(&linked("alice")).await;
    paused.signal("-CONT");
    // The woken process is fenced: it starts over, closing its connections, and links nobody.
    stale_alice.expect_closed().await;
    let mut observers = [bob];
    let users = settle(&mut observers, 2).await;
    assert_eq!(
        users,
        json!([{"username": "bob", "isLinked": true}, {"username": "alice", "isLinked": true}])
    );
    // Nothing about alice reached bob after her link on the other process: the next frame he gets is her broadcast.
    alice
        .send(json!({"type": "test/broadcast", "payload": "still-here"}))
        .await;
    assert_eq!(
        observers[0].client.recv().await,
        broadcasted("alice", json!("still-here"))
    );
    // And the woken process serves again (once it has rejoined: a connection made meanwhile is closed by its
    // start-over, and relinks).
    let _carol = Observer::link_when_available(paused.port, "carol").await;
    observers[0].read_until(&linked("carol")).await;
}

/// Reads up to and including `expected`, applying membership frames on the way; returns how many of the frames read
/// were broadcasts of a stale connection's messages (payloads `stale-…`).
async fn read_counting_stale(observer: &mut Observer, expected: &Value) -> usize {
    let mut stale = 0;
    loop {
        let frame = observer.client.recv().await;
        observer.view.apply(&frame);
        if frame["type"] == "test/broadcasted"
            && frame["payload"]["payload"]
                .as_str()
                .is_some_and(|payload| payload.starts_with("stale-"))
        {
            eprintln!("a stale connection's message was delivered (waiting for {expected}): {frame}");
            stale += 1;
        }
        if &frame == expected {
            return stale;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_paused_past_its_lease_delivers_nothing_from_its_old_connections() {
    let redis = redis_or_skip!();
    const ROUNDS: usize = 5;
    const STALE: usize = 20;
    let [paused, other] = NodeProcess::start_all(&redis, 1500);
    let mut bob = Observer::link(other.port, "bob").await;
    let (mut delivered, mut sent) = (0, 0);
    for round in 0..ROUNDS {
        let name = format!("alice{round}");
        let mut stale = link_once_available(paused.port, &name).await;
        delivered += read_counting_stale(&mut bob, &linked(&name)).await;
        // Before the pause her messages get through: the path the rest of the round must find closed.
        let before = json!(format!("before-{round}"));
        stale.send(json!({"type": "test/broadcast", "payload": before})).await;
        delivered += read_counting_stale(&mut bob, &broadcasted(&name, before)).await;
        paused.signal("-STOP");
        // While the process sleeps her old connection keeps talking: the frames wait in the socket, to be read the
        // moment the process wakes, before it can have noticed that its lease ran out.
        for i in 0..STALE {
            let payload = format!("stale-{round}-{i}");
            stale.send(json!({"type": "test/broadcast", "payload": payload})).await;
        }
        delivered += read_counting_stale(&mut bob, &unlinked(&name)).await;
        // She links on the other process while the first one sleeps.
        let mut alice = RawClient::link_as(other.port, &name).await;
        alice.recv_until(&linked(&name)).await;
        delivered += read_counting_stale(&mut bob, &linked(&name)).await;
        for i in STALE..2 * STALE {
            let payload = format!("stale-{round}-{i}");
            stale.send(json!({"type": "test/broadcast", "payload": payload})).await;
        }
        sent += 2 * STALE;
        paused.signal("-CONT");
        // The woken process closes her old connection without speaking for her.
        stale.expect_closed().await;
        let after = json!(format!("after-{round}"));
        alice.send(json!({"type": "test/broadcast", "payload": after})).await;
        let mut her = Observer {
            client: alice,
            view: View::default(),
        };
        delivered += read_counting_stale(&mut her, &broadcasted(&name, after.clone())).await;
        delivered += read_counting_stale(&mut bob, &broadcasted(&name, after)).await;
    }
    // Whatever the woken process handed to Redis before it closed was published before anything it sends now: a
    // last broadcast through it ends the count.
    let mut last = link_once_available(paused.port, "carol").await;
    delivered += read_counting_stale(&mut bob, &linked("carol")).await;
    last.send(json!({"type": "test/broadcast", "payload": "last"})).await;
    delivered += read_counting_stale(&mut bob, &broadcasted("carol", json!("last"))).await;
    eprintln!(
        "paused past the lease {ROUNDS} times: {delivered} of {sent} messages from the old connections delivered"
    );
    assert_eq!(
        delivered, 0,
        "messages of connections of a fenced process reached clients"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_restarts_empty_the_processes_start_over_and_clients_relink() {
    let mut redis = redis_or_skip!();
    let ([one, two], mut alice, mut bob) = alice_and_bob(&redis, 10_000).await;
    redis.restart_empty();
    // Both processes notice the new epoch and start over: their clients are closed and relink.
    alice.expect_closed().await;
    bob.expect_closed().await;
    let users = relink_alice_and_bob(&one, &two, 3).await;
    assert_eq!(
        users,
        json!([{"username": "alice", "isLinked": true}, {"username": "bob", "isLinked": true}])
    );
    // Each process started over once: its keep-alive, its subscription and the other process's notices all told of
    // the one restart. Read once two renewals (a third of the lease each) have passed since.
    for node in [&one, &two] {
        assert_eq!(restarts_after_two_renewals(node.port).await, 1.0);
    }
}

/// `krmx_cluster_resyncs_total{kind="restart"}` of the node serving `port`, read once two more renewals of its lease
/// have been timed: a start-over that was still due has happened by then.
async fn restarts_after_two_renewals(port: u16) -> f64 {
    let sample = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    };
    let renewals = |text: &str| sample(text, "krmx_cluster_renew_duration_seconds_count").unwrap_or_default();
    let before = renewals(&emitter_testing::http_get(port, "/metrics").await.body);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = emitter_testing::http_get(port, "/metrics").await.body;
        if renewals(&text) >= before + 2.0 {
            return sample(&text, "krmx_cluster_resyncs_total{kind=\"restart\"}").unwrap_or_default();
        }
        assert!(Instant::now() < deadline, "no renewals: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_cannot_reach_redis_past_its_lease_stops_serving() {
    let mut redis = redis_or_skip!();
    let node = NodeProcess::start(&redis, "n1", 1_000);
    let mut alice = RawClient::link_and_settle(node.port, "alice").await;
    assert_eq!(health_until(node.port, 200).await, "ok\n");
    redis.kill();
    // Within about a lease, with Redis still gone, the process closes its sockets rather than risk a double link,
    // and its health check says why.
    alice.expect_closed().await;
    assert_eq!(health_until(node.port, 503).await, "this node lost its cluster lease\n");
    let refused = RawClient::link_with(node.port, "bob", None)
        .await
        .err()
        .unwrap_or_default();
    assert!(
        refused.starts_with("the cluster is unavailable") || refused == "connection closed",
        "a link without Redis is refused: {refused}"
    );
    // Redis comes back (empty): the process rejoins and serves again.
    redis.start_again();
    Observer::link_when_available(node.port, "alice").await;
    assert_eq!(health_until(node.port, 200).await, "ok\n");
}

/// alice links again on `one` and bob on `two`, each as soon as its process serves again, and the views settle (round
/// `round`) to one, which is returned.
async fn relink_alice_and_bob(one: &NodeProcess, two: &NodeProcess, round: u32) -> Value {
    let mut alice = Observer::link_when_available(one.port, "alice").await;
    let bob = Observer::link_when_available(two.port, "bob").await;
    alice.read_until(&linked("bob")).await;
    settle(&mut [alice, bob], round).await
}

/// Links `username`, trying again while the node is still rejoining its cluster.
async fn link_once_available(port: u16, username: &str) -> RawClient {
    let deadline = Instant::now() + emitter_testing::TIMEOUT;
    loop {
        match RawClient::connect_to(port, "/").await {
            Ok(mut client) => match client.link(username, None).await {
                Ok(()) => return client,
                Err(reason) if Instant::now() < deadline && !reason.starts_with("user ") => {
                    eprintln!("not yet: {reason}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(reason) => panic!("{username} was rejected: {reason}"),
            },
            Err(error) if Instant::now() < deadline => {
                eprintln!("not yet: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("cannot connect: {error}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_shorter_than_the_lease_only_delays() {
    let redis = redis_or_skip!();
    let ([one, _two], mut alice, mut bob) = alice_and_bob(&redis, 5_000).await;
    let sleeper = redis.pause(1.0);
    // A link waits for Redis, then goes through; the broadcast after it keeps its place.
    let mut carol = RawClient::link_as(one.port, "carol").await;
    carol.recv_until(&linked("carol")).await;
    carol
        .send(json!({"type": "test/broadcast", "payload": "after the pause"}))
        .await;
    sleeper.join().unwrap();
    bob.expect_all(&[
        joined("carol"),
        linked("carol"),
        broadcasted("carol", json!("after the pause")),
    ])
    .await;
    alice.recv_until(&broadcasted("carol", json!("after the pause"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_longer_than_the_lease_fences_every_process_and_clients_relink() {
    let redis = redis_or_skip!();
    let ([one, two], mut alice, mut bob) = alice_and_bob(&redis, 1_000).await;
    let sleeper = redis.pause(2.5);
    // Past its lease, a process that cannot reach Redis stops serving rather than risk a double link.
    alice.expect_closed().await;
    bob.expect_closed().await;
    sleeper.join().unwrap();
    relink_alice_and_bob(&one, &two, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pubsub_connections_resubscribe_and_nothing_is_lost() {
    let redis = redis_or_skip!();
    let [one, two] = NodeProcess::start_all(&redis, 10_000);
    let mut bob = Observer::link(two.port, "bob").await;
    let killed = redis.kill_pubsub_clients();
    assert!(killed >= 2, "every process's subscription was killed ({killed})");
    // A link made while process two resubscribes reaches bob anyway: membership is in the log.
    let mut alice = RawClient::link_as(one.port, "alice").await;
    alice.recv_until(&linked("alice")).await;
    bob.read_until(&linked("alice")).await;
    // Broadcasts published while process two's subscription may still be away are not lost: once back, it fetches
    // them from process one's window, and bob gets each once, in order.
    for i in 0..3 {
        alice.send(json!({"type": "test/broadcast-skip", "payload": i})).await;
    }
    bob.read_until(&broadcasted("alice", json!(0))).await;
    for i in 1..3 {
        let frame = loop {
            let frame = bob.client.recv().await;
            bob.view.apply(&frame);
            if frame["type"] == "test/broadcasted" {
                break frame;
            }
        };
        assert_eq!(frame, broadcasted("alice", json!(i)), "each broadcast once, in order");
    }
}

/// The policy endpoint (Replace, a 1 s grace period, messages kept for unlinked users) on three processes: a takeover
/// across processes, messages kept while unlinked found on the process the user relinks on, and the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_hold_across_three_processes() {
    let redis = redis_or_skip!();
    let nodes: [NodeProcess; 3] = NodeProcess::start_all(&redis, 10_000);
    let ports: Vec<u16> = nodes.iter().map(|node| node.policy_port).collect();
    let mut bob = RawClient::link_and_settle(ports[1], "bob").await;
    let mut carol = RawClient::link_and_settle(ports[2], "carol").await;
    bob.expect_all(&[joined("carol"), linked("carol")]).await;
    let mut old = RawClient::link_and_settle(ports[0], "alice").await;
    for observer in [&mut bob, &mut carol] {
        observer.expect_all(&[joined("alice"), linked("alice")]).await;
    }

    // Takeover: alice links on the second process; her link on the first is unlinked and closed with 1000.
    let mut alice = RawClient::link_as(ports[1], "alice").await;
    let everyone = snapshot(&["bob", "carol", "alice"]);
    alice.expect_all(&everyone).await;
    old.expect(unlinked("alice")).await;
    old.expect_close_with(1000, "replaced by a new connection").await;
    for observer in [&mut bob, &mut carol] {
        observer.expect_all(&[unlinked("alice"), linked("alice")]).await;
    }

    // Kept: bob broadcasts while alice is linked nowhere; she relinks on the third process and gets it after her
    // snapshot. carol, on the third process, getting it first shows that process has it.
    alice.close().await;
    for observer in [&mut bob, &mut carol] {
        observer.expect(unlinked("alice")).await;
    }
    bob.send(json!({"type": "test/broadcast", "payload": "while away"}))
        .await;
    bob.expect(broadcasted("bob", json!("while away"))).await;
    carol.expect(broadcasted("bob", json!("while away"))).await;
    let mut alice = RawClient::link_as(ports[2], "alice").await;
    alice.expect_all(&everyone).await;
    alice.expect(broadcasted("bob", json!("while away"))).await;
    for observer in [&mut bob, &mut carol] {
        observer.expect(linked("alice")).await;
    }

    // Grace: alice's connection drops and she does not come back; she leaves everywhere, not before her period.
    let closed = Instant::now();
    alice.close().await;
    for observer in [&mut bob, &mut carol] {
        observer.expect(unlinked("alice")).await;
        observer.expect(left("alice")).await;
    }
    assert!(
        closed.elapsed() >= example_conformance::GRACE_PERIOD,
        "left after {:?}",
        closed.elapsed()
    );
}

/// Asks `GET /health` on `port` until it answers `status`; returns the body.
async fn health_until(port: u16, status: u16) -> String {
    emitter_testing::get_until_status(port, "/health", status).await
}
