//! Test helpers: an in-process emitter server, bounded waits, a TCP proxy that can cut connections, and a scripted
//! WebSocket server.
//!
//! Every wait is bounded by [`TIMEOUT`]; a test never sleeps and hopes.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use emitter_core::{Server, ServerBuilder};
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Awaits `future` for at most [`TIMEOUT`], naming `what` in the panic if it takes longer.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(TIMEOUT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Starts `builder`'s server on a free loopback port; returns it with its `ws://` URL.
pub async fn start(builder: ServerBuilder) -> (Server, String) {
    let server = builder.build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = emitter_axum::listen_on(&server, listener).await.unwrap();
    (server, format!("ws://127.0.0.1:{port}/"))
}

/// The port of a `ws://127.0.0.1:PORT/` URL.
pub fn port_of(url: &str) -> u16 {
    let port = url.trim_start_matches("ws://127.0.0.1:").trim_end_matches('/');
    port.parse().unwrap_or_else(|_| panic!("not a loopback URL: {url}"))
}

pub async fn start_default() -> (Server, String) {
    start(Server::builder()).await
}

/// A loopback TCP proxy in front of a server: [`cut`](Proxy::cut) drops every connection through it (to both sides,
/// as a network failure would), and [`refuse`](Proxy::refuse) makes it close new connections at once.
#[derive(Clone)]
pub struct Proxy {
    pub port: u16,
    refusing: Arc<Mutex<bool>>,
    open: Arc<Mutex<Vec<AbortHandle>>>,
    accepted: Arc<Mutex<usize>>,
}

impl Proxy {
    pub async fn start(target_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            port: listener.local_addr().unwrap().port(),
            refusing: Arc::default(),
            open: Arc::default(),
            accepted: Arc::default(),
        };
        let p = proxy.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                *p.accepted.lock() += 1;
                if *p.refusing.lock() {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target_port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                p.open.lock().push(task.abort_handle());
            }
        });
        proxy
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    /// Drops every connection open through the proxy.
    pub fn cut(&self) {
        for task in self.open.lock().drain(..) {
            task.abort();
        }
    }

    /// While `refusing`, new connections are closed as soon as they are accepted.
    pub fn refuse(&self, refusing: bool) {
        *self.refusing.lock() = refusing;
    }

    /// How many connections the proxy accepted so far.
    pub fn accepted(&self) -> usize {
        *self.accepted.lock()
    }
}
