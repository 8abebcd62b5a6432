//! The guarantees that hold while several threads drive the core at once: real OS threads, fake connections.
//!
//! Each test states the guarantee it checks. They are written so that a core that breaks the guarantee fails them
//! with high probability even on two cores (each was seen to fail against a deliberately broken build), and they wait
//! on threads, never on time.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use emitter_core::{Message, Server};
use parking_lot::{Condvar, Mutex};
use serde_json::{json, Value};
use support::{connect, kinds, link_request, listening, send, Outbox};

/// Links a new connection to `username` and clears what it received so far.
fn linked(server: &Server, username: &str) -> (emitter_core::transport::ConnectionId, Outbox) {
    let (id, outbox) = connect(server);
    send(server, id, link_request(username));
    assert_eq!(outbox.frames()[0]["type"], "krmx/accepted", "{username}");
    outbox.take();
    (id, outbox)
}

fn broadcast_id(frame: &Value) -> Option<u64> {
    (frame["type"] == "t/b").then(|| frame["payload"].as_u64()).flatten()
}

/// Any two connections that both receive the frames X and Y receive them in the same order: two connections linked
/// throughout receive exactly the same multi-recipient frames, so their streams (less what was sent to one of them
/// only) must be identical, while broadcasts from several threads, broadcasts from message listeners on several
/// connections, and membership changes all race.
#[test]
fn connections_linked_throughout_see_one_order() {
    let server = listening(Server::builder());
    let relay = server.clone();
    server.on_message(move |_, message| {
        let _ = relay.broadcast(message, None);
    });
    let (_, first) = linked(&server, "first");
    let (_, second) = linked(&server, "second");
    first.take();

    let start = Arc::new(Barrier::new(6));
    let mut threads = Vec::new();
    for t in 0..2u64 {
        let (server, start) = (server.clone(), start.clone());
        threads.push(thread::spawn(move || {
            start.wait();
            for n in 0..400u64 {
                let message = Message::with_payload("t/b", serde_json::json!((t * 1_000_000 + n)));
                server.broadcast(&message, None).unwrap();
            }
        }));
    }
    for t in 0..2u64 {
        let (server, start) = (server.clone(), start.clone());
        threads.push(thread::spawn(move || {
            let (id, _) = linked(&server, &format!("talker{t}"));
            start.wait();
            for n in 0..300u64 {
                send(
                    &server,
                    id,
                    json!({"type": "t/b", "payload": 10_000_000 + t * 1_000_000 + n}),
                );
            }
        }));
    }
    {
        let (server, start) = (server.clone(), start.clone());
        threads.push(thread::spawn(move || {
            start.wait();
            for round in 0..60 {
                let (id, _) = connect(&server);
                send(&server, id, link_request(&format!("churn{}", round % 3)));
                send(&server, id, json!({"type": "krmx/leave"}));
                server.host().disconnect(id);
            }
        }));
    }
    {
        let (server, start) = (server.clone(), start.clone());
        threads.push(thread::spawn(move || {
            start.wait();
            for n in 0..300u64 {
                let _ = server.send("first", &Message::with_payload("t/only-first", serde_json::json!(n)));
            }
        }));
    }
    for thread in threads {
        thread.join().unwrap();
    }
    let first: Vec<Value> = first
        .take()
        .into_iter()
        .filter(|f| f["type"] != "t/only-first")
        .collect();
    let second = second.take();
    assert_eq!(first.iter().filter_map(broadcast_id).count(), 2 * 400 + 2 * 300);
    assert!(first.len() > 1_400, "membership frames are in the streams too");
    if first != second {
        let at = first.iter().zip(&second).position(|(a, b)| a != b);
        panic!("the two streams differ first at frame {at:?}");
    }
}

