//! The bare axum baseline: the same broadcast and echo as `examples/bench`, without any Krmx logic.
//!
//! It is what a user writes with axum alone: one task per connection, a bounded queue of shared frames, batched
//! writes with one flush, `TCP_NODELAY`, and tungstenite's default WebSocket buffers (128 KiB read, 128 KiB write),
//! since that is what `WebSocketUpgrade` gives anyone who does not tune it. The difference between it and emitter is
//! the Krmx layer (users, the link protocol, listeners, the membership order) plus whatever emitter-axum does better or
//! worse than the obvious axum code. A message whose text starts with `{"type":"bench/msg"` goes to every connection,
//! the sender included; `{"type":"bench/echo"` goes back to the sender; anything else is ignored.
//!
//! `BASELINE_EQUAL_BUFFERS=1` (the suite's `axum-equal` target) asks for the buffers emitter-axum asks for instead
//! (1 KiB read, 2 KiB write). That variant explains a difference, it is not the bar: the goals are measured against
//! the defaults, because tuning the baseline towards us would only make our numbers look better.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use futures_util::SinkExt;
use parking_lot::RwLock;
use tokio::sync::mpsc;

/// Frames a connection may have queued, as in emitter's default (a user writing this would pick some bound).
const QUEUE: usize = 4096;
/// Frames written per flush, as in emitter-axum.
const BATCH: usize = 64;

#[derive(Default)]
struct Hub {
    peers: RwLock<HashMap<u64, mpsc::Sender<Utf8Bytes>>>,
    next: AtomicU64,
    /// Ask for emitter-axum's buffer sizes instead of tungstenite's defaults.
    equal_buffers: bool,
}

/// The WebSocket buffers emitter-axum asks for (1 KiB read, 2 KiB write), used with `BASELINE_EQUAL_BUFFERS` only.
/// tungstenite's defaults (128 KiB each; the read buffer is zero-filled before every read) cost about 135 KiB per
/// idle connection and throughput; the equal-buffer variant shows how much of a difference that part is.
const READ_BUFFER: usize = 1024;
const WRITE_BUFFER: usize = 2 * 1024;

async fn upgrade(State(hub): State<Arc<Hub>>, ws: WebSocketUpgrade) -> Response {
    let ws = if hub.equal_buffers {
        ws.read_buffer_size(READ_BUFFER).write_buffer_size(WRITE_BUFFER)
    } else {
        ws
    };
    ws.on_upgrade(move |socket| connection(hub, socket))
}

async fn connection(hub: Arc<Hub>, mut socket: WebSocket) {
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(QUEUE);
    let id = hub.next.fetch_add(1, Ordering::Relaxed);
    hub.peers.write().insert(id, tx.clone());
    loop {
        tokio::select! {
            biased;
            Some(first) = rx.recv() => {
                let mut written = socket.feed(Message::Text(first)).await;
                for _ in 1..BATCH {
                    let Ok(next) = rx.try_recv() else { break };
                    if written.is_err() {
                        break;
                    }
                    written = socket.feed(Message::Text(next)).await;
                }
                if written.is_err() || socket.flush().await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    if text.starts_with("{\"type\":\"bench/msg\"") {
                        for peer in hub.peers.read().values() {
                            // A full queue drops the frame: the bare server has no slow-consumer policy.
                            let _ = peer.try_send(text.clone());
                        }
                    } else if text.starts_with("{\"type\":\"bench/echo\"") {
                        let _ = tx.try_send(text);
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    hub.peers.write().remove(&id);
}

/// `PORT` from the environment, or `default`.
fn port_from_env(default: u16) -> Result<u16, String> {
    match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT must be a port number, not {port:?}")),
        Err(_) => Ok(default),
    }
}

/// Resolves on Ctrl-C, or when stdin closes if `EXIT_ON_EOF` is set (the suite sets it, so that a server never
/// outlives the runner that started it).
pub(crate) async fn stop_signal() {
    let eof = async {
        if std::env::var_os("EXIT_ON_EOF").is_some() {
            use tokio::io::AsyncReadExt;
            let mut sink = [0u8; 64];
            let mut stdin = tokio::io::stdin();
            while matches!(stdin.read(&mut sink).await, Ok(n) if n > 0) {}
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = eof => {}
    }
}

/// Serves the baseline on 127.0.0.1:`PORT` until Ctrl-C, or until stdin closes when `EXIT_ON_EOF` is set.
pub fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = port_from_env(8083)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let app = Router::new().route("/", get(upgrade)).with_state(Arc::new(Hub {
            equal_buffers: std::env::var_os("BASELINE_EQUAL_BUFFERS").is_some(),
            ..Hub::default()
        }));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!(
            "bare axum baseline on ws://127.0.0.1:{}/",
            listener.local_addr()?.port()
        );
        // TCP_NODELAY unless BASELINE_NAGLE is set (to measure what Nagle's algorithm costs).
        let nodelay = std::env::var_os("BASELINE_NAGLE").is_none();
        let listener = listener.tap_io(move |tcp| {
            if nodelay {
                let _ = tcp.set_nodelay(true);
            }
        });
        tokio::select! {
            served = axum::serve(listener, app) => served?,
            () = stop_signal() => {}
        }
        Ok(())
    })
}
