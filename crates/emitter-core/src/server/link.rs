//! Connections: opening, incoming messages, link attempts with their authentication, and closing.
//!
//! An application message from a linked connection takes the fast path: parsed on the connection's task, its
//! listeners run under the user's own turn only, beside other users' messages. Everything else a connection sends
//! (link requests, unlink, leave, anything invalid) changes membership or answers it, and goes through the sequencer.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;

use crate::config::{LinkPolicy, MAX_USERNAME_BYTES};
use crate::error::Status;
use crate::membership::connections::{Connection, Member, Role};
use crate::membership::log_limit;
use crate::metrics::Reason;
use crate::protocol::vocabulary::NOT_LISTENING;
use crate::protocol::{read, ClientMessage, Invalid, LinkRequest, Message, Rejection, ServerMessage};
use crate::server::auth::{AuthContext, AuthFuture, AuthInfo};
use crate::server::changes::Membership;
use crate::server::events::Event;
use crate::server::UserRef;
use crate::transport::handshake::Handshake;
use crate::transport::id::ConnectionId;
use crate::transport::outbox::Outbox;
use crate::Server;
use emitter_listeners::panic_message;

/// What a connection is, as seen on the membership path when one of its messages arrives.
enum Seen {
    Unlinked,
    Linking,
    Linked(Arc<Member>),
}

/// A linked user's application message, to run the listeners for once no lock is held.
type Dispatch = (Arc<Member>, Message);

/// When a link attempt's steps began, for the link and auth latency metrics.
#[derive(Clone, Copy)]
struct Timing {
    /// The link request was received.
    received: Instant,
    /// The authenticate listeners were called.
    asked: Instant,
}

