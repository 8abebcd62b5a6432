//! Connections: opening, incoming messages, link attempts with their authentication, and closing.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio::task::JoinSet;

use crate::auth::{AuthContext, AuthFuture, AuthInfo};
use crate::config::MAX_USERNAME_BYTES;
use crate::error::Status;
use crate::events::{panic_message, Event};
use crate::protocol::{parse_bounded, ClientMessage, LinkRequest, ServerMessage};
use crate::state::{Connection, ConnectionState, Link, State};
use crate::transport::{ConnectionId, ConnectionSink};
use crate::version::AcceptedVersions;
use crate::Server;

/// What a connection is, as seen when one of its messages arrives.
enum Role {
    Unlinked,
    Linking,
    Linked(String),
}

impl Server {
    pub(crate) fn connect(&self, sink: Arc<dyn ConnectionSink>) -> Option<ConnectionId> {
        let guard = self.lock();
        let mut state = guard.borrow_mut();
        if let Some(reason) = state.refusal(&self.inner.config) {
            tracing::warn!(reason, "incoming connection refused");
            return None;
        }
        let id = ConnectionId(state.next_connection);
        state.next_connection += 1;
        state
            .connections
            .insert(id, Connection::new(sink, self.inner.config.rate_limit));
        self.publish_open_count(&state);
        tracing::debug!(connection = %id, "connection opened");
        Some(id)
    }

    /// Whether a new connection would be admitted now; transports ask before upgrading, to refuse cheaply.
    pub(crate) fn has_room(&self) -> bool {
        self.lock().borrow().refusal(&self.inner.config).is_none()
    }

    /// Closes the connections that stayed unlinked past the link deadline.
    pub(crate) fn close_overdue(&self, deadline: Duration) {
        let guard = self.lock();
        let mut state = guard.borrow_mut();
        let now = Instant::now();
        for (id, connection) in state.connections.iter_mut() {
            let overdue = connection
                .unlinked_since
                .is_some_and(|since| now.duration_since(since) >= deadline);
            if overdue && matches!(connection.state, ConnectionState::Unlinked) {
                tracing::info!(connection = %id, "closing a connection that stayed unlinked past the link deadline");
                connection.close();
            }
        }
    }

    pub(crate) fn disconnect(&self, id: ConnectionId) {
        let _guard = self.lock();
        let role = {
            let guard = self.lock();
            let mut state = guard.borrow_mut();
            let Some(connection) = state.connections.get_mut(&id) else {
                return;
            };
            match &mut connection.state {
                ConnectionState::Linked(username) => Some(username.clone()),
                ConnectionState::Linking { task, .. } => {
                    // The attempt dies with its connection: cancel the auth work now.
                    if let Some(task) = task.take() {
                        task.abort();
                    }
                    connection.state = ConnectionState::Unlinked;
                    None
                }
                ConnectionState::Unlinked => None,
            }
        };
        if let Some(username) = role {
            self.unlink_user(&username);
        }
        let guard = self.lock();
        let mut state = guard.borrow_mut();
        state.connections.remove(&id);
        self.publish_open_count(&state);
        tracing::debug!(connection = %id, "connection closed");
    }

    pub(crate) fn receive(&self, id: ConnectionId, data: &[u8]) {
        let _guard = self.lock();
        let role = {
            let guard = self.lock();
            let state = guard.borrow();
            if state.status != Status::Listening {
                tracing::debug!(connection = %id, status = %state.status, "message ignored");
                return;
            }
            let Some(connection) = state.connections.get(&id) else {
                return;
            };
            if connection.closing {
                return;
            }
            match &connection.state {
                ConnectionState::Unlinked => Role::Unlinked,
                ConnectionState::Linking { .. } => Role::Linking,
                ConnectionState::Linked(username) => Role::Linked(username.clone()),
            }
        };
        if !self.within_rate_limit(id) {
            return;
        }
        let message = match parse_bounded(data, self.inner.config.max_json_depth) {
            Ok(message) => ClientMessage::from(message),
            Err(_) => {
                tracing::warn!(connection = %id, "invalid message");
                match role {
                    Role::Linked(username) => self.unlink_user(&username),
                    Role::Unlinked | Role::Linking => self.reply_rejected(id, "invalid message"),
                }
                return;
            }
        };
        match (role, message) {
            (Role::Linked(username), ClientMessage::Link(_) | ClientMessage::Unlink) => self.unlink_user(&username),
            (Role::Linked(username), ClientMessage::Leave) => self.leave_user(&username),
            (Role::Linked(username), ClientMessage::UnknownReserved(message)) => {
                tracing::warn!(
                    username,
                    kind = message.kind,
                    "unknown krmx/ message: the krmx/ prefix is reserved; unlinking"
                );
                self.unlink_user(&username);
            }
            (Role::Linked(username), ClientMessage::Custom(message)) => {
                let username = username.as_str();
                let message = &message;
                self.emit(Event::Message { username, message }, |events| {
                    events.message.emit("message", |f| f(username, message))
                });
            }
            (Role::Linking, ClientMessage::Link(_)) => self.reply_rejected(id, "link request already pending"),
            (Role::Unlinked, ClientMessage::Link(Some(request))) => self.attempt_link(id, request),
            (Role::Unlinked, ClientMessage::Link(None)) => self.reply_rejected(id, "invalid link request"),
            (Role::Unlinked | Role::Linking, _) => self.reply_rejected(id, "unlinked connection"),
        }
    }

