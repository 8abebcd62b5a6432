//! The user and connection tables. Plain data: every rule about changing them lives in `server.rs` and `link.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::time::Instant;

use tokio::task::AbortHandle;

use crate::config::{Config, RateLimit};

use crate::error::Status;
use crate::protocol::{Frame, ServerMessage};
use crate::server::Broadcast;
use crate::transport::{ConnectionId, ConnectionSink, PushError};

/// A user's connection, kept beside the user so that a broadcast walks one table.
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) id: ConnectionId,
    pub(crate) sink: Arc<dyn ConnectionSink>,
}

pub(crate) struct UserSlot {
    pub(crate) username: String,
    pub(crate) link: Option<Link>,
    /// `krmx/joined` and `krmx/linked` for this user, serialized once: every newcomer's snapshot reuses them.
    pub(crate) joined: Frame,
    pub(crate) linked: Frame,
}

pub(crate) enum ConnectionState {
    Unlinked,
    /// Waiting on async authentication; `attempt` tells a stale result from the current one.
    Linking {
        attempt: u64,
        task: Option<AbortHandle>,
    },
    Linked(String),
}

pub(crate) struct Connection {
    pub(crate) sink: Arc<dyn ConnectionSink>,
    pub(crate) state: ConnectionState,
    /// When the connection last became unlinked (opened, or its user unlinked); `None` while linked, and once the
    /// core has asked the transport to close it.
    pub(crate) unlinked_since: Option<Instant>,
    /// The core asked the transport to close this connection; what it still sends is ignored.
    pub(crate) closing: bool,
    pub(crate) bucket: Option<TokenBucket>,
}

impl Connection {
    pub(crate) fn new(sink: Arc<dyn ConnectionSink>, rate_limit: Option<RateLimit>) -> Self {
        let now = Instant::now();
        Connection {
            sink,
            state: ConnectionState::Unlinked,
            unlinked_since: Some(now),
            closing: false,
            bucket: rate_limit.map(|limit| TokenBucket {
                limit,
                tokens: limit.burst,
                refilled: now,
            }),
        }
    }

    /// Asks the transport to close the connection, once.
    pub(crate) fn close(&mut self) {
        if !self.closing {
            self.closing = true;
            self.unlinked_since = None;
            self.sink.close();
        }
    }
}

