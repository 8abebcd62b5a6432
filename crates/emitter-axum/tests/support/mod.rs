//! Test helpers: a raw WebSocket client that speaks Krmx, and a recorder of server events.
//!
//! Every wait is bounded by [`TIMEOUT`]; a test never sleeps and hopes. To show that something did *not* happen,
//! make something else happen after it that must arrive next (a marker message), and check the order.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use emitter_core::{Event, Server, ServerBuilder};
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

pub const TIMEOUT: Duration = Duration::from_secs(5);
pub const VERSION: &str = "0.6.10";

/// Starts `builder`'s server on a free loopback port, recording its events.
pub async fn start(builder: ServerBuilder) -> (Server, Recorder, u16) {
    let server = builder.build();
    let recorder = Recorder::attach(&server);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = emitter_axum::listen_on(&server, listener).await.unwrap();
    (server, recorder, port)
}

/// Starts a default server.
pub async fn start_default() -> (Server, Recorder, u16) {
    start(Server::builder()).await
}

/// Records every event as a short line such as `join simon` or `message simon custom`.
#[derive(Clone)]
pub struct Recorder {
    lines: Arc<Mutex<Vec<String>>>,
    changed: Arc<Notify>,
}

impl Recorder {
    pub fn attach(server: &Server) -> Recorder {
        let recorder = Recorder {
            lines: Arc::default(),
            changed: Arc::default(),
        };
        let r = recorder.clone();
        let _ = server.on_any(move |event| {
            let line = match event {
                Event::Listen { .. } => "listen".to_owned(),
                Event::Close => "close".to_owned(),
                Event::Authenticate { username, info } => {
                    format!("authenticate {username} new={} auth={:?}", info.is_new_user, info.auth)
                }
                Event::Join { username } => format!("join {username}"),
                Event::Link { username } => format!("link {username}"),
                Event::Unlink { username } => format!("unlink {username}"),
                Event::Leave { username } => format!("leave {username}"),
                Event::Message { username, message } => {
                    format!("message {username} {}", message.kind)
                }
                _ => format!("{event:?}"),
            };
            r.lines.lock().push(line);
            r.changed.notify_waiters();
        });
        recorder
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().clone()
    }

    pub fn count(&self, line: &str) -> usize {
        self.lines.lock().iter().filter(|l| *l == line).count()
    }

    pub fn contains(&self, line: &str) -> bool {
        self.count(line) > 0
    }

    /// Waits until `line` has been recorded.
    pub async fn wait_for(&self, line: &str) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let notified = self.changed.notified();
            if self.contains(line) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for event `{line}`; recorded: {:?}", self.lines());
            }
        }
    }

    /// The recorded lines that start with one of `prefixes`, in order.
    pub fn filtered(&self, prefixes: &[&str]) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
            .collect()
    }
}

/// A raw Krmx client over a real WebSocket.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub username: Option<String>,
}

pub fn joined(username: &str) -> Value {
    json!({"type": "krmx/joined", "payload": {"username": username}})
}
pub fn linked(username: &str) -> Value {
    json!({"type": "krmx/linked", "payload": {"username": username}})
}
pub fn unlinked(username: &str) -> Value {
    json!({"type": "krmx/unlinked", "payload": {"username": username}})
}
pub fn left(username: &str) -> Value {
    json!({"type": "krmx/left", "payload": {"username": username}})
}
pub fn rejected(reason: &str) -> Value {
    json!({"type": "krmx/rejected", "payload": {"reason": reason}})
}
pub fn accepted() -> Value {
    json!({"type": "krmx/accepted"})
}
pub fn link_request(username: &str) -> Value {
    json!({"type": "krmx/link", "payload": {"username": username, "version": VERSION}})
}

impl Client {
    /// Opens a connection to `ws://127.0.0.1:{port}{path_and_query}`.
    pub async fn connect_to(port: u16, path_and_query: &str) -> Result<Client, String> {
        let url = format!("ws://127.0.0.1:{port}{path_and_query}");
        match tokio::time::timeout(TIMEOUT, connect_async(url)).await {
            Ok(Ok((ws, _))) => Ok(Client { ws, username: None }),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => panic!("timed out connecting"),
        }
    }

