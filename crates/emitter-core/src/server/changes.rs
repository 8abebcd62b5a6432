//! The membership path: join, link, unlink and leave, one change at a time, in one order.
//!
//! Every membership change, and the listeners it runs, happen while holding the *sequencer*: a re-entrant lock, so that
//! a listener may cause further changes (a `join` listener that kicks, say), which then happen inside the change that
//! caused them, as in the reference's single-threaded server. The order in which changes take the sequencer is *the*
//! order: the registry applies them in it, clients are told in it, listeners hear of them in it.
//!
//! Each change is two halves. *Applying* it changes the registry under the fan-out lock (which also queues the
//! messages that tell the clients) and mirrors it in the connection's role and the sharded link table. *Emitting* it
//! runs its listeners, with no lock held but the sequencer. In one process a change is decided and applied here; in a
//! cluster (see `server/node.rs`) the order comes from the cluster's sequencer, and the same halves apply its entries.
//!
//! Callers hold the sequencer and have checked the step's preconditions.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::time::Instant;

use crate::cluster::LinkAddr;
use crate::error::Status;
use crate::membership::connections::{Connection, Role};
use crate::membership::registry::Link;
use crate::protocol::ServerMessage;
use crate::server::events::{Event, MembershipEvent};
use crate::server::{Events, UserRef};
use crate::transport::close_reason::CloseReason;
use crate::Server;

/// Which event a membership change emits.
pub(crate) use crate::server::events::MembershipKind as Membership;

impl Server {
    /// Emits an event to the any-listeners, then to the event's own listeners. Returns the panic messages.
    pub(crate) fn emit(&self, event: Event<'_>, specific: impl FnOnce(&Events) -> Vec<String>) -> Vec<String> {
        let events = &self.inner.events;
        let mut panics = events.any.emit(event.name(), |f| f(self, &event));
        panics.extend(specific(events));
        panics
    }

    /// Runs the `on_membership` listeners of a change this node applied, at `seq` in the order of changes. On a
    /// cluster `server/node.rs` calls it for every entry it applies; on one process `emit_membership` does.
    pub(crate) fn emit_applied(&self, what: Membership, username: &str, seq: u64) {
        let event = MembershipEvent {
            seq,
            kind: what,
            username,
        };
        let _ = self.inner.events.membership.emit("membership", |f| f(self, &event));
    }

    /// Runs the listeners of a membership change of `username`: on one process first the `on_membership` ones (each
    /// change is this process's), then the change's own.
    pub(crate) fn emit_membership(&self, what: Membership, username: &str) {
        if self.sequencer().is_none() {
            let seq = self.inner.changes.fetch_add(1, Ordering::SeqCst) + 1;
            self.emit_applied(what, username, seq);
        }
        let _ = match what {
            Membership::Join => self.emit(Event::Join { username }, |events| {
                events.join.emit("join", |f| f(UserRef::new(self, username)))
            }),
            Membership::Link => self.emit(Event::Link { username }, |events| {
                events.link.emit("link", |f| f(UserRef::new(self, username)))
            }),
            Membership::Unlink => self.emit(Event::Unlink { username }, |events| {
                events.unlink.emit("unlink", |f| f(UserRef::new(self, username)))
            }),
            Membership::Leave => self.emit(Event::Leave { username }, |events| {
                events.leave.emit("leave", |f| f(UserRef::new(self, username)))
            }),
        };
    }

    // ---- applying ------------------------------------------------------------------------------------------------

    pub(crate) fn apply_join(&self, username: &str) {
        self.fan_out(|registry| registry.join(username));
        tracing::info!(username, "joined");
        if self.sequencer().is_none() {
            // A user joins unlinked: its grace period starts now (a link right after stops it).
            self.start_grace_period(username);
        }
    }

