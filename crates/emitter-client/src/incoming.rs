//! What the connection reports to a client (the socket opened, a frame, the socket closed), and the protocol messages
//! it applies: each changes the state and emits its events under the dispatch lock, and answers the request that
//! waited for it.

use crate::redact::url_for_logs;
use std::sync::Arc;

use emitter_core::protocol::{self, Message, Rejection, ACCEPTED, JOINED, LEFT, LINKED, REJECTED, UNLINKED};
use emitter_core::User;
use serde_json::Value;

use crate::connection::Handler;
use crate::error::{ClientStatus, Error};
use crate::event::ClientEvent;
use crate::reconnect::{self, Plan, Reconnect};
use crate::state::Shared;

impl Handler for Shared {
    fn opened(this: &Arc<Self>, generation: u64) {
        this.opened(generation);
    }

    fn received(this: &Arc<Self>, generation: u64, bytes: &[u8]) {
        this.receive(generation, bytes);
    }

    fn closed(this: &Arc<Self>, generation: u64, cause: Option<Arc<dyn std::error::Error + Send + Sync>>) {
        let relink = this.closed(generation, cause);
        if let Some((policy, plan)) = relink {
            tracing::info!(
                username = plan.username,
                url = url_for_logs(&plan.url),
                "connection lost while linked: reconnecting"
            );
            tokio::spawn(reconnect::run(Arc::downgrade(this), policy, plan));
        }
    }
}

impl Shared {
    /// The socket of `generation` is open.
    fn opened(&self, generation: u64) {
        let guard = self.lock();
        let opening = {
            let mut state = guard.borrow_mut();
            if !state.is_current(generation) {
                return;
            }
            // A forced disconnect while connecting: the close is on its way, and `connect` fails with it.
            if state.status != ClientStatus::Connecting {
                return;
            }
            state.status = ClientStatus::Connected;
            state.opening.take()
        };
        tracing::debug!(generation, "connected");
        self.emit(ClientEvent::Connect);
        if let Some(opening) = opening {
            let _ = opening.send(Ok(()));
        }
    }

    /// The socket of `generation` closed, or never opened (`cause`). Returns what a reconnect needs when the policy
    /// asks for one: the connection dropped while the client was linked.
    fn closed(
        &self,
        generation: u64,
        cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
    ) -> Option<(Reconnect, Plan)> {
        let guard = self.lock();
        let (url, opening, linking, unlinking, closing, relink) = {
            let mut state = guard.borrow_mut();
            if !state.is_current(generation) {
                return None;
            }
            state.connection = None;
            let was = state.status;
            state.status = ClientStatus::Closed;
            state.username = None;
            state.users.clear();
            let url = state.url.clone().unwrap_or_default();
            let relink = match (&self.config.reconnect, was, state.linked_as.take()) {
                (Some(policy), ClientStatus::Linked, Some((username, auth))) => {
                    state.epoch += 1;
                    let epoch = state.epoch;
                    let url = url.clone();
                    Some((
                        policy.clone(),
                        Plan {
                            url,
                            username,
                            auth,
                            epoch,
                        },
                    ))
                }
                _ => None,
            };
            (
                url,
                state.opening.take(),
                state.linking.take(),
                state.unlinking.take(),
                std::mem::take(&mut state.closing),
                relink,
            )
        };
        tracing::debug!(generation, "closed");
        self.emit(ClientEvent::Close);
        if let Some(opening) = opening {
            let url = url_for_logs(&url);
            let _ = opening.send(Err(Error::Connect { url, cause }));
        }
        for pending in [linking, unlinking].into_iter().flatten() {
            let _ = pending.send(Err(Error::ConnectionClosed));
        }
        for waiter in closing {
            let _ = waiter.send(());
        }
        relink
    }

    /// One frame from the server on the socket of `generation`.
    fn receive(&self, generation: u64, bytes: &[u8]) {
        let guard = self.lock();
        if !guard.borrow().is_current(generation) {
            return;
        }
        let message = match protocol::parse(bytes) {
            Ok(message) => message,
            Err(_) => {
                tracing::warn!(
                    bytes = bytes.len(),
                    "the server sent a frame that is not a Krmx message; ignored"
                );
                return;
            }
        };
        if message.is_reserved() {
            return self.apply(&message);
        }
        let status = guard.borrow().status;
        if status == ClientStatus::Linked {
            self.emit(ClientEvent::Message { message: &message });
        } else {
            tracing::warn!(kind = message.kind, %status, "unexpectedly received a custom message; ignored");
        }
    }

