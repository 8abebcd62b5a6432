//! The core's hot paths, without sockets: parsing an incoming message, serializing a broadcast once, emitting to N
//! listeners, a linked user's message through the whole dispatch, the per-recipient cost of a broadcast (appending it
//! once, then every recipient's writer taking it from its outbox), and a link (the snapshot the newcomer gets plus
//! the broadcast to everyone else).
//!
//! `cargo bench -p emitter-core` runs them; `-- --quick` for a fast pass.

// criterion_group! defines an undocumented `pub fn` (the workspace lints ask for docs).
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use emitter_core::protocol::{parse, ClientMessage, Frame};
use emitter_core::transport::{ConnectionId, Host, Outbox};
use emitter_core::{Message, Server};
use emitter_listeners::Listeners;

const BENCH_MSG: &[u8] = br#"{"type":"bench/msg","payload":[1234567890,42,7]}"#;
const CHAT_MSG: &[u8] =
    br#"{"type":"chat/message","payload":{"text":"hello there, how are you doing today?","room":"lobby","n":12}}"#;

/// The shape of a `message` listener.
type MessageListener = dyn Fn(&str, &Message) + Send + Sync;

/// Takes everything an outbox has, as a writer would, and drops it (the core's cost without any transport).
fn drain(outbox: &Outbox, frames: &mut Vec<Frame>) -> usize {
    let mut taken = 0;
    loop {
        outbox.take(frames, 256);
        if frames.is_empty() {
            return taken;
        }
        taken += frames.len();
        black_box(&frames);
        frames.clear();
    }
}

fn link_message(username: &str) -> Vec<u8> {
    format!(r#"{{"type":"krmx/link","payload":{{"username":"{username}","version":"0.6.0"}}}}"#).into_bytes()
}

/// A listening server with `users` linked users, their outboxes read up to now, and the host to drive it.
fn server_with(users: usize) -> (Server, Host, Vec<(ConnectionId, Outbox)>) {
    let server = Server::builder().ping_interval(std::time::Duration::ZERO).build();
    let host = server.host();
    host.start().expect("start");
    host.listening(0).expect("listening");
    let connections: Vec<(ConnectionId, Outbox)> = (0..users)
        .map(|i| {
            let (id, outbox) = host.connect().expect("connect");
            host.receive(id, &link_message(&format!("u{i}")));
            (id, outbox)
        })
        .collect();
    let mut frames = Vec::new();
    for (_, outbox) in &connections {
        drain(outbox, &mut frames);
    }
    assert_eq!(server.users().len(), users);
    (server, host, connections)
}

fn parsing(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for (name, bytes) in [("bench_msg", BENCH_MSG), ("chat_msg", CHAT_MSG)] {
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| ClientMessage::from(parse(black_box(bytes)).unwrap()))
        });
    }
    let link = link_message("simon");
    group.bench_function("link_request", |b| {
        b.iter(|| ClientMessage::from(parse(black_box(&link)).unwrap()))
    });
    group.finish();
}

fn serializing(c: &mut Criterion) {
    let mut group = c.benchmark_group("serialize_once");
    for (name, bytes) in [("bench_msg", BENCH_MSG), ("chat_msg", CHAT_MSG)] {
        let message: Message = parse(bytes).unwrap();
        group.bench_function(name, |b| b.iter(|| Frame::from(black_box(&message))));
    }
    group.finish();
}

fn emitting(c: &mut Criterion) {
    let mut group = c.benchmark_group("emit_to_listeners");
    for n in [1usize, 10, 100] {
        let listeners: Listeners<MessageListener> = Listeners::default();
        let calls = Arc::new(AtomicU64::new(0));
        let subscriptions: Vec<_> = (0..n)
            .map(|_| {
                let calls = calls.clone();
                listeners.add(Arc::new(move |_: &str, _: &Message| {
                    calls.fetch_add(1, Ordering::Relaxed);
                }))
            })
            .collect();
        let message: Message = parse(BENCH_MSG).unwrap();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| listeners.emit("message", |f| f("simon", black_box(&message))))
        });
        drop(subscriptions);
    }
    group.finish();
}

/// A linked user's message through the whole core: parse, the user's turn, the listener, the reply it sends, and the
/// writer taking the reply.
fn dispatching(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatch");
    let (server, host, connections) = server_with(1);
    let _echo = server.on_message(|u, m| {
        let _ = u.send(m);
    });
    let (id, outbox) = &connections[0];
    let mut frames = Vec::new();
    group.bench_function("receive_and_echo", |b| {
        b.iter(|| {
            host.receive(*id, black_box(BENCH_MSG));
            drain(outbox, &mut frames)
        })
    });
    group.finish();
}

/// What one more recipient costs a broadcast: serialize once, append once, then every recipient's writer takes the
/// same frame from its outbox.
fn broadcasting(c: &mut Criterion) {
    let mut group = c.benchmark_group("broadcast_per_recipient");
    for n in [10usize, 100, 1000] {
        let (server, _host, connections) = server_with(n);
        let message: Message = parse(BENCH_MSG).unwrap();
        let mut frames = Vec::new();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                server.broadcast(black_box(&message), None).unwrap();
                for (_, outbox) in &connections {
                    drain(outbox, &mut frames);
                }
            })
        });
    }
    group.finish();
}

/// Linking one more user to a server of N linked users: its snapshot of everyone plus telling everyone.
fn linking(c: &mut Criterion) {
    let mut group = c.benchmark_group("link_one_more");
    group.sample_size(20);
    for n in [100usize, 1000] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_batched(
                || server_with(n),
                |(server, host, connections)| {
                    let (id, outbox) = host.connect().expect("connect");
                    host.receive(id, &link_message("newcomer"));
                    (server, host, connections, outbox) // dropped outside the timing
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    parsing,
    serializing,
    emitting,
    dispatching,
    broadcasting,
    linking
);
criterion_main!(benches);
