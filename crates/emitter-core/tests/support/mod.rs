//! A fake transport for driving the core without sockets: each connection's client reads its [`Outbox`] when the test
//! looks.
#![allow(dead_code)]

use std::sync::Arc;

use emitter_core::transport::ConnectionId;
use emitter_core::{Event, Server, ServerBuilder};
use parking_lot::Mutex;
use serde_json::{json, Value};

/// A fake client of one connection: it reads what the connection's outbox has, when the test looks.
#[derive(Clone)]
pub struct Outbox {
    outbox: emitter_core::transport::Outbox,
    received: Arc<Mutex<Vec<Value>>>,
}

impl Outbox {
    fn new(outbox: emitter_core::transport::Outbox) -> Self {
        Outbox {
            outbox,
            received: Arc::default(),
        }
    }

    /// Reads everything the connection has for its client now.
    fn drain(&self) {
        let frames = self.outbox.take_all();
        let mut received = self.received.lock();
        received.extend(
            frames
                .iter()
                .map(|frame| serde_json::from_str::<Value>(frame.as_str()).unwrap()),
        );
    }

    /// Every frame received so far.
    pub fn frames(&self) -> Vec<Value> {
        self.drain();
        self.received.lock().clone()
    }

    /// Whether the server asked to close the connection.
    pub fn closed(&self) -> bool {
        self.outbox.is_closing()
    }

    /// Every frame's type.
    pub fn kinds(&self) -> Vec<String> {
        self.frames()
            .iter()
            .map(|f| f["type"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Takes the frames received so far.
    pub fn take(&self) -> Vec<Value> {
        self.drain();
        std::mem::take(&mut *self.received.lock())
    }
}

/// A server built from `builder`, listening (on a pretend port).
pub fn listening(builder: ServerBuilder) -> Server {
    let server = builder.build();
    server.host().start().unwrap();
    server.host().listening(4321).unwrap();
    server
}

/// A new connection, if the server admits it.
pub fn try_connect(server: &Server) -> Option<(ConnectionId, Outbox)> {
    let (id, outbox) = server.host().connect().ok()?;
    Some((id, Outbox::new(outbox)))
}

pub fn connect(server: &Server) -> (ConnectionId, Outbox) {
    try_connect(server).expect("admitted")
}

pub fn send(server: &Server, id: ConnectionId, message: Value) {
    server.host().receive(id, message.to_string().as_bytes());
}

pub fn link_request(username: &str) -> Value {
    json!({"type": "krmx/link", "payload": {"username": username, "version": "0.6.0"}})
}

/// A new connection that has asked to link as `username`; what the server answered is in its outbox.
pub fn link_attempt(server: &Server, username: &str) -> (ConnectionId, Outbox) {
    let (id, outbox) = connect(server);
    send(server, id, link_request(username));
    (id, outbox)
}

/// Frames as `type` or `type username`.
pub fn kinds(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| match f["payload"]["username"].as_str() {
            Some(name) => format!("{} {name}", f["type"].as_str().unwrap()),
            None => f["type"].as_str().unwrap().to_owned(),
        })
        .collect()
}

/// Records every event as `join simon`, `message`, `listen`, … in the order listeners hear them.
pub fn record(server: &Server) -> Arc<Mutex<Vec<String>>> {
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let l = lines.clone();
    server.on_any(move |_, event| {
        let line = match event {
            Event::Join { username } => format!("join {username}"),
            Event::Link { username } => format!("link {username}"),
            Event::Unlink { username } => format!("unlink {username}"),
            Event::Leave { username } => format!("leave {username}"),
            other => other.name().to_owned(),
        };
        l.lock().push(line);
    });
    lines
}