    /// Takes a token from the connection's bucket; a connection out of tokens is closed.
    fn within_rate_limit(&self, id: ConnectionId) -> bool {
        let guard = self.lock();
        let mut state = guard.borrow_mut();
        let Some(connection) = state.connections.get_mut(&id) else {
            return false;
        };
        let Some(bucket) = connection.bucket.as_mut() else {
            return true;
        };
        if bucket.take(Instant::now()) {
            return true;
        }
        tracing::warn!(connection = %id, "message rate limit exceeded: closing the connection");
        connection.close();
        false
    }

    fn reply_rejected(&self, id: ConnectionId, reason: &str) {
        tracing::debug!(connection = %id, reason, "rejected");
        self.lock()
            .borrow()
            .push_to(id, ServerMessage::Rejected(reason).to_frame());
    }

    /// The checks that must hold when a link is made, in the reference's order from `accepting new users` on.
    fn link_refusal(&self, username: &str) -> Option<String> {
        let guard = self.lock();
        let state = guard.borrow();
        match state.user(username) {
            None if !self.inner.config.accept_new_users => Some("server is not accepting new users".to_owned()),
            Some(slot) if slot.link.is_some() => Some(format!("user {username} is already linked to a connection")),
            _ => None,
        }
    }

    fn attempt_link(&self, id: ConnectionId, request: LinkRequest) {
        let config = &self.inner.config;
        if !config.accepted_versions.accepts(&request.version) {
            return self.reply_rejected(id, &AcceptedVersions::mismatch_reason(&request.version));
        }
        if request.username.len() > MAX_USERNAME_BYTES || !config.is_valid_username(&request.username) {
            return self.reply_rejected(id, "invalid username");
        }
        if let Some(reason) = self.link_refusal(&request.username) {
            return self.reply_rejected(id, &reason);
        }
        let LinkRequest { username, auth, .. } = request;
        let info = AuthInfo {
            is_new_user: self.lock().borrow().user(&username).is_none(),
            auth,
        };
        let ctx = AuthContext::default();
        let panics = self.emit(
            Event::Authenticate {
                username: &username,
                info: &info,
            },
            |events| events.authenticate.emit("authenticate", |f| f(&username, &info, &ctx)),
        );
        // A reason given to `reject` wins over a panic, whichever came first, as in the reference.
        if let Some(first_panic) = panics.into_iter().next() {
            ctx.reject(first_panic);
        }
        let pending = ctx.take_pending();
        if pending.is_empty() || ctx.is_rejected() {
            return self.decide_link(id, &username, &ctx);
        }
        self.authenticate_async(id, username, ctx, pending);
    }

