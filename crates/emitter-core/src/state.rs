//! The user and connection tables. Plain data: every rule about changing them lives in `server.rs` and `link.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::task::AbortHandle;

use crate::error::Status;
use crate::protocol::Frame;
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
        }
    }

    pub(crate) fn user(&self, username: &str) -> Option<&UserSlot> {
        self.user_order.get(username).and_then(|order| self.users.get(order))
    }

    pub(crate) fn user_mut(&mut self, username: &str) -> Option<&mut UserSlot> {
        let order = self.user_order.get(username)?;
        self.users.get_mut(order)
    }

    pub(crate) fn insert_user(&mut self, username: &str) {
        let order = self.next_order;
        self.next_order += 1;
        self.user_order.insert(username.to_owned(), order);
        self.users.insert(
            order,
            UserSlot {
                username: username.to_owned(),
                link: None,
            },
        );
    }

    pub(crate) fn remove_user(&mut self, username: &str) {
        if let Some(order) = self.user_order.remove(username) {
            self.users.remove(&order);
        }
    }

    /// Things that keep `close()` from finishing: open connections and running transports.
    pub(crate) fn open_count(&self) -> usize {
        self.connections.len() + self.transports
    }

    /// Queues a frame for one connection. A full queue marks a slow consumer: its connection is closed, and the
    /// transport reports the close, which unlinks the user the normal way.
    pub(crate) fn push(sink: &dyn ConnectionSink, id: ConnectionId, frame: Frame) {
        match sink.push(frame) {
            Ok(()) => {}
            Err(PushError::Closed) => {
                tracing::debug!(connection = %id, "frame dropped: connection is closing")
            }
            Err(PushError::Full) => {
                tracing::warn!(connection = %id, "outgoing queue full: closing the slow connection");
                sink.close();
            }
        }
    }

    /// Queues a frame for a connection by id, if it is still open.
    pub(crate) fn push_to(&self, id: ConnectionId, frame: Frame) {
        if let Some(connection) = self.connections.get(&id) {
            State::push(connection.sink.as_ref(), id, frame);
        }
    }

    /// Queues a frame for every linked user in join order, except `skip`.
    pub(crate) fn push_to_linked(&self, frame: &Frame, skip: Option<&str>) {
        for slot in self.users.values() {
            if let Some(link) = &slot.link {
                if skip != Some(slot.username.as_str()) {
                    State::push(link.sink.as_ref(), link.id, frame.clone());
                }
            }
        }
    }
}