    /// Links this process's `connection` to the existing, unlinked `username`, unless either changed meanwhile (a
    /// join listener may have kicked the user, or linked it or the connection elsewhere). Returns whether it did.
    pub(crate) fn apply_link(&self, connection: &Arc<Connection>, username: &str) -> bool {
        let linked = self.fan_out(|registry| {
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
        if linked {
            tracing::info!(username, "linked");
        }
        linked
    }

    /// Links `username` to a connection of another node of the cluster.
    pub(crate) fn apply_link_remote(&self, username: &str, link: LinkAddr) -> bool {
        let linked = self.fan_out(|registry| registry.link_remote(username, link));
        if linked {
            tracing::info!(username, "linked on another node");
        }
        linked
    }

    /// Unlinks a linked user; returns the link it had.
    pub(crate) fn apply_unlink(&self, username: &str) -> Option<Link> {
        let link = self.fan_out(|registry| {
            // Out of the link table first: a send that found the connection has queued its frame by the time this
            // returns, so nothing reaches the connection after it hears of its unlink.
            self.inner.links.remove(username);
            // Unlinked before it can hear of it: a link request its client sends on reading its own `krmx/unlinked`
            // must find it unlinked, not be taken for a linked connection's unlink (the writer may send the frame
            // before this closure returns).
            if let Some(Link::Local(connection)) = registry.user(username).and_then(|slot| slot.link.as_ref()) {
                connection.state.lock().role = Role::Unlinked;
            }
            let link = registry.unlink(username)?;
            if let Link::Local(connection) = &link {
                let mut state = connection.state.lock();
                state.role = Role::Unlinked;
                if !state.closing {
                    state.unlinked_since = Some(Instant::now());
                }
                self.inner.connections.count_linked(false);
            }
            Some(link)
        })?;
        tracing::info!(username, "unlinked");
        if self.sequencer().is_none() {
            // On a cluster the cluster keeps the grace period: it outlives this node.
            self.start_grace_period(username);
        }
        Some(link)
    }

    /// Makes an unlinked user leave once the grace period is over, unless it was linked meanwhile (and maybe unlinked
    /// again, which starts a period of its own).
    fn start_grace_period(&self, username: &str) {
        let Some(period) = self.inner.config.grace_period else {
            return;
        };
        let Some(unlinks) = self.inner.registry.lock().user(username).map(|slot| slot.unlinks) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(username, "a grace period needs a tokio runtime: the user stays");
            return;
        };
        let server = self.clone();
        let username = username.to_owned();
        runtime.spawn(async move {
            tokio::time::sleep(period).await;
            let _turn = server.turn();
            let still = server
                .inner
                .registry
                .lock()
                .user(&username)
                .is_some_and(|slot| slot.link.is_none() && slot.unlinks == unlinks);
            if still && server.status() == Status::Listening {
                tracing::info!(username, "grace period over: the unlinked user leaves");
                server.leave_user(&username);
            }
        });
    }

    /// Unlinks a user whose link a new connection takes over ([`LinkPolicy::Replace`](crate::config::LinkPolicy::Replace)):
    /// the old connection hears of the unlink, then is closed.
    pub(crate) fn unlink_replaced(&self, username: &str) {
        if let Some(link) = self.apply_unlink(username) {
            if let Link::Local(connection) = link {
                tracing::info!(connection = %connection.id, username, "replaced by a new connection: closing");
                connection.close(CloseReason::Replaced);
            }
            self.emit_membership(Membership::Unlink, username);
        }
    }

    /// Removes an unlinked user; returns whether it was there to remove.
    pub(crate) fn apply_leave(&self, username: &str) -> bool {
        let left = self.fan_out(|registry| registry.leave(username));
        if left {
            tracing::info!(username, "left");
        }
        left
    }

    // ---- the steps of one process: decide, apply, emit -----------------------------------------------------------

    pub(crate) fn join_user(&self, username: &str) {
        self.apply_join(username);
        self.emit_membership(Membership::Join, username);
    }

    pub(crate) fn unlink_user(&self, username: &str) {
        if self.apply_unlink(username).is_some() {
            self.emit_membership(Membership::Unlink, username);
        }
    }

    pub(crate) fn leave_user(&self, username: &str) {
        if let Some(link) = self.apply_unlink(username) {
            self.emit_membership(Membership::Unlink, username);
            if let Link::Local(connection) = link {
                // The leaving connection hears of its own leave, as in the reference.
                let _ = connection.push(ServerMessage::Left(username).to_frame());
            }
        }
        // An unlink listener may have kicked the user already, or linked it again; then there is nothing to remove.
        if self.apply_leave(username) {
            self.emit_membership(Membership::Leave, username);
        }
    }
}