    /// Runs the marked futures on a task, bounded by the auth timeout, then decides the attempt.
    fn authenticate_async(&self, id: ConnectionId, username: String, ctx: AuthContext, pending: Vec<AuthFuture>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("async authentication needs a tokio runtime");
            ctx.reject("authentication failed");
            return self.decide_link(id, &username, &ctx);
        };
        let attempt = {
            let guard = self.lock();
            let mut state = guard.borrow_mut();
            let attempt = state.next_attempt;
            state.next_attempt += 1;
            if let Some(connection) = state.connections.get_mut(&id) {
                connection.state = ConnectionState::Linking { attempt, task: None };
            }
            attempt
        };
        let server = self.clone();
        let timeout = self.inner.config.auth_timeout;
        let task = runtime.spawn(async move {
            run_auth(&ctx, pending, timeout).await;
            server.finish_async_link(id, attempt, &username, &ctx);
        });
        let guard = self.lock();
        let mut state = guard.borrow_mut();
        match state.connections.get_mut(&id) {
            Some(Connection {
                state:
                    ConnectionState::Linking {
                        attempt: current,
                        task: slot,
                    },
                ..
            }) if *current == attempt => *slot = Some(task.abort_handle()),
            _ => task.abort(),
        }
    }

    fn finish_async_link(&self, id: ConnectionId, attempt: u64, username: &str, ctx: &AuthContext) {
        let _guard = self.lock();
        {
            let guard = self.lock();
            let mut state = guard.borrow_mut();
            let Some(connection) = state.connections.get_mut(&id) else {
                return;
            };
            match connection.state {
                ConnectionState::Linking { attempt: current, .. } if current == attempt => {
                    connection.state = ConnectionState::Unlinked;
                }
                _ => return,
            }
            if state.status != Status::Listening {
                return;
            }
        }
        self.decide_link(id, username, ctx);
    }

    /// Decides a link attempt once and for all: rejected, or accepted and linked if the checks still hold now.
    fn decide_link(&self, id: ConnectionId, username: &str, ctx: &AuthContext) {
        if let Some(reason) = ctx.decide() {
            return self.reply_rejected(id, &reason);
        }
        // A listener may have closed the server meanwhile; then nobody links any more.
        if self.lock().borrow().status != Status::Listening {
            return;
        }
        // Async authentication let time pass: what held then must hold now.
        if let Some(reason) = self.link_refusal(username) {
            return self.reply_rejected(id, &reason);
        }
        tracing::debug!(connection = %id, username, "accepted");
        self.lock().borrow().push_to(id, ServerMessage::Accepted.to_frame());
        if self.lock().borrow().user(username).is_none() {
            self.join_user(username);
        }
        self.link_user(id, username);
    }

    fn link_user(&self, id: ConnectionId, username: &str) {
        {
            let guard = self.lock();
            let mut state = guard.borrow_mut();
            // A join listener may have kicked the user, or linked it elsewhere; then there is nothing to link.
            let usable = state.user(username).is_some_and(|slot| slot.link.is_none())
                && state
                    .connections
                    .get(&id)
                    .is_some_and(|c| matches!(c.state, ConnectionState::Unlinked));
            if !usable {
                tracing::debug!(connection = %id, username, "link abandoned: state changed during join");
                return;
            }
            let Some(sink) = state.connections.get(&id).map(|c| c.sink.clone()) else {
                return;
            };
            state.mark_linked(id, username);
            if let Some(slot) = state.user_mut(username) {
                slot.link = Some(Link { id, sink: sink.clone() });
            }
            // The newcomer's snapshot of everyone, in join order, itself included: one batch of frames serialized
            // when each user joined.
            let mut snapshot = Vec::with_capacity(2 * state.users.len());
            for slot in state.users.values() {
                snapshot.push(slot.joined.clone());
                if slot.link.is_some() {
                    snapshot.push(slot.linked.clone());
                }
            }
            State::push_batch(sink.as_ref(), id, snapshot);
            if let Some(linked) = state.user(username).map(|slot| slot.linked.clone()) {
                let _ = state.push_to_linked(&linked, Some(username));
            }
        }
        tracing::info!(username, "linked");
        self.emit(Event::Link { username }, |events| {
            events.link.emit("link", |f| f(username))
        });
    }
}

/// Waits until every future succeeded, one failed or panicked, `reject` was called, or the timeout passed; records
/// the outcome in `ctx` (first reason wins). Futures still running are dropped on return.
async fn run_auth(ctx: &AuthContext, pending: Vec<AuthFuture>, timeout: std::time::Duration) {
    let mut running = JoinSet::new();
    for future in pending {
        running.spawn(future);
    }
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            biased;
            () = ctx.rejected() => return,
            next = running.join_next() => match next {
                None => return,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(reason))) => return ctx.reject(reason),
                Some(Err(error)) => {
                    let reason = match error.try_into_panic() {
                        Ok(payload) => panic_message(payload.as_ref()),
                        Err(_) => "authentication failed".to_owned(),
                    };
                    return ctx.reject(reason);
                }
            },
            () = &mut deadline => return ctx.reject("authentication timeout"),
        }
    }
}