/// A token bucket: `tokens` refill at `limit.per_second` up to `limit.burst`; each message takes one.
pub(crate) struct TokenBucket {
    limit: RateLimit,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * self.limit.per_second).min(self.limit.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub(crate) struct State {
    pub(crate) status: Status,
    /// Users in join order, keyed by a sequence number that only grows.
    pub(crate) users: BTreeMap<u64, UserSlot>,
    pub(crate) user_order: HashMap<String, u64>,
    pub(crate) next_order: u64,
    pub(crate) connections: HashMap<ConnectionId, Connection>,
    pub(crate) next_connection: u64,
    pub(crate) next_attempt: u64,
    /// Transports (such as a listening socket) that must stop before the server counts as closed.
    pub(crate) transports: usize,
    /// How many connections are linked; kept so that admission checks need no scan.
    pub(crate) linked: usize,
}

impl State {
    pub(crate) fn new() -> Self {
        State {
            status: Status::Initializing,
            users: BTreeMap::new(),
            user_order: HashMap::new(),
            next_order: 0,
            connections: HashMap::new(),
            next_connection: 0,
            next_attempt: 0,
            transports: 0,
            linked: 0,
        }
    }

    pub(crate) fn user(&self, username: &str) -> Option<&UserSlot> {
        self.user_order.get(username).and_then(|order| self.users.get(order))
    }

    pub(crate) fn user_mut(&mut self, username: &str) -> Option<&mut UserSlot> {
        let order = self.user_order.get(username)?;
        self.users.get_mut(order)
    }

    /// Adds a user at the end of the join order and returns its slot.
    pub(crate) fn insert_user(&mut self, username: &str) -> &UserSlot {
        let order = self.next_order;
        self.next_order += 1;
        self.user_order.insert(username.to_owned(), order);
        self.users.entry(order).or_insert(UserSlot {
            username: username.to_owned(),
            link: None,
            joined: ServerMessage::Joined(username).to_frame(),
            linked: ServerMessage::Linked(username).to_frame(),
        })
    }

    pub(crate) fn remove_user(&mut self, username: &str) {
        if let Some(order) = self.user_order.remove(username) {
            self.users.remove(&order);
        }
    }

    /// Marks a connection linked to `username`.
    pub(crate) fn mark_linked(&mut self, id: ConnectionId, username: &str) {
        if let Some(connection) = self.connections.get_mut(&id) {
            connection.state = ConnectionState::Linked(username.to_owned());
            connection.unlinked_since = None;
            self.linked += 1;
        }
    }

    /// Marks a linked connection unlinked; its link deadline starts now.
    pub(crate) fn mark_unlinked(&mut self, id: ConnectionId) {
        if let Some(connection) = self.connections.get_mut(&id) {
            if matches!(connection.state, ConnectionState::Linked(_)) {
                self.linked -= 1;
            }
            connection.state = ConnectionState::Unlinked;
            if !connection.closing {
                connection.unlinked_since = Some(Instant::now());
            }
        }
    }

    /// Why a new connection cannot be admitted now, if it cannot.
    pub(crate) fn refusal(&self, config: &Config) -> Option<&'static str> {
        if self.status != Status::Listening {
            Some("the server is not listening")
        } else if self.connections.len() >= config.max_connections {
            Some("too many connections")
        } else if self.connections.len() - self.linked >= config.max_unlinked_connections {
            Some("too many unlinked connections")
        } else {
            None
        }
    }

    /// Things that keep `close()` from finishing: open connections and running transports.
    pub(crate) fn open_count(&self) -> usize {
        self.connections.len() + self.transports
    }

    /// Queues a frame for one connection. A full queue marks a slow consumer: its connection is closed, and the
    /// transport reports the close, which unlinks the user the normal way.
    pub(crate) fn push(sink: &dyn ConnectionSink, id: ConnectionId, frame: Frame) -> Result<(), PushError> {
        State::settle(sink, id, sink.push(frame))
    }

    /// Queues several frames for one connection as one batch (a newcomer's snapshot, say), so that their number does
    /// not count against the connection's queue one by one.
    pub(crate) fn push_batch(sink: &dyn ConnectionSink, id: ConnectionId, frames: Vec<Frame>) {
        let _ = State::settle(sink, id, sink.push_batch(frames));
    }

    /// What a refused push means: a closing connection drops it; a full queue marks a slow consumer, which is closed.
    fn settle(sink: &dyn ConnectionSink, id: ConnectionId, outcome: Result<(), PushError>) -> Result<(), PushError> {
        match outcome {
            Ok(()) => {}
            Err(PushError::Closed) => tracing::debug!(connection = %id, "dropped: connection is closing"),
            Err(PushError::Full) => {
                tracing::warn!(connection = %id, "outgoing queue full: closing the slow connection");
                sink.close();
            }
        }
        outcome
    }

    /// Queues a frame for a connection by id, if it is still open.
    pub(crate) fn push_to(&self, id: ConnectionId, frame: Frame) {
        if let Some(connection) = self.connections.get(&id) {
            let _ = State::push(connection.sink.as_ref(), id, frame);
        }
    }

    /// Queues a frame for every linked user in join order, except `skip`. Reports who got it and who did not.
    pub(crate) fn push_to_linked(&self, frame: &Frame, skip: Option<&str>) -> Broadcast {
        let mut report = Broadcast::default();
        for slot in self.users.values() {
            if let Some(link) = &slot.link {
                if skip != Some(slot.username.as_str()) {
                    match State::push(link.sink.as_ref(), link.id, frame.clone()) {
                        Ok(()) => report.delivered += 1,
                        Err(error) => report.undelivered.push((slot.username.clone(), error)),
                    }
                }
            }
        }
        report
    }
}
