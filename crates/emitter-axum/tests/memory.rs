//! A client that stops reading pins no memory, run after run.
//!
//! Over loopback against a real server: one linked user stops reading its socket (its kernel buffers fill), another
//! sends 1 KiB chat messages that the server broadcasts, as fast as the server takes them, for a few seconds, and a
//! third watches. The stalled user must be cut and unlinked, the watcher must get every broadcast, and the process's
//! resident memory (`VmRSS` in `/proc/self/status`: the server runs in this process) must stay bounded and come back:
//! three runs against one server each end within 64 MiB of where the first began, and none grows more than 64 MiB.
//!
//! Its own test binary (one test), so that nothing else running in the process moves its RSS. The bounds are on
//! memory, not speed: a loaded machine sends fewer messages, it does not fail. Run with `--nocapture` for the figures:
//!
//! ```text
//! cargo test -p emitter-axum --test memory -- --nocapture
//! ```

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emitter_core::{Event, Server};
use emitter_testing::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const MIB: i64 = 1 << 20;
/// How far memory may grow in a run, and how far above where the first run began each run may end.
const BOUND: i64 = 64 * MIB;
const RUNS: usize = 3;
/// How long each run broadcasts (longer if the stalled user is still linked by then).
const BROADCAST_FOR: Duration = Duration::from_secs(4);
/// How many messages the sender may be ahead of the watcher: the watcher reads in the same process on a shared
/// machine, and must not itself fall a budget behind.
const AHEAD: u64 = 256;

/// The process's resident set, in bytes.
fn rss() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status is readable");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("a VmRSS line");
    let kib: i64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in kB");
    kib * 1024
}

/// The users unlinked so far, to wait on.
#[derive(Default)]
struct Unlinks {
    names: Mutex<HashSet<String>>,
    changed: Notify,
}

impl Unlinks {
    fn has(&self, name: &str) -> bool {
        self.names.lock().unwrap().contains(name)
    }

    async fn wait(&self, name: &str) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.has(name) {
                return;
            }
            changed.await;
        }
    }
}

/// Polls `condition` (cheap, on the server's own counters) until it holds, failing after `limit`.
async fn until(limit: Duration, what: &str, condition: impl Fn() -> bool) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while !condition() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tick.tick().await;
    }
}

fn open_connections(server: &Server) -> u64 {
    let text = server.metrics_text();
    text.lines()
        .find_map(|line| line.strip_prefix("krmx_connections_open "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_pins_no_memory_run_after_run() {
    // Pings every second: a writer that meets a full socket with a ping due must not stay there (nor pin the log).
    // Not shorter: the sender's pongs queue behind its messages, and a loaded machine reads them slowly.
    let server = Server::builder().ping_interval(Duration::from_secs(1)).build();
    let unlinks = Arc::new(Unlinks::default());
    let u = unlinks.clone();
    server.on_any(move |_, event| {
        if let Event::Unlink { username } = event {
            u.names.lock().unwrap().insert((*username).to_owned());
            u.changed.notify_waiters();
        }
    });
    server.on_message(|u, m| {
        if m.kind == "chat/say" {
            let _ = u.server().broadcast(m, Some(&u));
        }
    });
    let port = listen(&server).await;

    // The watcher reads everything, all along, and counts the chat messages.
    let watcher = RawClient::link_and_settle(port, "watcher").await.into_inner();
    let (_watcher_sink, mut watcher_stream) = watcher.split();
    let received = Arc::new(AtomicU64::new(0));
    let read = Arc::new(Notify::new());
    let watching = {
        let (received, read) = (received.clone(), read.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = watcher_stream.next().await {
                if let WsMessage::Text(text) = message {
                    if text.as_str().contains("chat/say") {
                        received.fetch_add(1, Ordering::Relaxed);
                        read.notify_one();
                    }
                }
            }
        })
    };

    // Samples the resident set while the runs go on, for each run's peak.
    let peak = Arc::new(AtomicI64::new(rss()));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let payload = "x".repeat(1024);
    let first = rss();
    let mut sent = 0u64;
    for run in 0..RUNS {
        let began = rss();
        peak.store(began, Ordering::Relaxed);
        let stalled_name = format!("stalled-{run}");
        // Linked, then never read again.
        let stalled = RawClient::link_and_settle(port, &stalled_name).await.into_inner();
        let sender_name = format!("sender-{run}");
        let (mut sink, mut stream) = RawClient::link_and_settle(port, &sender_name)
            .await
            .into_inner()
            .split();
        // The sender reads what comes (pings), so that only the stalled user stops reading.
        let draining = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });

        let text = json!({"type": "chat/say", "payload": payload}).to_string();
        let started = Instant::now();
        let sent_before = sent;
        while started.elapsed() < BROADCAST_FOR || !unlinks.has(&stalled_name) {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{stalled_name} was not unlinked within 15 s"
            );
            // As fast as the server takes them, but never more than AHEAD ahead of the watcher.
            while sent - received.load(Ordering::Relaxed) >= AHEAD {
                let notified = read.notified();
                if sent - received.load(Ordering::Relaxed) < AHEAD {
                    break;
                }
                within("the watcher to read", notified).await;
            }
            sink.feed(WsMessage::text(text.clone())).await.unwrap();
            sent += 1;
            if sent % 32 == 0 {
                sink.flush().await.unwrap();
            }
        }
        sink.flush().await.unwrap();
        within("the stalled user's unlink", unlinks.wait(&stalled_name)).await;

        // The watcher got every message of the run, the ones after the stalled user was cut included.
        until(Duration::from_secs(10), "the watcher to get every message", || {
            received.load(Ordering::Relaxed) == sent
        })
        .await;
        assert!(server.user("watcher").unwrap().is_linked);

        // The run ends: the sender goes, the stalled socket is dropped, and the server lets go of both.
        sink.close().await.ok();
        drop(stalled);
        draining.await.ok();
        until(Duration::from_secs(10), "the run's connections to close", || {
            open_connections(&server) == 1
        })
        .await;

        let ended = rss();
        let grew = peak.load(Ordering::Relaxed) - began;
        eprintln!(
            "run {run}: {} messages of 1 KiB in {:.1} s; RSS began at {:.1} MiB, peaked {:.1} MiB higher, ended \
             {:+.1} MiB from where the first run began",
            sent - sent_before,
            started.elapsed().as_secs_f64(),
            began as f64 / MIB as f64,
            grew as f64 / MIB as f64,
            (ended - first) as f64 / MIB as f64,
        );
        assert!(grew <= BOUND, "run {run} grew {} MiB", grew / MIB);
        assert!(
            ended - first <= BOUND,
            "run {run} ended {} MiB above where the first began",
            (ended - first) / MIB
        );
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    watching.abort();
}
