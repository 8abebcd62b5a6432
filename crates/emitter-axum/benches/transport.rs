//! The transport's per-recipient cost of a broadcast: N WebSocket clients linked to an in-process server over
//! loopback; each iteration broadcasts one message and waits until every client has read it. The time per element is
//! what one more recipient costs end to end (queue push, connection task wake-up, WebSocket write, the syscall, and
//! the client's read), so it includes the clients' share of the machine.
//!
//! `cargo bench -p emitter-axum` runs it; `-- --quick` for a fast pass.

// criterion_group! defines an undocumented `pub fn` (the workspace lints ask for docs).
#![allow(missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use emitter_core::{Message, Server};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message as WsMessage;

struct Clients {
    received: Arc<AtomicU64>,
    reached: Arc<Notify>,
    target: Arc<AtomicU64>,
}

/// Links `n` clients and spawns a reader per client that counts `bench/msg` frames.
async fn link_clients(port: u16, n: usize) -> Clients {
    let clients = Clients {
        received: Arc::new(AtomicU64::new(0)),
        reached: Arc::new(Notify::new()),
        target: Arc::new(AtomicU64::new(u64::MAX)),
    };
    for i in 0..n {
        let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/"))
            .await
            .expect("connect");
        let username = format!("u{i}");
        let link = format!(r#"{{"type":"krmx/link","payload":{{"username":"{username}","version":"0.6.0"}}}}"#);
        socket.send(WsMessage::text(link)).await.expect("link");
        let linked = format!(r#"{{"type":"krmx/linked","payload":{{"username":"{username}"}}}}"#);
        while let Some(Ok(message)) = socket.next().await {
            if message.to_text().is_ok_and(|text| text == linked) {
                break;
            }
        }
        let (received, reached, target) = (
            clients.received.clone(),
            clients.reached.clone(),
            clients.target.clone(),
        );
        tokio::spawn(async move {
            while let Some(Ok(message)) = socket.next().await {
                if message
                    .to_text()
                    .is_ok_and(|text| text.starts_with(r#"{"type":"bench/msg""#))
                {
                    let count = received.fetch_add(1, Ordering::SeqCst) + 1;
                    if count == target.load(Ordering::SeqCst) {
                        reached.notify_one();
                    }
                }
            }
        });
    }
    clients
}

fn broadcast(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("broadcast_over_websocket");
    group.measurement_time(Duration::from_secs(5));
    for n in [10usize, 100] {
        let (server, clients) = runtime.block_on(async {
            let server = Server::new();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let port = emitter_axum::listen_on(&server, listener).await.expect("listen");
            let clients = link_clients(port, n).await;
            (server, clients)
        });
        let message = Message::with_payload("bench/msg", serde_json::json!([1, 2, 3]));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        let target = clients.received.load(Ordering::SeqCst) + n as u64;
                        clients.target.store(target, Ordering::SeqCst);
                        server.broadcast(&message, None).expect("broadcast");
                        if clients.received.load(Ordering::SeqCst) < target {
                            clients.reached.notified().await;
                        }
                    }
                    started.elapsed()
                })
            })
        });
        runtime.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(5), server.close()).await;
        });
    }
    group.finish();
}

criterion_group!(benches, broadcast);
criterion_main!(benches);
