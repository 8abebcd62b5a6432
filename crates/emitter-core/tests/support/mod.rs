//! A fake transport for driving the core without sockets: each connection's frames land in an [`Outbox`].
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use emitter_core::protocol::Frame;
use emitter_core::transport::{ConnectionId, ConnectionSink, PushError};
use emitter_core::{Event, Server, ServerBuilder};
use parking_lot::Mutex;
use serde_json::{json, Value};

/// A fake connection: frames land in a list; with a capacity, a full list refuses like a full queue.
#[derive(Clone, Default)]
pub struct Outbox {
    pub frames: Arc<Mutex<Vec<Value>>>,
    pub closed: Arc<AtomicBool>,
    pub capacity: Option<usize>,
}

impl Outbox {
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Every frame's type.
    pub fn kinds(&self) -> Vec<String> {
        self.frames
            .lock()
            .iter()
            .map(|f| f["type"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Takes the frames received so far.
    pub fn take(&self) -> Vec<Value> {
        std::mem::take(&mut *self.frames.lock())
    }

    pub fn snapshot(&self) -> Vec<Value> {
        self.frames.lock().clone()
    }
}

pub struct FakeSink(pub Outbox);

impl ConnectionSink for FakeSink {
    fn push(&self, frame: Frame) -> Result<(), PushError> {
        if self.0.closed() {
            return Err(PushError::Closed);
        }
        let mut frames = self.0.frames.lock();
        if self.0.capacity.is_some_and(|capacity| frames.len() >= capacity) {
            return Err(PushError::Full);
        }
        frames.push(serde_json::from_str(frame.as_str()).unwrap());
        Ok(())
    }

    fn close(&self) {
        self.0.closed.store(true, Ordering::SeqCst);
    }
}

/// A server built from `builder`, listening (on a pretend port).
pub fn listening(builder: ServerBuilder) -> Server {
    let server = builder.build();
    server.host().start().unwrap();
    server.host().listening(4321).unwrap();
    server
}

pub fn connect_with(server: &Server, outbox: Outbox) -> Option<ConnectionId> {
    server.host().connect(FakeSink(outbox))
}

pub fn connect(server: &Server) -> (ConnectionId, Outbox) {
    let outbox = Outbox::default();
    (connect_with(server, outbox.clone()).expect("admitted"), outbox)
}

pub fn send(server: &Server, id: ConnectionId, message: Value) {
    server.host().receive(id, message.to_string().as_bytes());
}

pub fn link_request(username: &str) -> Value {
    json!({"type": "krmx/link", "payload": {"username": username, "version": "0.6.0"}})
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
    let _ = server.on_any(move |event| {
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