    /// Applies a `krmx/` message from the server.
    fn apply(&self, message: &Message) {
        let field = |name: &str| {
            message
                .payload
                .as_ref()
                .and_then(|p| p.get(name))
                .and_then(Value::as_str)
        };
        let (kind, name) = match message.kind.as_str() {
            ACCEPTED => return self.accepted(),
            REJECTED => (REJECTED, field("reason")),
            kind @ (JOINED | LINKED | UNLINKED | LEFT) => (kind, field("username")),
            other => {
                tracing::warn!(kind = other, "unexpected krmx message; ignored");
                return;
            }
        };
        let Some(name) = name else {
            tracing::warn!(kind, "a krmx message without its payload; ignored");
            return;
        };
        match kind {
            REJECTED => self.rejected(name),
            JOINED => self.joined(name),
            LINKED => self.linked(name),
            UNLINKED => self.unlinked(name),
            _ => self.left(name),
        }
    }

    fn accepted(&self) {
        let guard = self.lock();
        {
            let mut state = guard.borrow_mut();
            let status = state.status;
            let Some(username) = state.username.clone().filter(|_| status == ClientStatus::Linking) else {
                tracing::warn!(%status, "krmx/accepted without a link request; ignored");
                return;
            };
            state.status = ClientStatus::Linked;
            state.users = vec![User {
                username,
                is_linked: true,
            }];
        }
        self.emit(ClientEvent::Accept);
    }

    fn rejected(&self, reason: &str) {
        let guard = self.lock();
        let linking = {
            let mut state = guard.borrow_mut();
            let status = state.status;
            // Only a link request is answered with a rejection that ends it. A server also rejects messages that
            // reached it after it unlinked this connection (`unlinked connection`); such a late reply says nothing
            // about a link request sent after it.
            if status != ClientStatus::Linking || Rejection::parse(reason) == Rejection::UnlinkedConnection {
                tracing::debug!(reason, %status, "a rejection that answers no link request; ignored");
                return;
            }
            state.status = ClientStatus::Connected;
            state.username = None;
            state.linked_as = None;
            state.linking.take()
        };
        tracing::debug!(reason, "link rejected");
        self.emit(ClientEvent::Reject { reason });
        if let Some(linking) = linking {
            let _ = linking.send(Err(Error::Rejected(reason.to_owned())));
        }
    }

    fn joined(&self, username: &str) {
        let guard = self.lock();
        {
            let mut state = guard.borrow_mut();
            let is_self = state.username.as_deref() == Some(username);
            match state.user_mut(username) {
                Some(user) => user.is_linked = is_self,
                None => state.users.push(User {
                    username: username.to_owned(),
                    is_linked: is_self,
                }),
            }
        }
        self.emit(ClientEvent::Join { username });
    }

    fn linked(&self, username: &str) {
        let guard = self.lock();
        let linking = {
            let mut state = guard.borrow_mut();
            if !state.mark_linked(username, true, LINKED) {
                return;
            }
            let is_self = state.username.as_deref() == Some(username) && state.status == ClientStatus::Linked;
            if is_self {
                state.linking.take()
            } else {
                None
            }
        };
        self.emit(ClientEvent::Link { username });
        if let Some(linking) = linking {
            let _ = linking.send(Ok(()));
        }
    }

    fn unlinked(&self, username: &str) {
        let guard = self.lock();
        let is_self = {
            let mut state = guard.borrow_mut();
            if !state.mark_linked(username, false, UNLINKED) {
                return;
            }
            let is_self = state.username.as_deref() == Some(username);
            if is_self {
                state.status = ClientStatus::Connected;
                state.users.clear();
                state.linked_as = None;
            }
            is_self
        };
        // As in the reference, the username is cleared only after the listeners ran, so they can tell a self unlink.
        self.emit(ClientEvent::Unlink { username });
        if is_self {
            let unlinking = {
                let mut state = guard.borrow_mut();
                // A listener may have linked again meanwhile; then the username is the new link's.
                if state.status == ClientStatus::Connected && state.username.as_deref() == Some(username) {
                    state.username = None;
                }
                state.unlinking.take()
            };
            if let Some(unlinking) = unlinking {
                let _ = unlinking.send(Ok(()));
            }
        }
    }

    fn left(&self, username: &str) {
        let guard = self.lock();
        guard.borrow_mut().users.retain(|user| user.username != username);
        self.emit(ClientEvent::Leave { username });
    }
}
