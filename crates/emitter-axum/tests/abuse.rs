//! Abusive clients over loopback, and what a well-behaved user sees meanwhile: its round trip through an echo
//! listener, measured before and during the abuse.
//!
//! - Slow readers: twenty linked clients that never read while the server broadcasts to them as fast as it can. Each
//!   fills its socket, then its outgoing queue, and is closed as a slow consumer; the echo user is not held up.
//! - A flood: one client sends as fast as it can, with no rate limit; the echo user is still served.
//! - The same flood against a rate limit: the flooder is closed after its burst, the echo user carries on.
//!
//! The bounds are generous (debug builds, a shared machine): they catch a server that blocks or starves, not a slow
//! one. Run with `--nocapture` to see the figures:
//!
//! ```text
//! cargo test -p emitter-axum --test abuse -- --nocapture
//! ```

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use emitter_core::{Message, Server, ServerBuilder};
use emitter_testing::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// The tests measure latency: one at a time, so that they do not load each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Round trips taken before the abuse starts.
const BASELINE_SAMPLES: usize = 50;
/// Median round trip allowed during the abuse, and the slowest.
const MEDIAN_BOUND: Duration = Duration::from_millis(100);
const MAX_BOUND: Duration = Duration::from_millis(1_500);

struct Latencies(Vec<Duration>);

impl Latencies {
    fn sorted(&self) -> Vec<Duration> {
        let mut sorted = self.0.clone();
        sorted.sort();
        sorted
    }

    fn quantile(&self, q: f64) -> Duration {
        let sorted = self.sorted();
        sorted[((sorted.len() - 1) as f64 * q).round() as usize]
    }

    fn median(&self) -> Duration {
        self.quantile(0.5)
    }

    fn max(&self) -> Duration {
        self.sorted().last().copied().unwrap_or_default()
    }

    fn describe(&self) -> String {
        format!(
            "{} round trips: median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.0.len(),
            self.median().as_secs_f64() * 1e3,
            self.quantile(0.99).as_secs_f64() * 1e3,
            self.max().as_secs_f64() * 1e3
        )
    }
}

/// A server whose echo listener sends `echo/ping` messages back to their sender.
async fn echo_server(builder: ServerBuilder) -> (Server, Recorder, u16) {
    let (server, events, port) = start(builder).await;
    server.on_message(|u, m| {
        if m.kind == "echo/ping" {
            let _ = u.send(m);
        }
    });
    (server, events, port)
}

/// One round trip through the echo listener; other users' comings and goings in between are skipped.
async fn round_trip(client: &mut RawClient, tag: &str, n: usize) -> Duration {
    let ping = json!({"type": "echo/ping", "payload": format!("{tag}-{n}")});
    let sent = Instant::now();
    client.send(ping.clone()).await;
    client.recv_until(&ping).await;
    sent.elapsed()
}

async fn baseline(client: &mut RawClient) -> Latencies {
    let mut samples = Vec::new();
    for n in 0..BASELINE_SAMPLES {
        samples.push(round_trip(client, "before", n).await);
    }
    Latencies(samples)
}

/// Takes round trips until `done` is set (at least `min` of them), at most one per `pace`.
async fn during(client: &mut RawClient, done: &AtomicBool, min: usize, pace: Duration) -> Latencies {
    let mut samples = Vec::new();
    let mut ticks = tokio::time::interval(pace);
    let deadline = Instant::now() + Duration::from_secs(20);
    while (!done.load(Ordering::SeqCst) || samples.len() < min) && Instant::now() < deadline {
        ticks.tick().await;
        samples.push(round_trip(client, "during", samples.len()).await);
    }
    Latencies(samples)
}

