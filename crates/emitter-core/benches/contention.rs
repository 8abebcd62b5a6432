//! Does the message path serialize? N threads drive the core at once, each for a different linked user, with no
//! sockets: a machine with few cores can still show whether messages of different users run in parallel.
//!
//! - `contention_echo/N`: each thread feeds its own user's connection messages that a listener sends back to the
//!   sender (parse, dispatch, listener, `send`, queue push). Elements are messages; with a parallel path, 2 threads
//!   handle close to twice what 1 does.
//! - `contention_broadcast/N`: each thread feeds messages that a listener broadcasts to all 100 linked users. Every
//!   broadcast takes the fan-out lock while it pushes (that is what keeps one order at every recipient), so this one
//!   is expected to scale less: it measures what that order costs.
//!
//! `cargo bench -p emitter-core --bench contention` (`-- --quick` for a fast pass).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use emitter_core::protocol::Frame;
use emitter_core::transport::{ConnectionId, ConnectionSink, Host, PushError};
use emitter_core::Server;

const ECHO: &[u8] = br#"{"type":"bench/echo","payload":[1234567890,42,7]}"#;
const BROADCAST: &[u8] = br#"{"type":"bench/msg","payload":[1234567890,42,7]}"#;

/// A connection that takes every frame and drops it, counting.
#[derive(Default)]
struct CountingSink {
    frames: AtomicU64,
}

impl ConnectionSink for CountingSink {
    fn push(&self, frame: Frame) -> Result<(), PushError> {
        black_box(&frame);
        self.frames.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn close(&self) {}
}

/// A listening server with `users` linked users, echoing `bench/echo` and broadcasting `bench/msg`.
fn server_with(users: usize) -> (Server, Host, Vec<ConnectionId>) {
    let server = Server::builder().ping_interval(Duration::ZERO).build();
    let relay = server.clone();
    let _ = server.on_message(move |username, message| match message.kind.as_str() {
        "bench/echo" => {
            let _ = relay.send(username, message);
        }
        _ => {
            let _ = relay.broadcast(message, None);
        }
    });
    let host = server.host();
    host.start().expect("start");
    host.listening(0).expect("listening");
    let ids = (0..users)
        .map(|i| {
            let id = host.connect(CountingSink::default()).expect("connect");
            let link = format!(r#"{{"type":"krmx/link","payload":{{"username":"u{i}","version":"0.6.0"}}}}"#);
            host.receive(id, link.as_bytes());
            id
        })
        .collect();
    (server, host, ids)
}

/// Runs `iters` messages on each of `threads` threads at once (user `t` on thread `t`) and returns the wall time.
fn drive(host: &Host, ids: &[ConnectionId], threads: usize, iters: u64, message: &'static [u8]) -> Duration {
    let start = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (host, id, start) = (host.clone(), ids[t], start.clone());
            std::thread::spawn(move || {
                start.wait();
                for _ in 0..iters {
                    host.receive(id, black_box(message));
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
    let (_server, host, ids) = server_with(100);
    for (name, message) in [("contention_echo", ECHO), ("contention_broadcast", BROADCAST)] {
        let mut group = c.benchmark_group(name);
        for threads in thread_counts() {
            group.throughput(Throughput::Elements(threads as u64));
            group.bench_with_input(BenchmarkId::from_parameter(threads), &threads, |b, &threads| {
                b.iter_custom(|iters| drive(&host, &ids, threads, iters, message))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, contention);
criterion_main!(benches);
