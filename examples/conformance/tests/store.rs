//! The state app on one process with Redis as its store (`STATE_REDIS_URL`, no cluster): a process that crashed
//! (SIGKILL) or stopped (SIGTERM) and starts again resumes with the state its clients saw confirmed. Separate OS
//! processes on a throwaway `redis-server`, driven over real WebSockets on loopback.
//!
//! Without `redis-server` on PATH these tests skip with a note, unless `EMITTER_REDIS=1` (CI), where they fail.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use emitter_testing::redis::RedisServer;
use emitter_testing::{redis_or_skip, RawClient, Receive};
use serde_json::{json, Value};

/// The lease of the store's domains: how long a crashed process holds them, at most.
const LEASE_MS: u64 = 1_000;

/// One conformance process keeping its state app in `redis`'s store `store`. Killed and reaped when dropped.
struct Process {
    child: Child,
    port: u16,
}

impl Process {
    fn start(redis: &RedisServer, store: &str) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_example-conformance"))
            .env("PORT", "0")
            .env("CLOSED_PORT", "0")
            .env("POLICY_PORT", "0")
            .env_remove("REDIS_URL")
            .env("STATE_REDIS_URL", redis.url())
            .env("STATE_STORE", store)
            .env("KRMX_LEASE_MS", LEASE_MS.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the conformance server");
        let stdout = child.stdout.take().expect("its stdout");
        let mut process = Process { child, port: 0 };
        let (lines, serving) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = serving.recv_timeout(left).expect("the process did not start serving");
            if let Some(rest) = line.strip_prefix("conformance server: main on ws://localhost:") {
                process.port = rest
                    .split('/')
                    .next()
                    .and_then(|port| port.parse().ok())
                    .expect("a port");
                return process;
            }
        }
    }

    fn signal(&mut self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a linking user's catch-up holds: the atoms, the counter's events (their `by`), the tally's projection.
#[derive(Debug, PartialEq)]
struct CatchUp {
    atoms: Vec<(String, Value)>,
    counter: Vec<Value>,
    tally: Value,
}

/// Links `username` on `port` (again while the last process's link is still held: it was never unlinked) and reads
/// its catch-up, which ends with the tally's `projection/set`.
async fn catch_up(port: u16, username: &str) -> (RawClient, CatchUp) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut client = loop {
        match RawClient::link_with(port, username, None).await {
            Ok(client) => break client,
            Err(error) if Instant::now() < deadline => {
                eprintln!("link {username}: {error}; again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("{username} could not link: {error}"),
        }
    };
    let mut seen = CatchUp {
        atoms: Vec::new(),
        counter: Vec::new(),
        tally: Value::Null,
    };
    loop {
        let frame = client.recv().await;
        match frame["type"].as_str() {
            Some("atom/set") => seen.atoms.push((
                frame["payload"]["key"].as_str().expect("a key").to_owned(),
                frame["payload"]["atom"].clone(),
            )),
            Some("stream/append") if frame["payload"]["domain"] == "counter" => {
                seen.counter.push(frame["payload"]["event"]["payload"]["by"].clone());
            }
            Some("projection/set") if frame["payload"]["domain"] == "tally" => {
                seen.tally = frame["payload"]["projection"].clone();
                seen.atoms.sort_by(|a, b| a.0.cmp(&b.0));
                return (client, seen);
            }
            _ => {}
        }
    }
}

/// Makes changes through `alice` on `port`, each waited for until confirmed: increments 1..=n (their echo), adds of
/// 2 with an id (their delta carrying it), and a set of `alice/last` (its echo).
async fn confirmed_changes(alice: &mut RawClient, from: u64, n: u64) {
    for i in from..from + n {
        alice
            .send(
                json!({ "type": "stream/append", "payload": { "domain": "counter", "dispatcher": "alice",
                "event": { "type": "increment", "payload": { "by": i } } } }),
            )
            .await;
        let echo = alice.recv_type("stream/append").await;
        assert_eq!(echo["payload"]["event"]["payload"]["by"], json!(i));
        let id = format!("add-{i}");
        alice
            .send(json!({ "type": "projection/action", "payload": { "domain": "tally",
                "action": { "type": "add", "payload": { "n": 2 } }, "optimisticId": id } }))
            .await;
        let delta = alice.recv_type("projection/delta").await;
        assert_eq!(delta["payload"]["optimisticId"], json!(id));
        alice
            .send(json!({ "type": "atom/set", "payload": { "key": "alice/last", "atom": i } }))
            .await;
        let set = alice.recv_type("atom/set").await;
        assert_eq!(set["payload"], json!({ "key": "alice/last", "atom": i }));
    }
}

async fn resumes_after(signal: &str) {
    let redis = redis_or_skip!();
    let store = format!("store-{}", signal.trim_start_matches('-').to_lowercase());
    let mut first = Process::start(&redis, &store);
    let (mut alice, _) = catch_up(first.port, "alice").await;
    confirmed_changes(&mut alice, 1, 5).await;
    let (_bob, before) = catch_up(first.port, "bob").await;
    assert_eq!(before.counter, (1..=5).map(|i| json!(i)).collect::<Vec<_>>());
    assert_eq!(before.tally, json!({ "total": 10, "mine": 0, "players": 1 }));
    assert_eq!(before.atoms, vec![("alice/last".to_owned(), json!(5))]);

    first.signal(signal);
    drop(alice);
    let second = Process::start(&redis, &store);
    // A new process: a new Krmx server (nobody linked), the state app's models as the store left them.
    let (mut carol, after) = catch_up(second.port, "carol").await;
    assert_eq!(
        after, before,
        "the restarted process resumes with every confirmed change, once"
    );
    // And carries on from there.
    let (mut alice, _) = catch_up(second.port, "alice").await;
    confirmed_changes(&mut alice, 6, 1).await;
    let echo = carol.recv_type("stream/append").await;
    assert_eq!(echo["payload"]["event"]["payload"]["by"], json!(6));
    let (_dave, last) = catch_up(second.port, "dave").await;
    assert_eq!(last.counter, (1..=6).map(|i| json!(i)).collect::<Vec<_>>());
    assert_eq!(last.tally, json!({ "total": 12, "mine": 0, "players": 1 }));
}

#[tokio::test]
async fn a_process_killed_with_sigkill_resumes_from_its_store() {
    resumes_after("-KILL").await;
}

#[tokio::test]
async fn a_process_stopped_with_sigterm_resumes_from_its_store() {
    resumes_after("-TERM").await;
}