fn assert_bounded(name: &str, before: &Latencies, during: &Latencies) {
    eprintln!("{name}: before: {}", before.describe());
    eprintln!("{name}: during: {}", during.describe());
    assert!(
        during.median() < MEDIAN_BOUND.max(before.median() * 20),
        "{name}: median round trip {:?} during the abuse",
        during.median()
    );
    assert!(
        during.max() < MAX_BOUND,
        "{name}: slowest round trip {:?}",
        during.max()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_are_closed_without_holding_up_anyone_else() {
    let _serial = SERIAL.lock().await;
    const SLOW: usize = 20;
    let (server, events, port) = echo_server(Server::builder().ping_interval(Duration::ZERO)).await;
    let mut good = RawClient::link_and_settle(port, "good").await;
    let mut slow = Vec::new();
    for i in 0..SLOW {
        let client = RawClient::link_and_settle(port, &format!("slow{i}")).await;
        // From here on nobody reads from it: its socket's buffers fill, then its queue.
        slow.push(client.into_inner());
    }
    let before = baseline(&mut good).await;

    // The server broadcasts 4 KiB to everyone but the echo user, as fast as it can, until nobody takes it.
    let done = Arc::new(AtomicBool::new(false));
    let flood = {
        let (server, done) = (server.clone(), done.clone());
        tokio::spawn(async move {
            let big = Message::with_payload("flood/data", serde_json::json!("x".repeat(4096)));
            let started = Instant::now();
            let (mut broadcasts, mut queued, mut refused) = (0usize, 0usize, 0usize);
            while broadcasts < 1_000_000 && started.elapsed() < Duration::from_secs(20) {
                let report = server.broadcast(&big, Some("good")).unwrap();
                if report.delivered == 0 && report.undelivered.is_empty() {
                    break; // every slow reader has been unlinked
                }
                broadcasts += 1;
                queued += report.delivered;
                refused += report.undelivered.len();
                tokio::task::yield_now().await;
            }
            done.store(true, Ordering::SeqCst);
            (broadcasts, queued, refused, started.elapsed())
        })
    };
    let during = during(&mut good, &done, 20, Duration::from_millis(1)).await;
    let (broadcasts, queued, refused, took) = tokio::time::timeout(TIMEOUT, flood).await.unwrap().unwrap();
    for i in 0..SLOW {
        events.wait_for(&format!("unlink slow{i}")).await;
    }
    eprintln!(
        "slow readers: {broadcasts} broadcasts of 4 KiB in {:.2} s, {queued} frames queued, {refused} refused \
         (queue full or closing); all {SLOW} slow readers closed",
        took.as_secs_f64()
    );
    assert!(done.load(Ordering::SeqCst));
    assert!(refused >= SLOW, "each slow reader refused at least one frame");
    assert_bounded("slow readers", &before, &during);
    assert!(server.user("good").unwrap().is_linked);
    drop(slow);
}

/// Counts the `flood/n` messages that reach `server`'s listeners.
fn count_flood_messages(server: &Server) -> Arc<AtomicUsize> {
    let received = Arc::new(AtomicUsize::new(0));
    let r = received.clone();
    server.on_message(move |_, message| {
        if message.kind == "flood/n" {
            r.fetch_add(1, Ordering::Relaxed);
        }
    });
    received
}

/// Sends `flood/n` messages as fast as the socket takes them until `stop`; returns how many were written.
async fn flood(mut ws: WsStream, stop: Arc<AtomicBool>, budget: Duration) -> (usize, bool) {
    let started = Instant::now();
    let mut sent = 0usize;
    while !stop.load(Ordering::SeqCst) && started.elapsed() < budget {
        for _ in 0..64 {
            let text = format!(r#"{{"type":"flood/n","payload":{sent}}}"#);
            if ws.feed(WsMessage::text(text)).await.is_err() {
                return (sent, true);
            }
            sent += 1;
        }
        if ws.flush().await.is_err() {
            return (sent, true);
        }
    }
    (sent, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_client_does_not_starve_the_others() {
    let _serial = SERIAL.lock().await;
    let (server, events, port) = echo_server(Server::builder().ping_interval(Duration::ZERO)).await;
    let received = count_flood_messages(&server);
    let mut good = RawClient::link_and_settle(port, "good").await;
    let flooder = RawClient::link_and_settle(port, "flooder").await;
    let before = baseline(&mut good).await;

    let stop = Arc::new(AtomicBool::new(false));
    let flooding = tokio::spawn(flood(flooder.into_inner(), stop.clone(), Duration::from_secs(10)));
    // Measure for two seconds of flooding.
    let measured = Arc::new(AtomicBool::new(false));
    let timer = {
        let measured = measured.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            measured.store(true, Ordering::SeqCst);
        })
    };
    let during = during(&mut good, &measured, 20, Duration::from_millis(1)).await;
    timer.await.unwrap();
    stop.store(true, Ordering::SeqCst);
    let (sent, cut_off) = tokio::time::timeout(TIMEOUT, flooding).await.unwrap().unwrap();
    let handled = received.load(Ordering::Relaxed);
    eprintln!(
        "flood: the flooder wrote {sent} messages in about 2 s; the server handled {handled} by the end of the \
         measurement ({:.0}/s)",
        handled as f64 / 2.0
    );
    assert!(!cut_off, "without a rate limit the flooder is not closed");
    assert!(handled > 1_000, "the server handled only {handled} flood messages");
    assert_bounded("flood", &before, &during);
    assert!(!events.contains("unlink good"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooder_over_the_rate_limit_is_closed_and_the_others_carry_on() {
    let _serial = SERIAL.lock().await;
    const PER_SECOND: f64 = 200.0;
    const BURST: f64 = 100.0;
    let builder = Server::builder()
        .ping_interval(Duration::ZERO)
        .rate_limit(PER_SECOND, BURST);
    let (server, events, port) = echo_server(builder).await;
    let received = count_flood_messages(&server);
    let mut good = RawClient::link_and_settle(port, "good").await;
    let flooder = RawClient::link_and_settle(port, "flooder").await;
    // Under the limit: one round trip every 10 ms is 100 messages a second.
    let mut samples = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    for n in 0..BASELINE_SAMPLES {
        ticks.tick().await;
        samples.push(round_trip(&mut good, "before", n).await);
    }
    let before = Latencies(samples);

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = tokio::spawn(flood(flooder.into_inner(), stop.clone(), Duration::from_secs(10)));
    events.wait_for("unlink flooder").await;
    let unlinked_after = started.elapsed();
    let done = AtomicBool::new(true);
    let during = during(&mut good, &done, 30, Duration::from_millis(10)).await;
    stop.store(true, Ordering::SeqCst);
    let (sent, cut_off) = tokio::time::timeout(TIMEOUT, flooding).await.unwrap().unwrap();
    let handled = received.load(Ordering::Relaxed);
    eprintln!(
        "rate limit {PER_SECOND}/s, burst {BURST}: the flooder wrote {sent} messages, {handled} reached the \
         listener, unlinked after {:.0} ms; cut off by the server: {cut_off}",
        unlinked_after.as_secs_f64() * 1e3
    );
    let allowed = BURST + PER_SECOND * unlinked_after.as_secs_f64() + 1.0;
    assert!(
        handled as f64 <= allowed,
        "{handled} messages handled, at most {allowed:.0} allowed"
    );
    assert!(!events.contains("unlink good"));
    assert!(server.user("good").unwrap().is_linked);
    assert_bounded("rate limit", &before, &during);
}

/// Round trips through the echo listener, each right after the server pushed two frames of its own. The client has
/// Nagle's algorithm off, so any wait is the server's.
async fn round_trips_after_pushes(server: &Server, port: u16) -> Vec<Duration> {
    let mut good = RawClient::connect_nodelay(port).await;
    good.link("good", None).await.unwrap();
    good.recv_until(&linked("good")).await;
    let mut round_trips = Vec::new();
    for n in 0..5 {
        server.send("good", &Message::new("push/one")).unwrap();
        server.send("good", &Message::new("push/two")).unwrap();
        let ping = json!({"type": "echo/ping", "payload": n});
        let sent = Instant::now();
        good.send(ping.clone()).await;
        good.recv_until(&ping).await;
        round_trips.push(sent.elapsed());
    }
    round_trips
}

/// Found while measuring the baselines above: the first round trip after the server pushed frames of its own takes
/// about 40 ms instead of well under one. `emitter_axum::listen`'s sockets have Nagle's algorithm on (it does not set
/// `TCP_NODELAY`; Node's `ws`, which the reference uses, does), so a small write waits for the client's delayed ACK
/// of the previous one. The next test shows the same exchange without the wait when the sockets have `TCP_NODELAY`.
#[tokio::test]
async fn a_reply_after_server_pushes_is_not_held_back_by_nagle() {
    let _serial = SERIAL.lock().await;
    let (server, _events, port) = echo_server(Server::builder().ping_interval(Duration::ZERO)).await;
    let round_trips = round_trips_after_pushes(&server, port).await;
    eprintln!("nagle: listen(): round trips after two pushes each: {round_trips:?}");
    // Nagle's wait would hold back every one of these by about 40 ms; the median ignores one round trip that a busy
    // machine delayed for its own reasons.
    let mut sorted = round_trips.clone();
    sorted.sort();
    assert!(sorted[sorted.len() / 2] < Duration::from_millis(20), "{round_trips:?}");
}

/// The workaround until then, and the proof of the cause: serve the router yourself on sockets with `TCP_NODELAY`.
#[tokio::test]
async fn with_tcp_nodelay_a_reply_after_server_pushes_is_prompt() {
    use axum::serve::ListenerExt;
    let _serial = SERIAL.lock().await;
    let server = Server::builder().ping_interval(Duration::ZERO).build();
    server.on_message(|u, m| {
        if m.kind == "echo/ping" {
            let _ = u.send(m);
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    emitter_axum::mark_listening(&server, port).unwrap();
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let app = emitter_axum::router(&server);
    let closing = server.closing();
    let serving = tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(closing).await });
    let round_trips = round_trips_after_pushes(&server, port).await;
    eprintln!("nagle: TCP_NODELAY: round trips after two pushes each: {round_trips:?}");
    assert!(
        round_trips.iter().all(|rtt| *rtt < Duration::from_millis(20)),
        "{round_trips:?}"
    );
    tokio::time::timeout(TIMEOUT, server.close()).await.unwrap().unwrap();
    tokio::time::timeout(TIMEOUT, serving).await.unwrap().unwrap().unwrap();
}