/// A broadcast reaches exactly the users linked at one instant: a connection that links and unlinks over and over
/// while one thread broadcasts numbered messages gets, in each of its link sessions, a run of consecutive numbers
/// that starts after its snapshot and stops at its own unlink; a connection linked throughout gets every number in
/// order.
#[test]
fn a_newcomer_gets_every_broadcast_after_its_snapshot_and_none_before() {
    // Room for any backlog: the observer reads only at the end.
    let server = listening(Server::builder().outbound_queue(usize::MAX).outbound_budget(usize::MAX));
    let (_, observer) = linked(&server, "observer");
    let stop = Arc::new(AtomicBool::new(false));
    let broadcaster = {
        let (server, stop) = (server.clone(), stop.clone());
        thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                server
                    .broadcast(&Message::with_payload("t/b", serde_json::json!(n)), None)
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    // Sessions until enough of them overlapped the broadcasts (on a busy machine the broadcaster may start late).
    let mut sessions = Vec::new();
    let mut overlapping = 0;
    while overlapping < 200 && sessions.len() < 200_000 {
        let (id, outbox) = connect(&server);
        send(&server, id, link_request("newbie"));
        thread::yield_now();
        send(&server, id, json!({"type": "krmx/unlink"}));
        server.host().disconnect(id);
        let frames = outbox.take();
        overlapping += usize::from(frames.iter().any(|f| broadcast_id(f).is_some()));
        sessions.push(frames);
    }
    stop.store(true, Ordering::SeqCst);
    let broadcasts = broadcaster.join().unwrap();

    let seen: Vec<u64> = observer.take().iter().filter_map(broadcast_id).collect();
    let first_wrong = seen.iter().enumerate().position(|(at, n)| *n != at as u64);
    assert_eq!(
        (seen.len() as u64, first_wrong),
        (broadcasts, None),
        "the observer got every broadcast in order"
    );
    for frames in &sessions {
        let names = kinds(frames);
        assert_eq!(names[0], "krmx/accepted");
        let linked_at = names.iter().position(|n| n == "krmx/linked newbie").unwrap();
        let unlinked_at = names.iter().position(|n| n == "krmx/unlinked newbie").unwrap();
        let ids: Vec<(usize, u64)> = frames
            .iter()
            .enumerate()
            .filter_map(|(at, f)| broadcast_id(f).map(|id| (at, id)))
            .collect();
        for &(at, _) in &ids {
            assert!(
                at > linked_at && at < unlinked_at,
                "a broadcast outside the session: {names:?}"
            );
        }
        for pair in ids.windows(2) {
            assert_eq!(pair[1].1, pair[0].1 + 1, "a gap in a session's broadcasts");
        }
    }
    assert!(
        overlapping >= 200,
        "only {overlapping} sessions overlapped the broadcasts"
    );
}

/// Nothing reaches a connection after it heard of its own unlink (until it links again): sends race with the unlink.
#[test]
fn no_send_lands_after_the_unlink() {
    // Room for any backlog: the target reads only at the end.
    let server = listening(Server::builder().outbound_queue(usize::MAX).outbound_budget(usize::MAX));
    let (id, outbox) = linked(&server, "target");
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..2)
        .map(|_| {
            let (server, stop, sent) = (server.clone(), stop.clone(), sent.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if server.send("target", &Message::new("t/send")).is_ok() {
                        sent.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    // Unlink and relink until the senders got plenty through (on a busy machine they may start late).
    let mut cycles = 0;
    while cycles < 2_000 || (sent.load(Ordering::SeqCst) < 1_000 && cycles < 1_000_000) {
        server.unlink("target").unwrap();
        send(&server, id, link_request("target"));
        cycles += 1;
    }
    stop.store(true, Ordering::SeqCst);
    for sender in senders {
        sender.join().unwrap();
    }
    let names = kinds(&outbox.take());
    let mut linked = true;
    let mut sends = 0;
    for name in &names {
        match name.as_str() {
            "krmx/unlinked target" => linked = false,
            "krmx/accepted" => linked = true,
            "t/send" => {
                assert!(linked, "a send landed on an unlinked connection");
                sends += 1;
            }
            _ => {}
        }
    }
    assert_eq!(
        sends,
        sent.load(Ordering::SeqCst),
        "every successful send landed, and only those"
    );
    assert!(sends > 0);
}

/// Waits until `count` reaches `target`, or `limit` passes; returns whether it did.
fn wait_for(count: &(Mutex<usize>, Condvar), target: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut now = count.0.lock();
    while *now < target {
        if count.1.wait_until(&mut now, deadline).timed_out() {
            return *now >= target;
        }
    }
    true
}

/// Runs `work` for each of `items` on a thread of its own, with its own handle to `server`; returns when all are done.
fn in_parallel<I: Send + 'static>(
    server: &Server,
    items: impl IntoIterator<Item = I>,
    work: impl Fn(Server, I) + Clone + Send + 'static,
) {
    let threads: Vec<_> = items
        .into_iter()
        .map(|item| {
            let (server, work) = (server.clone(), work.clone());
            thread::spawn(move || work(server, item))
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

/// `message` listeners of different users run at the same time: each listener waits until the other user's listener
/// is running too. With one lock around message handling the second could never start, and both would time out.
#[test]
fn message_listeners_of_different_users_run_in_parallel() {
    let server = listening(Server::builder());
    let running: Arc<(Mutex<usize>, Condvar)> = Arc::default();
    let met = Arc::new(AtomicUsize::new(0));
    {
        let (running, met) = (running.clone(), met.clone());
        server.on_message(move |_, _| {
            *running.0.lock() += 1;
            running.1.notify_all();
            if wait_for(&running, 2, Duration::from_secs(10)) {
                met.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let ids: Vec<_> = ["ann", "bob"].iter().map(|name| linked(&server, name).0).collect();
    in_parallel(&server, ids, |server, id| send(&server, id, json!({"type": "t/wait"})));
    assert_eq!(
        met.load(Ordering::SeqCst),
        2,
        "the two listeners never ran at the same time"
    );
}

/// One user's messages are handled one at a time and in order, even when the user relinks on another connection
/// while a message from the old one is still being handled; messages from one connection keep their order.
#[test]
fn one_user_one_message_at_a_time_across_relinks() {
    let server = listening(Server::builder());
    let in_flight = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let seen: Arc<Mutex<HashMap<u64, Vec<u64>>>> = Arc::default();
    {
        let (in_flight, overlaps, seen) = (in_flight.clone(), overlaps.clone(), seen.clone());
        server.on_message(move |_, message| {
            if in_flight.fetch_add(1, Ordering::SeqCst) > 0 {
                overlaps.fetch_add(1, Ordering::SeqCst);
            }
            let [connection, n] = message.payload_as::<[u64; 2]>().unwrap();
            seen.lock().entry(connection).or_default().push(n);
            thread::yield_now();
            in_flight.fetch_sub(1, Ordering::SeqCst);
        });
    }
    in_parallel(&server, 0..2u64, |server, c| {
        let (id, _) = connect(&server);
        for n in 0..3_000u64 {
            if n % 50 == 0 {
                // Take the user over: unlink whoever has it, link this connection.
                let _ = server.unlink("solo");
                send(&server, id, link_request("solo"));
            }
            send(&server, id, json!({"type": "t/n", "payload": [c, n]}));
        }
    });
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "two messages of one user were handled at once"
    );
    let seen = seen.lock();
    assert!(seen.values().map(Vec::len).sum::<usize>() > 100);
    for numbers in seen.values() {
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "a connection's messages out of order"
        );
    }
}

// ---- many threads, random actions, every invariant ----------------------------------------------------------------

/// A tiny deterministic random source (xorshift), one per thread.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const NAMES: [&str; 5] = ["ann", "bob", "cat", "dan", "eve"];

/// A connection as its own frames describe it: whom it is linked to, and its view of the users.
#[derive(Default)]
struct View {
    linked_as: Option<String>,
    last_self: Option<String>,
    users: BTreeMap<String, (usize, bool)>,
    order: usize,
}

impl View {
    /// Applies frame number `at`, panicking where it breaks the protocol's promises to this connection. `accepted`
    /// says which user each `krmx/accepted` frame (by number) was for.
    fn apply(&mut self, at: usize, frame: &Value, accepted: &HashMap<usize, String>) {
        let kind = frame["type"].as_str().unwrap();
        let name = frame["payload"]["username"].as_str().map(str::to_owned);
        match (kind, name) {
            ("krmx/accepted", _) => {
                assert!(self.linked_as.is_none(), "accepted while linked");
                self.linked_as = Some(accepted[&at].clone());
                self.users.clear();
            }
            ("krmx/rejected", _) => {}
            ("krmx/left", Some(name)) if self.linked_as.is_none() => {
                // The leave about itself, after its own unlink: the one frame an unlinked connection may get.
                assert_eq!(
                    Some(&name),
                    self.last_self.as_ref(),
                    "left about another user while unlinked"
                );
            }
            (_, _) if self.linked_as.is_none() => panic!("{frame} reached an unlinked connection"),
            ("krmx/joined", Some(name)) => {
                self.order += 1;
                assert!(self.users.insert(name, (self.order, false)).is_none(), "joined twice");
            }
            ("krmx/linked", Some(name)) => {
                let user = self.users.get_mut(&name).expect("linked before joined");
                assert!(!user.1, "linked twice");
                user.1 = true;
            }
            ("krmx/unlinked", Some(name)) => {
                let user = self.users.get_mut(&name).expect("unlinked a stranger");
                assert!(user.1, "unlinked while unlinked");
                user.1 = false;
                if self.linked_as.as_deref() == Some(name.as_str()) {
                    self.last_self = self.linked_as.take();
                }
            }
            ("krmx/left", Some(name)) => {
                let user = self.users.remove(&name).expect("left a stranger");
                assert!(!user.1, "left while linked");
            }
            _ => {}
        }
    }

    fn users(&self) -> Vec<(String, bool)> {
        let mut users: Vec<(usize, String, bool)> = self
            .users
            .iter()
            .map(|(name, (order, linked))| (*order, name.clone(), *linked))
            .collect();
        users.sort();
        users.into_iter().map(|(_, name, linked)| (name, linked)).collect()
    }
}

/// One connection a thread drives: its frames, and which user each of its `krmx/accepted` frames was for.
#[derive(Clone)]
struct Driven {
    outbox: Outbox,
    accepted: Arc<Mutex<HashMap<usize, String>>>,
}

impl Driven {
    /// Sends a link request and notes whom an `krmx/accepted` it caused is for. Only this connection's own requests
    /// cause one, and (without async authentication) within this call.
    fn link(&self, server: &Server, id: emitter_core::transport::ConnectionId, name: &str) {
        let before = self.outbox.frames().len();
        send(server, id, link_request(name));
        let frames = self.outbox.frames();
        if let Some(at) = (before..frames.len()).find(|&at| frames[at]["type"] == "krmx/accepted") {
            self.accepted.lock().insert(at, name.to_owned());
        }
    }
}

/// Several threads link, unlink, leave, message, join, kick and broadcast at random on one server (message listeners
/// call back into it too). Once quiet: a user is linked to at most one connection and a connection to at most one
/// user; every linked connection's view, rebuilt from its frames, equals `users()`; every user's events come in the
/// order join → link → (unlink → link)* → unlink → leave; nothing reached an unlinked connection but the replies to
/// its own requests and the leave about itself.
#[test]
fn random_actions_from_many_threads_keep_every_invariant() {
    let runs: u64 = std::env::var("CONCURRENCY_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    for run in 0..runs {
        one_random_run(0x9e37_79b9_7f4a_7c15 ^ run.wrapping_mul(0x1000_0001));
    }
}

fn one_random_run(seed: u64) {
    let server = listening(Server::builder());
    let events = support::record(&server);
    let s = server.clone();
    server.on_message(move |username, message| {
        let target = message.payload.as_ref().and_then(Value::as_str).unwrap_or("ann");
        let _ = match message.kind.as_str() {
            "do/kick" => s.kick(target),
            "do/unlink" => s.unlink(target),
            "do/join" => s.join(target),
            "do/send" => s.send(target, &Message::new("t/sent")),
            _ => s
                .broadcast(&Message::with_payload("t/said", serde_json::json!(username)), None)
                .map(drop),
        };
    });
    let driven: Arc<Mutex<Vec<Driven>>> = Arc::default();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (server, driven) = (server.clone(), driven.clone());
            thread::spawn(move || {
                let mut rng = Rng(seed ^ (t + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
                let mut mine: Vec<(emitter_core::transport::ConnectionId, Driven)> = Vec::new();
                for _ in 0..300 {
                    let name = NAMES[rng.below(NAMES.len() as u64) as usize];
                    match rng.below(12) {
                        0 | 1 if mine.len() < 3 => {
                            let (id, outbox) = connect(&server);
                            let one = Driven {
                                outbox,
                                accepted: Arc::default(),
                            };
                            driven.lock().push(one.clone());
                            mine.push((id, one));
                        }
                        0..=4 if !mine.is_empty() => {
                            let (id, one) = &mine[rng.below(mine.len() as u64) as usize];
                            one.link(&server, *id, name);
                        }
                        5 if !mine.is_empty() => {
                            let (id, _) = &mine[rng.below(mine.len() as u64) as usize];
                            send(&server, *id, json!({"type": "krmx/unlink"}));
                        }
                        6 if !mine.is_empty() => {
                            let (id, _) = &mine[rng.below(mine.len() as u64) as usize];
                            send(&server, *id, json!({"type": "krmx/leave"}));
                        }
                        7 | 8 if !mine.is_empty() => {
                            let (id, _) = &mine[rng.below(mine.len() as u64) as usize];
                            let kind = ["do/kick", "do/unlink", "do/join", "do/send", "t/say"][rng.below(5) as usize];
                            send(&server, *id, json!({"type": kind, "payload": name}));
                        }
                        9 if !mine.is_empty() => {
                            let (id, _) = mine.swap_remove(rng.below(mine.len() as u64) as usize);
                            server.host().disconnect(id);
                        }
                        10 => {
                            let _ = server.kick(name);
                        }
                        _ => {
                            let _ = server.join(name);
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }

    // Users: one connection each, and each linked connection's view equals users().
    let users: Vec<(String, bool)> = server.users().into_iter().map(|u| (u.username, u.is_linked)).collect();
    let mut linked_connections: HashMap<String, usize> = HashMap::new();
    for one in driven.lock().iter() {
        let mut view = View::default();
        let accepted = one.accepted.lock();
        for (at, frame) in one.outbox.frames().iter().enumerate() {
            // Application frames (t/said, t/sent) only need the connection to be linked, which `apply` checks.
            view.apply(at, frame, &accepted);
        }
        if let Some(name) = &view.linked_as {
            *linked_connections.entry(name.clone()).or_default() += 1;
            assert_eq!(view.users(), users, "a linked connection's view differs from users()");
        }
    }
    for (name, is_linked) in &users {
        let count = linked_connections.get(name).copied().unwrap_or(0);
        assert_eq!(
            count,
            usize::from(*is_linked),
            "{name} is linked to {count} connections"
        );
    }
    // Per user: join → link → (unlink → link)* → unlink → leave.
    let mut stage: HashMap<String, &str> = HashMap::new();
    for line in events.lock().iter() {
        let Some((event, name)) = line.split_once(' ') else {
            continue;
        };
        let now = stage.get(name).copied().unwrap_or("gone");
        let next = match (now, event) {
            ("gone", "join") => "joined",
            ("joined" | "unlinked", "link") => "linked",
            ("linked", "unlink") => "unlinked",
            ("joined" | "unlinked", "leave") => "gone",
            _ => panic!("{name}: {event} while {now}"),
        };
        stage.insert(name.to_owned(), next);
    }
    for (name, is_linked) in &users {
        let want = if *is_linked { "linked" } else { "joined or unlinked" };
        let now = stage.get(name.as_str()).copied().unwrap_or("gone");
        assert!(want.contains(now), "{name}: users() says {want}, its events say {now}");
    }
}
