//! Driving a server without sockets, through the transport seam (`server.host()`), and a replica of what a reference
//! client would hold after the frames a connection received.
#![allow(dead_code)]

pub mod journal;

use std::collections::{BTreeMap, HashMap};

use emitter_core::transport::{ConnectionId, Outbox};
use emitter_core::Server;
use emitter_state::delta;
use serde_json::{json, Value};

/// A server that listens (on a pretend port), whose connections may queue a great deal before a test reads them.
pub fn listening() -> Server {
    let server = Server::builder()
        .outbound_queue(1 << 20)
        .outbound_budget(1 << 30)
        .build();
    server.host().start().unwrap();
    server.host().listening(4321).unwrap();
    server
}

/// One fake connection: what it sends goes straight to the core, and what the core queued for it is read on demand.
pub struct Conn {
    server: Server,
    pub id: ConnectionId,
    outbox: Outbox,
    /// Every frame received so far, as text, in order.
    pub raw: Vec<String>,
}

impl Conn {
    pub fn open(server: &Server) -> Conn {
        let (id, outbox) = server.host().connect().expect("admitted");
        Conn {
            server: server.clone(),
            id,
            outbox,
            raw: Vec::new(),
        }
    }

    /// A new connection linked to `username`.
    pub fn linked(server: &Server, username: &str) -> Conn {
        let mut conn = Conn::open(server);
        conn.link(username);
        conn
    }

    /// A new connection linked to `username`, with what it was sent on linking read already.
    pub fn settled(server: &Server, username: &str) -> Conn {
        let mut conn = Conn::linked(server, username);
        conn.read();
        conn
    }

    pub fn link(&mut self, username: &str) {
        self.send(json!({"type": "krmx/link", "payload": {"username": username, "version": "0.6.0"}}));
    }

    pub fn send(&self, message: Value) {
        self.send_text(&message.to_string());
    }

    pub fn send_text(&self, text: &str) {
        self.server.host().receive(self.id, text.as_bytes());
    }

    /// Reads what the core queued since the last read; returns it as JSON.
    pub fn read(&mut self) -> Vec<Value> {
        let frames = self.outbox.take_all();
        let texts: Vec<String> = frames.iter().map(|frame| frame.as_str().to_owned()).collect();
        self.raw.extend(texts.iter().cloned());
        texts.iter().map(|text| serde_json::from_str(text).unwrap()).collect()
    }

    /// Reads, and keeps only the frames of types that do not start with `krmx/`.
    pub fn read_app(&mut self) -> Vec<Value> {
        self.read()
            .into_iter()
            .filter(|frame| !frame["type"].as_str().unwrap_or_default().starts_with("krmx/"))
            .collect()
    }

    pub fn disconnect(&self) {
        self.server.host().disconnect(self.id);
    }
}

/// What a reference client of one connection holds after the frames it received: it resets on its own link and
/// unlink, as the reference client glue does, and checks what it is sent as it goes.
#[derive(Default, Debug)]
pub struct Replica {
    /// The username it asked to link as.
    pub linking: Option<String>,
    /// The user it is linked to.
    pub me: Option<String>,
    /// Per domain: the projection, once a `projection/set` came.
    pub projections: HashMap<String, Value>,
    /// Per domain: the events since the last reset, as (dispatcher, event).
    pub events: HashMap<String, Vec<(String, Value)>>,
    pub atoms: BTreeMap<String, Value>,
    /// Per domain: the optimistic ids resolved, by a delta or an invalidate, in order.
    pub resolved: HashMap<String, Vec<(String, &'static str)>>,
    /// Everything that a correct server never sends.
    pub violations: Vec<String>,
}

impl Replica {
    pub fn new(username: &str) -> Replica {
        Replica {
            linking: Some(username.to_owned()),
            ..Replica::default()
        }
    }

    fn reset(&mut self) {
        self.projections.clear();
        self.events.clear();
        self.atoms.clear();
    }

    pub fn apply_all(&mut self, frames: &[Value]) {
        for frame in frames {
            self.apply(frame);
        }
    }

    pub fn apply(&mut self, frame: &Value) {
        let payload = &frame["payload"];
        let domain = payload["domain"].as_str().unwrap_or_default().to_owned();
        match frame["type"].as_str().unwrap_or_default() {
            "krmx/linked" if payload["username"].as_str() == self.linking.as_deref() && self.me.is_none() => {
                self.me = self.linking.clone();
                self.reset();
            }
            "krmx/unlinked" | "krmx/left"
                if payload["username"].as_str() == self.me.as_deref() && self.me.is_some() =>
            {
                self.me = None;
                self.reset();
            }
            "projection/set" => {
                self.need_linked(frame);
                self.projections.insert(domain, payload["projection"].clone());
            }
            "projection/delta" => {
                self.need_linked(frame);
                if payload.get("optimisticId").is_some_and(|id| !id.is_string()) {
                    self.violations
                        .push(format!("an optimisticId that is not a string: {frame}"));
                }
                let Some(projection) = self.projections.get_mut(&domain) else {
                    self.violations
                        .push(format!("a delta before any projection/set: {frame}"));
                    return;
                };
                if let Err(error) = delta::patch(projection, &payload["delta"]) {
                    self.violations
                        .push(format!("a delta that does not apply ({error}): {frame}"));
                }
                if let Some(id) = payload["optimisticId"].as_str() {
                    self.resolved.entry(domain).or_default().push((id.to_owned(), "delta"));
                }
            }
            "projection/invalidate" => {
                self.need_linked(frame);
                match payload["optimisticId"].as_str() {
                    Some(id) => self
                        .resolved
                        .entry(domain)
                        .or_default()
                        .push((id.to_owned(), "invalidate")),
                    None => self.violations.push(format!("an invalidate without an id: {frame}")),
                }
            }
            "stream/append" => {
                self.need_linked(frame);
                let dispatcher = payload["dispatcher"].as_str().unwrap_or_default().to_owned();
                self.events
                    .entry(domain)
                    .or_default()
                    .push((dispatcher, payload["event"].clone()));
            }
            "atom/set" => {
                self.need_linked(frame);
                self.atoms.insert(
                    payload["key"].as_str().unwrap_or_default().to_owned(),
                    payload["atom"].clone(),
                );
            }
            _ => {}
        }
    }

    fn need_linked(&mut self, frame: &Value) {
        if self.me.is_none() {
            self.violations
                .push(format!("a state message while not linked: {frame}"));
        }
    }
}