    pub async fn connect(port: u16) -> Client {
        Client::connect_to(port, "/").await.unwrap()
    }

    /// Connects and links as `username` with an optional `auth`; `Err` holds the reject reason, or
    /// `connection closed`. On success the next message to read is the first of the user snapshot.
    pub async fn link_with(port: u16, username: &str, auth: Option<&str>) -> Result<Client, String> {
        let mut client = Client::connect(port).await;
        client.link(username, auth).await?;
        Ok(client)
    }

    pub async fn link_as(port: u16, username: &str) -> Client {
        Client::link_with(port, username, None)
            .await
            .unwrap_or_else(|reason| panic!("{username} was rejected: {reason}"))
    }

    /// Sends a link request on this connection and waits for accepted or rejected.
    pub async fn link(&mut self, username: &str, auth: Option<&str>) -> Result<(), String> {
        let mut request = link_request(username);
        if let Some(auth) = auth {
            request["payload"]["auth"] = json!(auth);
        }
        self.send(request).await;
        match self.try_recv().await {
            Some(message) if message == accepted() => {
                self.username = Some(username.to_owned());
                Ok(())
            }
            Some(message) if message["type"] == "krmx/rejected" => {
                Err(message["payload"]["reason"].as_str().unwrap_or_default().to_owned())
            }
            Some(other) => panic!("unexpected reply to a link request: {other}"),
            None => Err("connection closed".to_owned()),
        }
    }

    /// Links and reads the snapshot until the user's own `krmx/linked`... plus everything before it.
    pub async fn link_and_settle(port: u16, username: &str) -> Client {
        let mut client = Client::link_as(port, username).await;
        client.recv_until(&linked(username)).await;
        client
    }

    pub async fn send(&mut self, message: Value) {
        self.send_raw(&message.to_string()).await;
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(WsMessage::text(text.to_owned())).await.unwrap();
    }

    pub async fn send_binary(&mut self, data: &[u8]) {
        self.ws.send(WsMessage::binary(data.to_vec())).await.unwrap();
    }

    /// The next JSON message, or `None` when the connection closed. Panics after [`TIMEOUT`].
    pub async fn try_recv(&mut self) -> Option<Value> {
        loop {
            let next = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for a message ({:?})", self.username));
            match next {
                Some(Ok(WsMessage::Text(text))) => return Some(serde_json::from_str(&text).unwrap()),
                Some(Ok(WsMessage::Binary(_))) => panic!("the server sent a binary frame"),
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn recv(&mut self) -> Value {
        match self.try_recv().await {
            Some(message) => message,
            None => panic!("connection closed while waiting for a message ({:?})", self.username),
        }
    }

    /// Asserts the next message is `expected`.
    pub async fn expect(&mut self, expected: Value) {
        let got = self.recv().await;
        assert_eq!(got, expected, "client {:?}", self.username);
    }

    /// Asserts the next messages are exactly `expected`, in order.
    pub async fn expect_all(&mut self, expected: &[Value]) {
        for message in expected {
            self.expect(message.clone()).await;
        }
    }

    /// Reads until `expected` arrives; returns what came before it.
    pub async fn recv_until(&mut self, expected: &Value) -> Vec<Value> {
        let mut before = Vec::new();
        loop {
            let got = self.recv().await;
            if &got == expected {
                return before;
            }
            before.push(got);
        }
    }

    /// Asserts the server closes the connection (messages before the close are skipped).
    pub async fn expect_closed(&mut self) {
        while self.try_recv().await.is_some() {}
    }

    /// Closes the connection from the client side and waits until the server has seen it.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(TIMEOUT, self.ws.next()).await {}
    }

    /// Answers pings? tungstenite does it on read; this reads nothing and so answers nothing.
    pub fn into_inner(self) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        self.ws
    }
}

/// Marks a point in a client's stream: the server sends `marker/<tag>` to `username`, and the test reads up to it.
/// Whatever the action before it was going to send to that user has been queued before the marker.
pub fn marker(tag: &str) -> emitter_core::Message {
    emitter_core::Message::new(format!("marker/{tag}"))
}

pub fn marker_json(tag: &str) -> Value {
    json!({"type": format!("marker/{tag}")})
}
