//! Does the message path serialize? N threads drive the core at once, each for a different linked user, with no
//! sockets: a machine with few cores can still show whether messages of different users run in parallel.
//!
//! - `contention_echo/N`: each thread feeds its own user's connection messages that a listener sends back to the
//!   sender (parse, dispatch, listener, `send`, the reply queued), and takes the reply from the outbox as a writer
//!   would. Elements are messages; with a parallel path, 2 threads handle close to twice what 1 does.
//! - `contention_broadcast/N`: each thread feeds messages that a listener broadcasts to all 100 linked users, and
//!   takes what its share of the 100 outboxes has, as their writers would. Every broadcast is appended under the
//!   fan-out lock (that is what keeps one order at every recipient); handing each recipient its frame happens in the
//!   writers, on every thread.
//!
//! `cargo bench -p emitter-core --bench contention` (`-- --quick` for a fast pass).

// criterion_group! defines an undocumented `pub fn` (the workspace lints ask for docs).
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use emitter_core::protocol::Frame;
use emitter_core::transport::{ConnectionId, Host, Outbox};
use emitter_core::Server;

const ECHO: &[u8] = br#"{"type":"bench/echo","payload":[1234567890,42,7]}"#;
const BROADCAST: &[u8] = br#"{"type":"bench/msg","payload":[1234567890,42,7]}"#;

/// Takes everything an outbox has, as a writer would, and drops it.
fn drain(outbox: &Outbox, frames: &mut Vec<Frame>) {
    loop {
        outbox.take(frames, 256);
        if frames.is_empty() {
            return;
        }
        black_box(&frames);
        frames.clear();
    }
}

/// A listening server with `users` linked users, echoing `bench/echo` and broadcasting `bench/msg`.
fn server_with(users: usize) -> (Server, Host, Vec<(ConnectionId, Outbox)>) {
    let server = Server::builder().ping_interval(Duration::ZERO).build();
    server.on_message(|u, m| match m.kind.as_str() {
        "bench/echo" => {
            let _ = u.send(m);
        }
        _ => {
            let _ = u.server().broadcast(m, None);
        }
    });
    let host = server.host();
    host.start().expect("start");
    host.listening(0).expect("listening");
    let ids = (0..users)
        .map(|i| {
            let (id, outbox) = host.connect().expect("connect");
            let link = format!(r#"{{"type":"krmx/link","payload":{{"username":"u{i}","version":"0.6.0"}}}}"#);
            host.receive(id, link.as_bytes());
            (id, outbox)
        })
        .collect();
    (server, host, ids)
}

/// Runs `iters` messages on each of `threads` threads at once (user `t` on thread `t`, which also reads its own outbox,
/// or with `share`, every `threads`-th outbox starting at its own) and returns the wall time.
fn drive(
    host: &Host,
    connections: &[(ConnectionId, Outbox)],
    threads: usize,
    iters: u64,
    (message, share): (&'static [u8], bool),
) -> Duration {
    let start = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (host, start) = (host.clone(), start.clone());
            let id = connections[t].0;
            let outboxes: Vec<Outbox> = if share {
                connections
                    .iter()
                    .skip(t)
                    .step_by(threads)
                    .map(|(_, outbox)| outbox.clone())
                    .collect()
            } else {
                vec![connections[t].1.clone()]
            };
            std::thread::spawn(move || {
                let mut frames = Vec::new();
                start.wait();
                for _ in 0..iters {
                    host.receive(id, black_box(message));
                    for outbox in &outboxes {
                        drain(outbox, &mut frames);
                    }
                }
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    for worker in workers {
        worker.join().expect("worker");
    }
    began.elapsed()
}

fn thread_counts() -> Vec<usize> {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    [1, 2, 4, 8]
        .into_iter()
        .filter(|&n| n == 1 || n <= cores.max(2))
        .collect()
}

fn contention(c: &mut Criterion) {
    let (_server, host, connections) = server_with(100);
    for (name, message) in [
        ("contention_echo", (ECHO, false)),
        ("contention_broadcast", (BROADCAST, true)),
    ] {
        let mut group = c.benchmark_group(name);
        for threads in thread_counts() {
            group.throughput(Throughput::Elements(threads as u64));
            group.bench_with_input(BenchmarkId::from_parameter(threads), &threads, |b, &threads| {
                b.iter_custom(|iters| drive(&host, &connections, threads, iters, message))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, contention);
criterion_main!(benches);
