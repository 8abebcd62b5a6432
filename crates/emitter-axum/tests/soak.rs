//! Churn soak over loopback: thousands of connections link, exchange messages and go, at most a few hundred open at
//! once; afterwards nothing is left behind.
//!
//! The churn runs in rounds of the same size. Proofs that nothing is left: `users()` is empty once the remaining
//! users are kicked; the runtime's count of alive tasks (every connection is a task) is back after each round to where
//! it was before (give or take the one or two the HTTP server starts on its first connection); memory (RSS from
//! `/proc/self/statm`) after the last round is near what it was after the first (the first round takes the allocator
//! and the runtime to their working sizes, so it is the baseline); and `close()` then finishes at once. The tests in
//! this file run one at a time, so that each measures only itself. Run with `--nocapture` to see the figures:
//!
//! ```text
//! cargo test -p emitter-axum --test soak -- --nocapture
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use emitter_core::Server;
use emitter_testing::*;
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// One test at a time: RSS and task counts are per process.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Rounds of churn, and connections opened in each.
const ROUNDS: usize = 3;
const PER_ROUND: usize = 1_000;
/// The most open at once (each is two file descriptors in this process: client and server end).
const OPEN_AT_ONCE: usize = 128;
/// How many distinct usernames the connections link to, so that users are linked again after an unlink.
const USERNAMES: usize = 256;
/// Echoed messages each linking connection sends and waits for.
const MESSAGES_EACH: usize = 5;
/// Tasks the HTTP server may start lazily, on its first connection (axum's graceful-shutdown watcher).
const LAZY_TASKS: usize = 2;

/// The process's resident set size, in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

/// Closes `server`, which must finish within `limit` (`waiting_for` says on what, if it does not); returns how long it
/// took.
async fn close_within(server: &Server, limit: Duration, waiting_for: &str) -> Duration {
    let closing = Instant::now();
    tokio::time::timeout(limit, server.close())
        .await
        .unwrap_or_else(|_| panic!("close() did not finish: {waiting_for}"))
        .unwrap();
    closing.elapsed()
}

