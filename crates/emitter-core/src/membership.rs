//! The membership path: join, link, unlink and leave, one change at a time, in one order.
//!
//! Every membership change, and the listeners it runs, happen while holding the *sequencer*: a re-entrant lock, so that
//! a listener may cause further changes (a `join` listener that kicks, say), which then happen inside the change that
//! caused them, as in the reference's single-threaded server. The order in which changes take the sequencer is *the*
//! order: the registry applies them in it, clients are told in it, listeners hear of them in it.
//!
//! Each step below is the same three moves: apply the change to the registry under the fan-out lock (which also
//! queues the messages that tell the clients), mirror it in the connection's role and the sharded link table, then
//! emit the event with no lock held but the sequencer. A cluster replaces where the order comes from (a Redis
//! sequence instead of this lock) and feeds the same steps.
//!
//! Callers hold the sequencer and have checked the step's preconditions.

use std::sync::Arc;

use tokio::time::Instant;

use crate::connections::{Connection, Role};
use crate::events::Event;
use crate::protocol::ServerMessage;
use crate::server::Events;
use crate::Server;

impl Server {
    /// Emits an event to the any-listeners, then to the event's own listeners. Returns the panic messages.
    pub(crate) fn emit(&self, event: Event<'_>, specific: impl FnOnce(&Events) -> Vec<String>) -> Vec<String> {
        let events = &self.inner.events;
        let mut panics = events.any.emit(event.name(), |f| f(self, &event));
        panics.extend(specific(events));
        panics
    }

    pub(crate) fn join_user(&self, username: &str) {
        self.fan_out(|registry| registry.join(username));
        tracing::info!(username, "joined");
        self.emit(Event::Join { username }, |events| {
            events.join.emit("join", |f| f(self, username))
        });
    }

    /// Links `connection` to the existing, unlinked `username`, unless a listener changed either meanwhile.
    pub(crate) fn link_user(&self, connection: &Arc<Connection>, username: &str) {
        let linked = self.fan_out(|registry| {
            // A join listener may have kicked the user, or linked it or the connection elsewhere.
            let free = matches!(connection.state.lock().role, Role::Unlinked);
            let member = if free {
                registry.link(username, connection)
            } else {
                None
            };
            let Some(member) = member else {
                tracing::debug!(connection = %connection.id, username, "link abandoned: state changed during join");
                return false;
            };
            {
                let mut state = connection.state.lock();
                state.role = Role::Linked(member);
                state.unlinked_since = None;
            }
            self.inner.connections.count_linked(true);
            // Sends find the user only now, after its snapshot was queued.
            self.inner.links.insert(username.to_owned(), connection.clone());
            true
        });
        if !linked {
            return;
        }
        tracing::info!(username, "linked");
        self.emit(Event::Link { username }, |events| {
            events.link.emit("link", |f| f(self, username))
        });
    }

    pub(crate) fn unlink_user(&self, username: &str) {
        let unlinked = self.fan_out(|registry| {
            // Out of the link table first: a send that found the connection has queued its frame by the time this
            // returns, so nothing reaches the connection after it hears of its unlink.
            self.inner.links.remove(username);
            let Some(connection) = registry.unlink(username) else {
                return false;
            };
            let mut state = connection.state.lock();
            state.role = Role::Unlinked;
            if !state.closing {
                state.unlinked_since = Some(Instant::now());
            }
            self.inner.connections.count_linked(false);
            true
        });
        if !unlinked {
            return;
        }
        tracing::info!(username, "unlinked");
        self.emit(Event::Unlink { username }, |events| {
            events.unlink.emit("unlink", |f| f(self, username))
        });
    }

    pub(crate) fn leave_user(&self, username: &str) {
        let linked = self
            .inner
            .registry
            .lock()
            .user(username)
            .and_then(|slot| slot.link.clone());
        if let Some(connection) = linked {
            self.unlink_user(username);
            // The leaving connection hears of its own leave, as in the reference.
            let _ = connection.push(ServerMessage::Left(username).to_frame());
        }
        // An unlink listener may have kicked the user already, or linked it again; then there is nothing to remove.
        if !self.fan_out(|registry| registry.leave(username)) {
            return;
        }
        tracing::info!(username, "left");
        self.emit(Event::Leave { username }, |events| {
            events.leave.emit("leave", |f| f(self, username))
        });
    }
}
