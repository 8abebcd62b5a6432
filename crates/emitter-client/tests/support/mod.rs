//! Test helpers of emitter-client's own tests: an in-process emitter server, the client's events with the state at
//! each, and a TCP proxy that can cut connections. What other crates' tests share too is in `emitter-testing`.
//!
//! Every wait is bounded by [`TIMEOUT`](emitter_testing::TIMEOUT); a test never sleeps and hopes.
#![allow(dead_code, unused_imports)]

use std::future::Future;
use std::sync::Arc;

use emitter_client::{Client, ClientEvent, ClientStatus, User};
use emitter_core::{Server, ServerBuilder};
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub use emitter_testing::{user, within};

/// Starts `builder`'s server on a free loopback port; returns it with its `ws://` URL.
pub async fn start(builder: ServerBuilder) -> (Server, String) {
    let server = builder.build();
    let port = emitter_testing::listen(&server).await;
    (server, emitter_testing::ws_url(port, "/"))
}

pub async fn start_default() -> (Server, String) {
    start(Server::builder()).await
}

/// Connects `client` to `url` and links it as `username`, without auth; panics if either fails.
pub async fn connect_and_link(client: &Client, url: &str, username: &str) {
    within("connect", client.connect(url)).await.unwrap();
    within("link", client.link(username, None)).await.unwrap();
}

/// An event as a line (`join simon`, `reject invalid username`, `message custom/hi`), with the status, username and
/// users a listener sees at it.
pub type Snapshot = (String, ClientStatus, Option<String>, Vec<User>);

/// Records every event of `client` as a [`Snapshot`], in order.
pub fn record_snapshots(client: &Client) -> Arc<Mutex<Vec<Snapshot>>> {
    let seen: Arc<Mutex<Vec<Snapshot>>> = Arc::default();
    let (s, c) = (seen.clone(), client.clone());
    client.on_any(move |event| {
        let detail = match event {
            ClientEvent::Reject { reason } => format!("reject {reason}"),
            ClientEvent::Join { username }
            | ClientEvent::Link { username }
            | ClientEvent::Unlink { username }
            | ClientEvent::Leave { username } => format!("{} {username}", event.name()),
            ClientEvent::Message { message } => format!("message {}", message.kind),
            other => other.name().to_owned(),
        };
        s.lock().push((detail, c.status(), c.username(), c.users()));
    });
    seen
}

/// A [`Snapshot`] of an event while `simon` is linked, with `users`.
pub fn as_simon(event: &str, users: &[User]) -> Snapshot {
    (event.into(), ClientStatus::Linked, Some("simon".into()), users.to_vec())
}

/// The reference client's event test, against the server at `url`: `client` connects, fails to link as `inv#lid`,
/// links as simon, lets `while_linked` happen, unlinks and disconnects. Every event must come with the status,
/// username and users a listener sees at it: `expected_while_linked` for the events of `while_linked` (see
/// [`as_simon`]), and those of the reference test for the rest.
pub async fn check_every_event(
    client: &Client,
    url: &str,
    while_linked: impl Future<Output = ()>,
    expected_while_linked: Vec<Snapshot>,
) {
    let seen = record_snapshots(client);
    within("connect", client.connect(url)).await.unwrap();
    let _ = within("link", client.link("inv#lid", None)).await.unwrap_err();
    within("link", client.link("simon", None)).await.unwrap();
    while_linked.await;
    within("unlink", client.unlink()).await.unwrap();
    within("disconnect", client.disconnect(false)).await.unwrap();

    let (me, alone) = (Some("simon".to_owned()), [user("simon", true)]);
    let mut expected: Vec<Snapshot> = vec![
        ("connecting".into(), ClientStatus::Connecting, None, vec![]),
        ("connect".into(), ClientStatus::Connected, None, vec![]),
        ("linking".into(), ClientStatus::Linking, Some("inv#lid".into()), vec![]),
        ("reject invalid username".into(), ClientStatus::Connected, None, vec![]),
        ("linking".into(), ClientStatus::Linking, me.clone(), vec![]),
        as_simon("accept", &alone),
        as_simon("join simon", &alone),
        as_simon("link simon", &alone),
    ];
    expected.extend(expected_while_linked);
    expected.extend([
        ("unlinking".into(), ClientStatus::Unlinking, me.clone(), alone.to_vec()),
        ("unlink simon".into(), ClientStatus::Connected, me, vec![]),
        ("closing".into(), ClientStatus::Closing, None, vec![]),
        ("close".into(), ClientStatus::Closed, None, vec![]),
    ]);
    assert_eq!(*seen.lock(), expected);
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
    /// A proxy to the server at `url` (`ws://127.0.0.1:PORT/`).
    pub async fn to(url: &str) -> Proxy {
        let port = url.trim_start_matches("ws://127.0.0.1:").trim_end_matches('/');
        Proxy::start(port.parse().unwrap_or_else(|_| panic!("not a loopback URL: {url}"))).await
    }

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
