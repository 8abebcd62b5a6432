//! The hand-offs between the message path and the membership path, under a randomized concurrency checker.
//!
//! With the `shuttle` feature the core's locks are shuttle's (`src/sync.rs`), and [shuttle](https://docs.rs/shuttle)
//! runs each scenario many times, each time switching threads at different lock operations (random and PCT
//! schedules), so interleavings that real threads hit once in a million runs come up within a few hundred. Each
//! scenario is small on purpose: two or three threads, a handful of steps.
//!
//! `cargo test -p emitter-core --features shuttle --test shuttle` (`SHUTTLE_ITERATIONS` to change the 1,000 runs per
//! scheduler).
#![cfg(feature = "shuttle")]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use emitter_core::transport::ConnectionId;
use emitter_core::{Message, Server};
use serde_json::{json, Value};
use shuttle::thread;
use support::{kinds, link_attempt, listening, send, Outbox};

fn iterations() -> usize {
    std::env::var("SHUTTLE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}

/// Runs `scenario` on a fresh listening server, under a random scheduler and under PCT (which finds bugs that need a
/// few specific preemptions).
fn check(scenario: fn(Server)) {
    let run = move || scenario(listening(Server::builder()));
    shuttle::check_random(run, iterations());
    shuttle::check_pct(run, iterations(), 3);
}

/// A new connection linked as `username`.
fn linked(server: &Server, username: &str) -> (ConnectionId, Outbox) {
    let (id, outbox) = link_attempt(server, username);
    let frames = outbox.take();
    assert_eq!(frames[0]["type"], "krmx/accepted", "{frames:?}");
    (id, outbox)
}

/// Runs `work` on a new (checked) thread with its own handle to `server`.
fn spawn_with<T: Send + 'static>(
    server: &Server,
    work: impl FnOnce(Server) -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let server = server.clone();
    thread::spawn(move || work(server))
}

/// Runs `background` on a second thread while `foreground` runs on this one; returns what `foreground` returned, once
/// both are done.
fn race<T>(server: &Server, background: impl FnOnce(Server) + Send + 'static, foreground: impl FnOnce() -> T) -> T {
    let other = spawn_with(server, background);
    let result = foreground();
    other.join().unwrap();
    result
}

/// A connection linked as `watcher`, then a new one linking as `newcomer` while `background` runs; returns the
/// watcher's and the newcomer's outboxes.
fn link_racing(
    server: &Server,
    watcher: &str,
    newcomer: &str,
    background: impl FnOnce(Server) + Send + 'static,
) -> (Outbox, Outbox) {
    let (_, watcher) = linked(server, watcher);
    let (_, newcomer) = race(server, background, || link_attempt(server, newcomer));
    (watcher, newcomer)
}

fn numbered(n: u64) -> Message {
    Message::with_payload("t/b", serde_json::json!(n))
}

fn broadcast_ids(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f["type"] == "t/b")
        .filter_map(|f| f["payload"].as_u64())
        .collect()
}

/// Two connections linked throughout get the same frames in the same order, while two threads broadcast and a third
/// links and unlinks a user (whose membership messages both get too).
#[test]
fn recipients_agree_on_the_order() {
    check(|server| {
        let (_, a) = linked(&server, "ann");
        let (_, b) = linked(&server, "bob");
        a.take();
        let threads = [
            spawn_with(&server, |server| {
                server.broadcast(&numbered(1), None).unwrap();
                server.broadcast(&numbered(2), None).unwrap();
            }),
            spawn_with(&server, |server| {
                server.broadcast(&numbered(3), None).map(drop).unwrap()
            }),
            spawn_with(&server, |server| {
                let (id, _) = link_attempt(&server, "cat");
                send(&server, id, json!({"type": "krmx/unlink"}));
            }),
        ];
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(a.take(), b.take());
    });
}