impl Server {
    pub(crate) fn connect(&self, handshake: Handshake) -> Result<(ConnectionId, Outbox), &'static str> {
        let _turn = self.turn();
        if let Some(reason) = self.refusal() {
            tracing::warn!(reason, "incoming connection refused");
            self.inner.metrics.refused(reason);
            return Err(reason);
        }
        let (id, outbox) =
            self.inner
                .connections
                .insert(&self.inner.log, &self.inner.config, &self.inner.metrics, handshake);
        self.publish_open_count();
        tracing::debug!(connection = %id, "connection opened");
        Ok((id, outbox))
    }

    /// Why a new connection would be refused now, if it would; transports ask before upgrading, to refuse cheaply.
    pub(crate) fn refusal(&self) -> Option<&'static str> {
        if self.status() != Status::Listening {
            return Some(NOT_LISTENING);
        }
        self.inner.connections.refusal(&self.inner.config)
    }

    /// The transport could not write to a connection within the write deadline: the client does not read, so the
    /// connection is closed as a slow consumer, as a full queue closes it.
    pub(crate) fn stalled(&self, id: ConnectionId) {
        let Some(connection) = self.inner.connections.get(id) else {
            return;
        };
        tracing::debug!(connection = %id, "a write passed its deadline: closing the slow connection");
        connection.close(crate::transport::close_reason::CloseReason::SlowConsumer);
        let linked = match &connection.state.lock().role {
            Role::Linked(member) => Some(member.name.clone()),
            _ => None,
        };
        if let Some(username) = linked {
            // Broadcasts report it as not getting them from now on.
            self.inner.registry.lock().mark_closing(&username, &connection);
        }
    }

    pub(crate) fn disconnect(&self, id: ConnectionId) {
        let _turn = self.turn();
        let Some(connection) = self.inner.connections.get(id) else {
            return;
        };
        if let Some(sequencer) = self.sequencer() {
            // On a cluster the unlink is queued, not waited for: the connection is gone either way.
            self.unlink_gone(sequencer, std::slice::from_ref(&connection), || {});
        }
        let linked = {
            let mut state = connection.state.lock();
            match &mut state.role {
                Role::Linked(member) => Some(member.name.clone()),
                Role::Linking { task, .. } => {
                    // The attempt dies with its connection: cancel the auth work now.
                    if let Some(task) = task.take() {
                        task.abort();
                    }
                    state.role = Role::Unlinked;
                    None
                }
                Role::Unlinked => None,
            }
        };
        if let Some(username) = linked {
            self.unlink_connection(&connection, &username);
        }
        self.inner.connections.remove(id);
        self.publish_open_count();
        tracing::debug!(connection = %id, "connection closed");
    }

    pub(crate) fn receive(&self, id: ConnectionId, data: &[u8]) {
        self.inner.metrics.received(data.len());
        if self.status() != Status::Listening {
            tracing::debug!(connection = %id, status = %self.status(), "message ignored");
            return;
        }
        let Some(connection) = self.inner.connections.get(id) else {
            return;
        };
        let member = {
            let mut state = connection.state.lock();
            if state.closing {
                return;
            }
            if !state.take_token() {
                tracing::debug!(connection = %id, "message rate limit exceeded: closing the connection");
                connection.close_locked(&mut state, crate::transport::close_reason::CloseReason::RateLimit);
                let member = match &state.role {
                    Role::Linked(member) => Some(member.clone()),
                    _ => None,
                };
                drop(state);
                if let Some(member) = member {
                    self.inner.registry.lock().mark_closing(&member.name, &connection);
                }
                return;
            }
            match &state.role {
                Role::Linked(member) => Some(member.clone()),
                _ => None,
            }
        };
        let raw_kinds = self.inner.raw_kinds.load();
        let message = read(data, self.inner.config.max_json_depth, &raw_kinds).map(ClientMessage::from);
        let mut next = match (member, message) {
            (Some(member), Ok(ClientMessage::Custom(message))) => Some((member, message)),
            (_, message) => self.receive_in_order(&connection, message),
        };
        while let Some((member, message)) = next {
            next = self.dispatch(&connection, &member, message);
        }
    }

    /// Runs the `message` listeners for a linked user's application message, in the user's turn. The turn is never
    /// taken on the membership path, and the sequencer never while waiting for a turn, so the two cannot deadlock.
    fn dispatch(&self, connection: &Arc<Connection>, member: &Arc<Member>, message: Message) -> Option<Dispatch> {
        let turn = member.turn.lock();
        // The user may have been unlinked while this message was parsed: then it comes from an unlinked connection.
        let still_linked = matches!(&connection.state.lock().role, Role::Linked(now) if Arc::ptr_eq(now, member));
        if !still_linked {
            drop(turn);
            return self.receive_in_order(connection, Ok(ClientMessage::Custom(message)));
        }
        // A node whose lease is not valid does not speak for its users: they may be linked on another node by now.
        if self.fenced() {
            tracing::debug!(connection = %connection.id, "message dropped: this node's lease is not valid");
            return None;
        }
        let username = member.name.as_str();
        let message = &message;
        log_limit::handling(connection.id, || {
            self.emit(Event::Message { username, message }, |events| {
                events
                    .message
                    .emit("message", |f| f(UserRef::new(self, username), message))
            })
        });
        None
    }

    /// Whether a warning that the message being handled on this thread caused may be logged: `Some(left_out)` within
    /// its connection's allowance (see `log_limit`), or when no connection's message is being handled.
    pub(crate) fn client_warning(&self) -> Option<u64> {
        match log_limit::handled_for().and_then(|id| self.inner.connections.get(id)) {
            Some(connection) => connection.warnings.allow(),
            None => Some(0),
        }
    }

    /// Handles what a connection sent, other than a linked user's application message, on the membership path.
    /// Returns an application message to dispatch when the connection turned out to be linked by now.
    fn receive_in_order(
        &self,
        connection: &Arc<Connection>,
        message: Result<ClientMessage, Invalid>,
    ) -> Option<Dispatch> {
        let received = Instant::now();
        // On a cluster, what an unlinked connection asks is queued for the cluster to decide (a change that needs the
        // turn takes it itself), and a connection's messages come one at a time: its link requests never wait for the
        // turn behind the node's other changes.
        let _turn = self.sequencer().is_none().then(|| self.turn());
        if self.status() != Status::Listening {
            return None;
        }
        let seen = {
            let state = connection.state.lock();
            if state.closing {
                return None;
            }
            match &state.role {
                Role::Unlinked => Seen::Unlinked,
                Role::Linking { .. } => Seen::Linking,
                Role::Linked(member) => Seen::Linked(member.clone()),
            }
        };
        let message = match message {
            Ok(message) => message,
            Err(cause) => {
                match seen {
                    Seen::Linked(member) => self.unlink_invalid(connection, &member.name, &cause),
                    Seen::Unlinked | Seen::Linking => {
                        if let Some(left_out) = connection.warnings.allow() {
                            tracing::warn!(connection = %connection.id, %cause, left_out, "invalid message: rejected");
                        }
                        self.reply_rejected(connection, &Rejection::InvalidMessage.to_string())
                    }
                }
                return None;
            }
        };
        match (seen, message) {
            (Seen::Linked(member), ClientMessage::Link(_) | ClientMessage::Unlink) => {
                self.unlink_connection(connection, &member.name)
            }
            (Seen::Linked(member), ClientMessage::Leave) => self.leave_connection(connection, &member.name),
            (Seen::Linked(member), ClientMessage::UnknownReserved(message)) => {
                let kind = log_limit::shortened(&message.kind);
                // One expression: Rust 1.85 (the MSRV) drops `format_args!`'s temporaries at the end of a `let`.
                self.unlink_invalid(
                    connection,
                    &member.name,
                    &format_args!("the type {kind:?} is reserved (krmx/)"),
                )
            }
            // Linked while this message waited for the sequencer (an async link finished): it is the linked user's.
            (Seen::Linked(member), ClientMessage::Custom(message)) => return Some((member, message)),
            (Seen::Linking, ClientMessage::Link(_)) => {
                self.reply_rejected(connection, &Rejection::LinkRequestPending.to_string())
            }
            (Seen::Unlinked, ClientMessage::Link(Some(request))) => self.attempt_link(connection, request, received),
            (Seen::Unlinked, ClientMessage::Link(None)) => {
                self.reply_rejected(connection, &Rejection::InvalidLinkRequest.to_string())
            }
            (Seen::Unlinked | Seen::Linking, _) => {
                self.reply_rejected(connection, &Rejection::UnlinkedConnection.to_string())
            }
        }
        None
    }

    /// Unlinks `username` for an invalid message from its connection (`cause` says why it is invalid): logged with
    /// the user and the cause (within the connection's allowance of warnings), and counted.
    fn unlink_invalid(&self, connection: &Arc<Connection>, username: &str, cause: &dyn std::fmt::Display) {
        self.inner.metrics.linked_invalid.inc();
        if let Some(left_out) = connection.warnings.allow() {
            tracing::warn!(
                connection = %connection.id,
                username,
                %cause,
                left_out,
                "invalid message from a linked user: unlinking it"
            );
        }
        self.unlink_connection(connection, username);
    }

    /// The checks that must hold when a link is made, in the reference's order from `accepting new users` on.
    ///
    /// `cluster_decides`: whether the user is linked is left to the cluster, not read from this node's view. Before
    /// authentication the view is asked on a cluster too, as the reference asks its registry: it knows the links on
    /// every node (they are in the log), so a user linked elsewhere is refused before the app's `on_authenticate`
    /// runs, with the reference's words. After authentication the claim in Redis is the atomic step that decides
    /// (the view may be a moment behind), and while the node holds no lease its view is stale (its own users'
    /// unlinks could not be ordered): then the cluster answers, as unavailable, until the node has started over.
    fn link_refusal(&self, username: &str, cluster_decides: bool) -> Option<String> {
        let replace = self.inner.config.link_policy == LinkPolicy::Replace || cluster_decides;
        let registry = self.inner.registry.lock();
        match registry.user(username) {
            None if !self.inner.config.accept_new_users => Some(Rejection::NotAcceptingNewUsers.to_string()),
            // Only a new user counts against the cap: one that exists always gets back in.
            None if registry.counts().0 >= self.inner.config.max_users => Some(Rejection::TooManyUsers.to_string()),
            Some(slot) if slot.link.is_some() && !replace => {
                Some(Rejection::AlreadyLinked(username.to_owned()).to_string())
            }
            _ => None,
        }
    }

    fn attempt_link(&self, connection: &Arc<Connection>, request: LinkRequest, received: Instant) {
        let config = &self.inner.config;
        if !config.accepted_versions.accepts(&request.version) {
            return self.reply_rejected(connection, &config.accepted_versions.mismatch_reason(&request.version));
        }
        if request.username.len() > MAX_USERNAME_BYTES || !config.is_valid_username(&request.username) {
            return self.reply_rejected(connection, &Rejection::InvalidUsername.to_string());
        }
        // Without a valid lease (by the node's own clock, which runs out before the node has closed its connections
        // and counted the lease lost) the view may be a cut-off node's: the cluster decides.
        let view_is_stale = self
            .sequencer()
            .is_some_and(|sequencer| !sequencer.lease_valid() || !self.inner.metrics.lease_held());
        if let Some(reason) = self.link_refusal(&request.username, view_is_stale) {
            return self.reply_rejected(connection, &reason);
        }
        let LinkRequest { username, auth, .. } = request;
        let info = AuthInfo {
            is_new_user: self.inner.registry.lock().user(&username).is_none(),
            auth,
            handshake: connection.handshake.clone(),
        };
        let ctx = AuthContext::default();
        let timing = Timing {
            received,
            asked: Instant::now(),
        };
        let panics = self.emit(
            Event::Authenticate {
                username: &username,
                info: &info,
            },
            |events| {
                events
                    .authenticate
                    .emit("authenticate", |f| f(UserRef::new(self, &username), &info, &ctx))
            },
        );
        // A reason given to `reject` wins over a panic, whichever came first, as in the reference. The panic's text
        // was logged; the client gets a generic reason, since a panic's text may say more than a client should know
        // (an app that wants a text sent rejects with it).
        if !panics.is_empty() {
            ctx.reject(Rejection::AuthenticationFailed.to_string());
        }
        let pending = ctx.take_pending();
        if pending.is_empty() || ctx.is_rejected() {
            return self.decide_link(connection, &username, &ctx, timing);
        }
        self.authenticate_async(connection, username, ctx, pending, timing);
    }

    /// Runs the marked futures on a task, bounded by the auth timeout, then decides the attempt.
    fn authenticate_async(
        &self,
        connection: &Arc<Connection>,
        username: String,
        ctx: AuthContext,
        pending: Vec<AuthFuture>,
        timing: Timing,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("async authentication needs a tokio runtime");
            ctx.reject(Rejection::AuthenticationFailed.to_string());
            return self.decide_link(connection, &username, &ctx, timing);
        };
        let attempt = self.inner.next_attempt.fetch_add(1, Ordering::Relaxed);
        connection.state.lock().role = Role::Linking {
            attempt,
            task: None,
            deciding: None,
        };
        let server = self.clone();
        let timeout = self.inner.config.auth_timeout;
        let linking = connection.clone();
        let task = runtime.spawn(async move {
            run_auth(&ctx, pending, timeout).await;
            server.finish_async_link(&linking, attempt, &username, &ctx, timing);
        });
        match &mut connection.state.lock().role {
            Role::Linking {
                attempt: current,
                task: slot,
                ..
            } if *current == attempt => *slot = Some(task.abort_handle()),
            _ => task.abort(),
        }
    }

    fn finish_async_link(
        &self,
        connection: &Arc<Connection>,
        attempt: u64,
        username: &str,
        ctx: &AuthContext,
        timing: Timing,
    ) {
        let _turn = self.turn();
        {
            let mut state = connection.state.lock();
            match state.role {
                Role::Linking { attempt: current, .. } if current == attempt => state.role = Role::Unlinked,
                _ => return,
            }
        }
        if self.status() != Status::Listening {
            return;
        }
        self.decide_link(connection, username, ctx, timing);
    }

    /// Decides a link attempt once and for all: rejected, or accepted and linked if the checks still hold now.
    fn decide_link(&self, connection: &Arc<Connection>, username: &str, ctx: &AuthContext, timing: Timing) {
        let decision = ctx.decide();
        self.inner.metrics.auth.observe_duration(timing.asked.elapsed());
        if let Some(reason) = decision {
            return self.reply_rejected(connection, &reason);
        }
        // A listener may have closed the server meanwhile; then nobody links any more.
        if self.status() != Status::Listening {
            return;
        }
        // Async authentication let time pass: what held then must hold now (on a cluster, as far as this node's
        // replica tells; the cluster decides the rest).
        if let Some(reason) = self.link_refusal(username, self.sequencer().is_some()) {
            return self.reply_rejected(connection, &reason);
        }
        if let Some(sequencer) = self.sequencer() {
            return self.decide_link_on_cluster(sequencer, connection, username, timing.received);
        }
        tracing::debug!(connection = %connection.id, username, "accepted");
        self.inner.metrics.accepted();
        let _ = connection.push(ServerMessage::Accepted.to_frame());
        let linked = self
            .inner
            .registry
            .lock()
            .user(username)
            .map(|slot| slot.link.is_some());
        match linked {
            None => self.join_user(username),
            Some(true) => self.unlink_replaced(username), // only with LinkPolicy::Replace: refused otherwise
            Some(false) => {}
        }
        if self.apply_link(connection, username) {
            self.inner.metrics.link.observe_duration(timing.received.elapsed());
            self.emit_membership(Membership::Link, username);
        }
    }
}

impl Server {
    /// Answers `krmx/rejected` with `reason`, counted by its kind.
    fn reply_rejected(&self, connection: &Connection, reason: &str) {
        self.inner.metrics.rejected(Reason::of(reason));
        send_rejected(connection, reason);
    }
}

pub(crate) fn send_rejected(connection: &Connection, reason: &str) {
    tracing::debug!(connection = %connection.id, reason, "rejected");
    let _ = connection.push(ServerMessage::Rejected(reason).to_frame());
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
                    // As for a listener's panic: its text is logged, the client gets a generic reason.
                    if let Ok(payload) = error.try_into_panic() {
                        let message = panic_message(payload.as_ref());
                        tracing::error!(panic = %message, "an authentication future panicked; the link is rejected");
                    }
                    return ctx.reject(Rejection::AuthenticationFailed.to_string());
                }
            },
            () = &mut deadline => return ctx.reject(Rejection::AuthenticationTimeout.to_string()),
        }
    }
}
