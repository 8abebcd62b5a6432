//! The open connections: each with its own small lock, in a sharded table, with counts kept for admission.
//!
//! A connection's state is touched by its own transport task (every incoming message) and, rarely, by membership
//! changes; its lock is almost never contended. The table is consulted once per incoming message.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::config::{Config, RateLimit};
use crate::membership::log_limit::LogLimit;
use crate::metrics::{Cause, Metrics};
use crate::protocol::vocabulary::{TOO_MANY_CONNECTIONS, TOO_MANY_UNLINKED};
use crate::protocol::Frame;
use crate::shards::Shards;
use crate::sync::Mutex;
use crate::transport::close_reason::CloseReason;
use crate::transport::fanout::Log;
use crate::transport::handshake::Handshake;
use crate::transport::id::ConnectionId;
use crate::transport::outbox::{Outbox, PushError};
use crate::transport::snapshot::Snapshot;

/// A user as a linked connection knows it: its name, and the turn that keeps the user's messages one at a time
/// (a user that relinks on a new connection while a message from its old one is still being handled waits for it).
pub(crate) struct Member {
    pub(crate) name: String,
    pub(crate) turn: Mutex<()>,
}

impl Member {
    pub(crate) fn new(name: &str) -> Self {
        Member {
            name: name.to_owned(),
            turn: Mutex::new(()),
        }
    }
}

/// Where a connection is in the link protocol.
pub(crate) enum Role {
    Unlinked,
    /// Waiting on async authentication; `attempt` tells a stale result from the current one.
    Linking {
        attempt: u64,
        task: Option<AbortHandle>,
        /// On a cluster, the user whose link the cluster is deciding for this attempt; `None` while authenticating.
        /// A link entry for this connection answers this attempt only if it names this user.
        deciding: Option<String>,
    },
    Linked(Arc<Member>),
}

pub(crate) struct ConnState {
    pub(crate) role: Role,
    /// When the connection last became unlinked (opened, or its user unlinked); `None` while linked, and once the
    /// core has asked the transport to close it.
    pub(crate) unlinked_since: Option<Instant>,
    /// The core asked the transport to close this connection; what it still sends is ignored.
    pub(crate) closing: bool,
    bucket: Option<TokenBucket>,
}

impl ConnState {
    /// Takes a token from the connection's rate limit, if it has one.
    pub(crate) fn take_token(&mut self) -> bool {
        self.bucket.as_mut().is_none_or(|bucket| bucket.take(Instant::now()))
    }
}

pub(crate) struct Connection {
    pub(crate) id: ConnectionId,
    pub(crate) outbox: Outbox,
    /// The request that opened it, for the `authenticate` listeners.
    pub(crate) handshake: Arc<Handshake>,
    /// Its allowance of warnings about what it sends.
    pub(crate) warnings: LogLimit,
    pub(crate) state: Mutex<ConnState>,
    metrics: Arc<Metrics>,
}

impl Connection {
    fn new(
        id: ConnectionId,
        outbox: Outbox,
        handshake: Handshake,
        rate_limit: Option<RateLimit>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let now = Instant::now();
        Connection {
            id,
            outbox,
            handshake: Arc::new(handshake.shrink_to_fit()),
            warnings: LogLimit::default(),
            state: Mutex::new(ConnState {
                role: Role::Unlinked,
                unlinked_since: Some(now),
                closing: false,
                bucket: rate_limit.map(|limit| TokenBucket {
                    limit,
                    tokens: limit.burst,
                    refilled: now,
                }),
            }),
            metrics,
        }
    }

    /// Queues a frame (never call it with this connection's state locked). A full queue marks a slow consumer: its connection is closed, and the transport reports the
    /// close, which unlinks the user the normal way.
    pub(crate) fn push(&self, frame: Frame) -> Result<(), PushError> {
        self.settle(self.outbox.push(frame))
    }

    /// Queues a newcomer's snapshot as one entry of the queue, written at log position `at`, where its window starts.
    pub(crate) fn push_snapshot(&self, snapshot: Snapshot, at: u64) {
        let _ = self.settle(self.outbox.push_snapshot(snapshot, at));
    }