/// A newcomer gets exactly the broadcasts made after its link, after its snapshot, and none of those before.
#[test]
fn a_newcomer_gets_the_broadcasts_after_its_snapshot() {
    check(|server| {
        let (observer, newbie) = link_racing(&server, "observer", "newbie", |server| {
            for n in 0..3 {
                server.broadcast(&numbered(n), None).unwrap();
            }
        });
        assert_eq!(broadcast_ids(&observer.take()), [0, 1, 2]);
        let frames = newbie.take();
        let names = kinds(&frames);
        let snapshot_end = names.iter().position(|n| n == "krmx/linked newbie").unwrap();
        assert!(frames[..snapshot_end].iter().all(|f| f["type"] != "t/b"), "{names:?}");
        let got = broadcast_ids(&frames);
        // Every broadcast after the first one it got reached it too: a suffix of 0, 1, 2.
        let first = got.first().copied().unwrap_or(3);
        assert_eq!(got, (first..3).collect::<Vec<_>>());
    });
}

/// A send racing an unlink lands before the connection hears of its unlink, or fails; never after.
#[test]
fn a_send_never_lands_after_the_unlink() {
    check(|server| {
        let (_, target) = linked(&server, "target");
        race(
            &server,
            |server| {
                for _ in 0..2 {
                    let _ = server.send("target", &Message::new("t/send"));
                }
            },
            || server.unlink("target").unwrap(),
        );
        let names = kinds(&target.take());
        let unlinked = names.iter().position(|n| n == "krmx/unlinked target").unwrap();
        assert!(names[unlinked..].iter().all(|n| n != "t/send"), "{names:?}");
    });
}

/// Of two connections linking one name at once, exactly one is accepted; the other gets the reference's reason.
#[test]
fn two_links_of_one_name_accept_one() {
    check(|server| {
        let attempts: Vec<_> = (0..2)
            .map(|_| spawn_with(&server, |server| link_attempt(&server, "same").1.take()))
            .collect();
        let replies: Vec<Value> = attempts.into_iter().map(|t| t.join().unwrap()[0].clone()).collect();
        let accepted = replies.iter().filter(|r| r["type"] == "krmx/accepted").count();
        assert_eq!(accepted, 1, "{replies:?}");
        assert!(replies
            .iter()
            .any(|r| r["payload"]["reason"] == "user same is already linked to a connection"));
        assert_eq!(server.users().len(), 1);
    });
}

/// One user's messages are handled one at a time, even when it relinks on another connection while a message from
/// the old one is in its listener.
#[test]
fn one_message_of_a_user_at_a_time_across_a_relink() {
    check(|server| {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let overlaps = Arc::new(AtomicUsize::new(0));
        {
            let (in_flight, overlaps) = (in_flight.clone(), overlaps.clone());
            // Counted rather than asserted here: a panic in a listener is caught and logged by the server.
            server.on_message(move |_, _| {
                if in_flight.fetch_add(1, Ordering::SeqCst) > 0 {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                // A listener that takes a while (many points to switch at) gives the relink time to happen.
                for _ in 0..50 {
                    thread::yield_now();
                }
                in_flight.fetch_sub(1, Ordering::SeqCst);
            });
        }
        let (old, _) = linked(&server, "solo");
        race(
            &server,
            move |server| {
                send(&server, old, json!({"type": "t/x"}));
                send(&server, old, json!({"type": "t/x"}));
            },
            || {
                let _ = server.unlink("solo");
                let (new, _) = link_attempt(&server, "solo");
                send(&server, new, json!({"type": "t/x"}));
            },
        );
        assert_eq!(overlaps.load(Ordering::SeqCst), 0, "two messages of one user at once");
    });
}

/// A kick racing a link leaves every linked connection's view equal to `users()`.
#[test]
fn a_kick_racing_a_link_leaves_consistent_views() {
    check(|server| {
        let (watcher, newcomer) = link_racing(&server, "watcher", "kim", |server| {
            let _ = server.kick("kim");
        });
        let users: Vec<String> = server.users().into_iter().map(|u| u.username).collect();
        let watched = kinds(&watcher.take());
        let k_present = watched.iter().filter(|n| *n == "krmx/joined kim").count()
            > watched.iter().filter(|n| *n == "krmx/left kim").count();
        assert_eq!(k_present, users.contains(&"kim".to_owned()), "{watched:?} vs {users:?}");
        let mine = kinds(&newcomer.take());
        if users.contains(&"kim".to_owned()) {
            assert!(mine.iter().any(|n| n == "krmx/linked kim"));
        }
    });
}