/// Waits, bounded, until the runtime has at most `baseline` alive tasks; returns how many there are.
async fn tasks_settle_to(baseline: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive = alive_tasks();
        if alive <= baseline || Instant::now() > deadline {
            return alive;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[derive(Default)]
struct Tally {
    linked: AtomicUsize,
    echoes: AtomicUsize,
    left: AtomicUsize,
    closed: AtomicUsize,
    dropped: AtomicUsize,
    never_linked: AtomicUsize,
}

/// One connection's life; `i` picks how it ends.
async fn one_connection(port: u16, i: usize, tally: Arc<Tally>) {
    let mut client = RawClient::connect(port).await;
    if i % 10 == 9 {
        // Opens, never links, and goes.
        client.close().await;
        tally.never_linked.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // Usernames repeat across the churn (a user who only unlinked is linked again by a later connection).
    let username = format!("user{}", i % USERNAMES);
    match client.link(&username, None).await {
        Ok(()) => {}
        // The same name may still be linked by a connection of the same wave.
        Err(reason) if reason.contains("already linked") => {
            client.close().await;
            return;
        }
        Err(reason) => panic!("{username} was rejected: {reason}"),
    }
    client.recv_until(&linked(&username)).await;
    tally.linked.fetch_add(1, Ordering::Relaxed);
    for n in 0..MESSAGES_EACH {
        let ping = json!({"type": "soak/echo", "payload": [i, n]});
        client.send(ping.clone()).await;
        // Others come and go meanwhile: skip their joined/linked/unlinked/left.
        client.recv_until(&ping).await;
        tally.echoes.fetch_add(1, Ordering::Relaxed);
    }
    match i % 3 {
        0 => {
            client.send(json!({"type": "krmx/leave"})).await;
            client.recv_until(&left(&username)).await;
            client.close().await;
            tally.left.fetch_add(1, Ordering::Relaxed);
        }
        1 => {
            client.close().await;
            tally.closed.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            // Gone without a close frame: the socket just drops.
            drop(client.into_inner());
            tally.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn churn(port: u16, connections: usize, offset: usize) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let permits = Arc::new(Semaphore::new(OPEN_AT_ONCE));
    let mut running = JoinSet::new();
    for i in 0..connections {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let tally = tally.clone();
        running.spawn(async move {
            one_connection(port, offset + i, tally).await;
            drop(permit);
        });
        // Reap as we go, so a failed connection fails the test at once.
        while let Some(done) = running.try_join_next() {
            done.unwrap();
        }
    }
    while let Some(done) = running.join_next().await {
        done.unwrap();
    }
    tally
}

/// Kicks every user still there (those whose connection only unlinked) and checks none is left. Every client has
/// gone by now, but the server may still be handling the last closes: their users are unlinked within seconds.
async fn kick_everyone(server: &Server) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.users().iter().any(|user| user.is_linked) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let users = server.users();
    assert!(
        users.iter().all(|user| !user.is_linked),
        "still linked 10 s after the churn: {users:?}"
    );
    for user in &users {
        server.kick(&user.username).unwrap();
    }
    assert!(server.users().is_empty(), "{:?}", server.users());
    users.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_connections_come_and_go_and_leave_nothing_behind() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (server, events, port) = start(Server::builder().ping_interval(Duration::ZERO)).await;
    server.on_message(|u, m| {
        if m.kind == "soak/echo" {
            let _ = u.send(m);
        }
    });
    // The accept loop and the link-deadline sweeper.
    let tasks_before = alive_tasks();
    assert!(tasks_before <= 4, "{tasks_before} tasks alive before any connection");
    let rss_start = rss_bytes();

    let mut rss_after_round = Vec::new();
    let mut tasks_after_round = Vec::new();
    let mut totals = Tally::default();
    let mut kicked = 0;
    for round in 0..ROUNDS {
        let tally = churn(port, PER_ROUND, round * PER_ROUND).await;
        // Every connection's task is gone (the server's end of each connection is one task, and more while open).
        let settled = match tasks_after_round.first() {
            None => tasks_settle_to(tasks_before + LAZY_TASKS).await,
            Some(after_first) => tasks_settle_to(*after_first).await,
        };
        tasks_after_round.push(settled);
        kicked += kick_everyone(&server).await;
        rss_after_round.push(rss_bytes());
        for (total, part) in [
            (&mut totals.linked, &tally.linked),
            (&mut totals.echoes, &tally.echoes),
            (&mut totals.left, &tally.left),
            (&mut totals.closed, &tally.closed),
            (&mut totals.dropped, &tally.dropped),
            (&mut totals.never_linked, &tally.never_linked),
        ] {
            *total.get_mut() += part.load(Ordering::Relaxed);
        }
    }
    let churned = started.elapsed();

    let lines = events.lines();
    let count = |prefix: &str| lines.iter().filter(|l| l.starts_with(prefix)).count();
    let linked = *totals.linked.get_mut();
    let echoes = *totals.echoes.get_mut();
    let connections = ROUNDS * PER_ROUND;
    eprintln!(
        "soak: {connections} connections in {ROUNDS} rounds ({linked} linked, {} never linked; {} left, {} closed, {} \
         dropped without a close frame), at most {OPEN_AT_ONCE} open at once, in {:.1} s",
        totals.never_linked.get_mut(),
        totals.left.get_mut(),
        totals.closed.get_mut(),
        totals.dropped.get_mut(),
        churned.as_secs_f64(),
    );
    eprintln!(
        "soak: {echoes} messages echoed; events: {} link, {} unlink, {} join, {} leave ({kicked} kicked after the rounds)",
        count("link "),
        count("unlink "),
        count("join "),
        count("leave "),
    );
    let rounds: Vec<String> = rss_after_round.iter().map(|rss| format!("{:.1}", mib(*rss))).collect();
    eprintln!(
        "soak: alive tasks {tasks_before} before, after each round {tasks_after_round:?}; RSS {:.1} MiB at the start, \
         after each round [{}] MiB",
        mib(rss_start),
        rounds.join(", "),
    );

    assert!(linked >= connections / 2, "only {linked} of {connections} linked");
    assert_eq!(echoes, linked * MESSAGES_EACH);
    assert_eq!(count("link "), linked);
    assert_eq!(count("unlink "), linked, "every link ended in an unlink");
    assert_eq!(count("join "), count("leave "), "every user who joined left");
    assert!(
        tasks_after_round[0] <= tasks_before + LAZY_TASKS
            && tasks_after_round.iter().all(|t| *t <= tasks_after_round[0]),
        "tasks alive after each round {tasks_after_round:?}, {tasks_before} before: connections were left behind"
    );
    // Generous: the allocator keeps some memory, but a thousand leaked connections with their buffers would be more.
    let (baseline, last) = (rss_after_round[0], rss_after_round[ROUNDS - 1]);
    assert!(
        last < baseline + 24 * 1024 * 1024,
        "RSS grew from {:.1} MiB after the first round to {:.1} MiB after the last",
        mib(baseline),
        mib(last)
    );

    // Nothing is open, so close() has nothing to wait for.
    let took = close_within(&server, Duration::from_secs(2), "a connection is still open").await;
    eprintln!("soak: close() took {took:?}");
}

/// The same churn's accounting, checked on a smaller run with many users linked at the end: `close()` makes every
/// one of them leave and closes their connections, and returns promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_after_churn_with_users_still_linked_finishes_promptly() {
    let _serial = SERIAL.lock().await;
    let (server, events, port) = start(Server::builder().ping_interval(Duration::ZERO)).await;
    let mut clients = Vec::new();
    for i in 0..150 {
        let mut client = RawClient::link_as(port, &format!("held{i}")).await;
        client.recv_until(&linked(&format!("held{i}"))).await;
        clients.push(client);
    }
    assert_eq!(server.users().len(), 150);
    let took = close_within(&server, Duration::from_secs(5), "150 users to leave").await;
    eprintln!("soak: close() with 150 linked users took {took:?}");
    assert!(server.users().is_empty());
    assert_eq!(events.count("leave held0"), 1);
    let mut ends = JoinSet::new();
    for client in clients {
        ends.spawn(async move {
            let mut ws = client.into_inner();
            // Until the server's close: the remaining frames, then the end of the stream.
            while let Some(Ok(message)) = ws.next().await {
                if matches!(message, WsMessage::Close(_)) {
                    let _ = ws.close(None).await;
                }
            }
        });
    }
    let all = tokio::time::timeout(TIMEOUT, async {
        while let Some(done) = ends.join_next().await {
            done.unwrap();
        }
    });
    all.await.expect("a client never saw its connection end");
}