    /// What a refused push means: a closing connection drops it; a full queue marks a slow consumer, which is closed.
    fn settle(&self, outcome: Result<(), PushError>) -> Result<(), PushError> {
        match outcome {
            Ok(()) => {}
            Err(PushError::Closed) => tracing::debug!(connection = %self.id, "dropped: connection is closing"),
            Err(PushError::Full) => {
                tracing::debug!(connection = %self.id, "outgoing queue full: closing the slow connection");
                self.close(CloseReason::SlowConsumer);
            }
        }
        outcome
    }

    /// Asks the transport to close the connection for `reason`, once (the first reason stands).
    pub(crate) fn close(&self, reason: CloseReason) {
        self.close_locked(&mut self.state.lock(), reason);
    }

    /// [`close`](Connection::close), for a caller that holds this connection's `state` locked. The close is counted
    /// in the server's metrics once, for the reason that stands.
    pub(crate) fn close_locked(&self, state: &mut ConnState, reason: CloseReason) {
        if !state.closing {
            state.closing = true;
            state.unlinked_since = None;
            self.metrics.closed(Cause::Core(reason));
            self.outbox.close(reason);
        }
    }
}

/// A token bucket: `tokens` refill at `limit.per_second` up to `limit.burst`; each message takes one.
struct TokenBucket {
    limit: RateLimit,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    fn take(&mut self, now: Instant) -> bool {
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

/// The open connections and how many of them are linked.
#[derive(Default)]
pub(crate) struct Connections {
    table: Shards<ConnectionId, Arc<Connection>>,
    next_id: AtomicUsize,
    open: AtomicUsize,
    linked: AtomicUsize,
}

impl Connections {
    pub(crate) fn get(&self, id: ConnectionId) -> Option<Arc<Connection>> {
        self.table.with(&id, |connection| connection.cloned())
    }

    pub(crate) fn all(&self) -> Vec<Arc<Connection>> {
        self.table.values()
    }

    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    pub(crate) fn linked(&self) -> usize {
        self.linked.load(Ordering::SeqCst)
    }

    /// Why one more connection cannot be admitted now, if it cannot. Connections are admitted on the membership path,
    /// one at a time, so a check and the insert that follows it cannot be overtaken.
    pub(crate) fn refusal(&self, config: &Config) -> Option<&'static str> {
        let open = self.open.load(Ordering::SeqCst);
        let linked = self.linked.load(Ordering::SeqCst);
        if open >= config.max_connections {
            Some(TOO_MANY_CONNECTIONS)
        } else if open.saturating_sub(linked) >= config.max_unlinked_connections {
            Some(TOO_MANY_UNLINKED)
        } else {
            None
        }
    }

    /// Opens a connection whose outbox reads `log`.
    pub(crate) fn insert(
        &self,
        log: &Arc<Log>,
        config: &Config,
        metrics: &Arc<Metrics>,
        handshake: Handshake,
    ) -> (ConnectionId, Outbox) {
        let id = ConnectionId(self.next_id.fetch_add(1, Ordering::Relaxed) as u64);
        let outbox = Outbox::new(id, log.clone(), config.outbound_queue, config.outbound_budget);
        let connection = Connection::new(id, outbox.clone(), handshake, config.rate_limit, metrics.clone());
        self.table.insert(id, Arc::new(connection));
        self.open.fetch_add(1, Ordering::SeqCst);
        (id, outbox)
    }

    pub(crate) fn remove(&self, id: ConnectionId) -> bool {
        let removed = self.table.remove(&id).is_some();
        if removed {
            self.open.fetch_sub(1, Ordering::SeqCst);
        }
        removed
    }

    /// Counts a connection that became linked (`true`) or unlinked (`false`).
    pub(crate) fn count_linked(&self, linked: bool) {
        if linked {
            self.linked.fetch_add(1, Ordering::SeqCst);
        } else {
            self.linked.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
