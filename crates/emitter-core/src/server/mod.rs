//! The server handle and the methods applications call: users, sending, and the membership actions.
//!
//! Work for different connections runs in parallel. Two paths, with different needs:
//! - **Messages** (the hot path) take no server-wide lock: a connection's message is parsed on its own task, its
//!   `message` listeners run beside those of other users, `send` finds a user's connection in a sharded map, and a
//!   broadcast takes only the short fan-out lock while it appends one serialized frame to the fan-out log.
//! - **Membership** (link, unlink, join, leave, kick, close) is rare and takes one order: see `server/changes.rs`.
//!
//! The guarantees this gives, and what it does not promise, are in the book's concepts chapter ("Order and
//! concurrency").

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use emitter_listeners::Listeners;
use serde::Serialize;
use tokio::sync::watch;

use crate::cluster::{Change, Sequencer};
use crate::config::Config;
use crate::error::{Error, Status};
use crate::membership::connections::{Connection, Connections};
use crate::membership::registry::{Broadcast, Link, Registry};
use crate::metrics::Metrics;
use crate::protocol::{Frame, Message, RESERVED_PREFIX};
use crate::server::auth::{AuthContext, AuthInfo};
use crate::server::events::{Event, MembershipEvent};
use crate::shards::Shards;
use crate::sync::{Mutex, ReentrantMutex};
use crate::transport::fanout::Log;
use crate::transport::outbox::PushError;

pub(crate) mod auth;
pub(crate) mod builder;
pub(crate) mod changes;
pub(crate) mod events;
pub(crate) mod host;
pub(crate) mod lifecycle;
pub(crate) mod link;
pub(crate) mod node;
mod ops;
mod subscribe;
mod user_ref;

/// The user an event is about, as a listener gets it: it reads as the username and reaches the server.
///
/// It is two references, made for each call without allocating: it borrows the server for the call, so a listener
/// reaches the server without capturing a clone of it (a clone in a listener would keep the server alive as long as
/// the server keeps the listener). [`Deref`](std::ops::Deref) to `str`, [`Display`](fmt::Display) and the comparisons with strings
/// make it read as the username (and it serializes as one); [`server`](UserRef::server) and [`send`](UserRef::send) act on the server. To keep
/// the name past the call, take [`username`](UserRef::username)`.to_owned()` or `to_string()`.
///
/// (A [`User`](crate::User) is something else: an entry of [`Server::users`], owned, with its link state.)
///
/// ```
/// use emitter_core::{Message, Server};
///
/// let server = Server::new();
/// server.on_message(|u, m| {
///     if u == "admin" && m.kind == "chat/mute" {
///         let _ = u.server().kick(m.payload_as::<String>().unwrap_or_default().as_str());
///     }
///     tracing::info!(username = %u, len = u.len(), "message");
///     let _ = u.send(&Message::new("chat/ack"));
/// });
/// ```
#[derive(Clone, Copy)]
pub struct UserRef<'a> {
    server: &'a Server,
    username: &'a str,
}

/// A user as the server lists it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct User {
    /// The user's name.
    pub username: String,
    /// Whether a connection is linked to the user. It is `isLinked` in JSON, as in the reference.
    #[serde(rename = "isLinked")]
    pub is_linked: bool,
}

type UserListener = dyn Fn(UserRef<'_>) + Send + Sync;
type AnyListener = dyn Fn(&Server, &Event<'_>) + Send + Sync;
type AuthListener = dyn Fn(UserRef<'_>, &AuthInfo, &AuthContext) + Send + Sync;
type MessageListener = dyn Fn(UserRef<'_>, &Message) + Send + Sync;
type ListenListener = dyn Fn(&Server, u16) + Send + Sync;
type CloseListener = dyn Fn(&Server) + Send + Sync;
type MembershipListener = dyn Fn(&Server, &MembershipEvent<'_>) + Send + Sync;

/// One listener list per event (registered through `server/subscribe.rs`).
#[derive(Default)]
pub(crate) struct Events {
    pub(crate) any: Listeners<AnyListener>,
    pub(crate) listen: Listeners<ListenListener>,
    pub(crate) close: Listeners<CloseListener>,
    pub(crate) authenticate: Listeners<AuthListener>,
    pub(crate) join: Listeners<UserListener>,
    pub(crate) link: Listeners<UserListener>,
    pub(crate) unlink: Listeners<UserListener>,
    pub(crate) leave: Listeners<UserListener>,
    pub(crate) message: Listeners<MessageListener>,
    /// Every membership change this node applies, made here or not (see `Server::on_membership`).
    pub(crate) membership: Listeners<MembershipListener>,
}

impl Events {
    /// Drops every listener.
    pub(crate) fn clear(&self) {
        self.any.clear();
        self.listen.clear();
        self.close.clear();
        self.authenticate.clear();
        self.join.clear();
        self.link.clear();
        self.unlink.clear();
        self.leave.clear();
        self.message.clear();
        self.membership.clear();
    }
}

/// Counts of what the server dropped rather than handled, for monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Messages of a type with an [`on_payload`](Server::on_payload) listener whose payload did not fit its type.
    pub payload_mismatches: u64,
    /// Messages kept for unlinked users (see [`keep_unlinked`](crate::ServerBuilder::keep_unlinked)) that were
    /// dropped: past a limit, or too old when the user relinked.
    pub unlinked_dropped: u64,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) events: Events,
    /// The membership order: held for a whole membership change and the listeners it runs (see `server/changes.rs`).
    pub(crate) sequencer: ReentrantMutex<()>,
    /// The users in join order and their links; also the fan-out lock (see `membership/registry.rs`).
    pub(crate) registry: Mutex<Registry>,
    /// Every frame with more than one recipient, in one order (see `transport/fanout.rs`).
    pub(crate) log: Arc<Log>,
    /// The linked users' connections by name, so that `send` needs no server-wide lock. It changes together with the
    /// registry, under the fan-out lock.
    pub(crate) links: Shards<String, Arc<Connection>>,
    pub(crate) connections: Connections,
    /// The status, readable without a lock; it changes on the membership path only, where `status_tx` follows it.
    pub(crate) status: AtomicU8,
    pub(crate) status_tx: watch::Sender<Status>,
    /// Open connections plus running transports: `close()` finishes when it reaches zero.
    pub(crate) open_tx: watch::Sender<usize>,
    pub(crate) transports: AtomicUsize,
    pub(crate) next_attempt: AtomicU64,
    pub(crate) payload_mismatches: AtomicU64,
    /// The cluster's sequencer, when the server is a node of one (see `server/node.rs`).
    pub(crate) cluster: OnceLock<Arc<dyn Sequencer>>,
    /// The last entry of the cluster's order applied here.
    pub(crate) applied: AtomicU64,
    /// On one process: how many membership changes were applied, the seq of `on_membership` events.
    pub(crate) changes: AtomicU64,
    /// Woken whenever `applied` moves: a change's answer waits on it for the entries before its own.
    pub(crate) applied_moved: tokio::sync::Notify,
    /// Local connections whose user is half way through a leave on the cluster (unlinked, not yet left): they hear of
    /// their own leave.
    pub(crate) leaving: Mutex<HashMap<String, Arc<Connection>>>,
    /// What this node knows of the other nodes' generations, from the log and their messages: a message from a
    /// generation it knows fenced or replaced is dropped (see `ClusterHost::admits`).
    pub(crate) origins: Mutex<crate::membership::origins::Origins>,
    /// Set when the node's replica missed entries it could not read (a failed gap fill): it must start over from a
    /// snapshot (see `ClusterHost::resync_needed`).
    pub(crate) resync_needed: AtomicBool,
    pub(crate) resync_wanted: tokio::sync::Notify,
    /// This server's own metrics (see `metrics/`).
    pub(crate) metrics: Arc<Metrics>,
    /// The message types whose payload text is kept as received (see `Server::keep_raw_payload`). Read for every
    /// message without a lock or a shared write; changed rarely.
    pub(crate) raw_kinds: arc_swap::ArcSwap<Vec<Box<str>>>,
}

/// A Krmx server: users, the connections linked to them, and the listeners that react to them.
///
/// It is cheap to clone; clones share everything. Methods can be called from any thread and from inside any listener.
/// Membership listeners (`join`, `link`, `unlink`, `leave`, `authenticate`, `listen`, `close`) run one change at a
/// time, in one order; `message` listeners of different users run in parallel. Keep listeners quick: anything slow (a
/// database, the network) belongs in [`AuthContext::mark_async`](crate::AuthContext::mark_async) or a spawned task.
///
/// ```
/// use emitter_core::Server;
///
/// let server = Server::new();
/// server.on_payload("chat/say", |u, text: String| {
///     let _ = u.server().broadcast_payload("chat/said", &(u, text), None);
/// });
/// ```
#[derive(Clone)]
pub struct Server {
    pub(crate) inner: Arc<Inner>,
}

/// A [`Server`] that does not keep it alive: see [`Server::downgrade`].
#[derive(Clone)]
pub struct WeakServer(std::sync::Weak<Inner>);

impl WeakServer {
    /// The server, while something else keeps it alive.
    pub fn upgrade(&self) -> Option<Server> {
        self.0.upgrade().map(|inner| Server { inner })
    }
}

impl fmt::Debug for WeakServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakServer").finish_non_exhaustive()
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("status", &self.status())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Default for Server {
    fn default() -> Self {
        Server::new()
    }
}

/// Fails for a type the protocol reserves: clients act on `krmx/` messages, so the server sends none of its own making.
fn unreserved(kind: &str) -> Result<(), Error> {
    if kind.starts_with(RESERVED_PREFIX) {
        Err(Error::ReservedType(kind.to_owned()))
    } else {
        Ok(())
    }
}

/// `{"type": kind, "payload": payload}`, serialized once.
fn typed_frame<T: Serialize + ?Sized>(kind: &str, payload: &T) -> Result<Frame, Error> {
    #[derive(Serialize)]
    struct Typed<'a, T: ?Sized> {
        #[serde(rename = "type")]
        kind: &'a str,
        payload: &'a T,
    }
    unreserved(kind)?;
    Frame::encode(&Typed { kind, payload }).map_err(|error| Error::Serialize(error.to_string()))
}

/// Fails with `cannot {action} when the server is {status}` unless the status is one of `allowed`.
pub(crate) fn require(status: Status, action: &'static str, allowed: &[Status]) -> Result<(), Error> {
    if allowed.contains(&status) {
        Ok(())
    } else {
        Err(Error::WrongStatus { action, status })
    }
}

impl Server {
    /// A server with the default configuration.
    pub fn new() -> Server {
        Server::builder().build()
    }

    pub(crate) fn with_config(config: Config) -> Server {
        let log = Arc::new(Log::default());
        let metrics = Arc::new(Metrics::new());
        Server {
            inner: Arc::new(Inner {
                registry: Mutex::new(Registry::new(
                    log.clone(),
                    config.outbound_queue,
                    config.outbound_budget,
                    config.keep_unlinked,
                )),
                log,
                config,
                events: Events::default(),
                sequencer: ReentrantMutex::new(()),
                links: Shards::default(),
                connections: Connections::default(),
                status: AtomicU8::new(Status::Initializing as u8),
                status_tx: watch::Sender::new(Status::Initializing),
                open_tx: watch::Sender::new(0),
                transports: AtomicUsize::new(0),
                next_attempt: AtomicU64::new(0),
                payload_mismatches: AtomicU64::new(0),
                cluster: OnceLock::new(),
                applied: AtomicU64::new(0),
                changes: AtomicU64::new(0),
                applied_moved: tokio::sync::Notify::new(),
                leaving: Mutex::new(HashMap::new()),
                origins: Mutex::new(Default::default()),
                resync_needed: AtomicBool::new(false),
                resync_wanted: tokio::sync::Notify::new(),
                metrics,
                raw_kinds: Default::default(),
            }),
        }
    }

    /// The server's settings.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// From now on, received messages of type `kind` keep their payload's JSON text as the client sent it, for
    /// [`Message::raw_payload`]: for a listener that must pass a payload on exactly as sent (members in the order
    /// sent), as `emitter-state` does for stream events. Other types are parsed as before, their text neither kept nor
    /// scanned twice; a kept one costs a second pass over the payload and a copy of its text. Asking again for the same
    /// type does nothing.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// server.keep_raw_payload("game/replay");
    /// ```
    pub fn keep_raw_payload(&self, kind: &str) {
        self.inner.raw_kinds.rcu(|kinds| {
            let mut kinds = Vec::clone(kinds);
            if !kinds.iter().any(|kept| **kept == *kind) {
                kinds.push(kind.into());
            }
            kinds
        });
    }

    /// What the server has dropped rather than handled so far.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// assert_eq!(server.stats().payload_mismatches, 0);
    /// ```
    pub fn stats(&self) -> Stats {
        Stats {
            payload_mismatches: self.inner.payload_mismatches.load(Ordering::Relaxed),
            unlinked_dropped: self.inner.registry.lock().kept_dropped,
        }
    }

    /// The users, in the order they joined. A user who relinks keeps its place; one who leaves and joins again goes
    /// last.
    pub fn users(&self) -> Vec<User> {
        self.inner
            .registry
            .lock()
            .slots()
            .map(|slot| User {
                username: slot.member.name.clone(),
                is_linked: slot.link.is_some(),
            })
            .collect()
    }

    /// One user, if it exists.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// assert_eq!(server.user("simon"), None);
    /// ```
    pub fn user(&self, username: &str) -> Option<User> {
        self.inner.registry.lock().user(username).map(|slot| User {
            username: slot.member.name.clone(),
            is_linked: slot.link.is_some(),
        })
    }

    /// Runs `f` on the membership path: no membership change (a link, unlink, join, leave or kick, from any
    /// connection, timer or thread) happens until `f` returns, so a check and the action it decides on happen
    /// together. Server methods called inside `f` work as they do in a listener, and the events they cause are
    /// emitted inside `f`. Messages keep flowing meanwhile: sends and broadcasts do not wait for `f`.
    ///
    /// Keep `f` as quick as a listener: every membership change waits for it.
    ///
    /// On a node of a cluster it holds off this node's changes only, and a server method called inside `f` queues its
    /// change: it is applied (its events emitted) after `f` returns, once the cluster ordered it (see the book's
    /// cluster chapter).
    ///
    /// ```
    /// # fn demo(server: emitter_core::Server) {
    /// // Kick a user only if it is still unlinked: a relink cannot slip in between the check and the kick.
    /// server.atomically(|server| {
    ///     if server.user("idle").is_some_and(|user| !user.is_linked) {
    ///         let _ = server.kick("idle");
    ///     }
    /// });
    /// # }
    /// ```
    pub fn atomically<R>(&self, f: impl FnOnce(&Server) -> R) -> R {
        let _turn = self.turn();
        f(self)
    }

    /// Sends `message` to one linked user.
    ///
    /// Fails when the server is not listening or closing, when the user does not exist or is not linked, or when the
    /// message's type starts with the reserved `krmx/`. It also fails when the user's connection is closing, or when
    /// too much waits for it already: then the connection is a slow consumer and is closed, which unlinks the user.
    ///
    /// ```
    /// use emitter_core::{Error, Message, Server};
    ///
    /// let server = Server::new();
    /// server.on_link(|u| {
    ///     let _ = u.server().send(&u, &Message::with_payload("chat/welcome", "hi"));
    /// });
    /// ```
    pub fn send(&self, username: &str, message: &Message) -> Result<(), Error> {
        unreserved(&message.kind)?;
        self.send_frame(username, Frame::from(message))
    }

    /// Sends a message of type `kind` whose payload is `payload` serialized to JSON, to one linked user. Fails like
    /// [`send`](Server::send), and with [`Error::Serialize`] when the payload cannot be serialized.
    ///
    /// ```
    /// #[derive(serde::Serialize)]
    /// struct Score { points: u32 }
    ///
    /// let server = emitter_core::Server::new();
    /// server.on_link(|u| {
    ///     let _ = u.server().send_payload(&u, "game/score", &Score { points: 0 });
    /// });
    /// ```
    pub fn send_payload<T: Serialize + ?Sized>(&self, username: &str, kind: &str, payload: &T) -> Result<(), Error> {
        self.send_frame(username, typed_frame(kind, payload)?)
    }

    fn send_frame(&self, username: &str, frame: Frame) -> Result<(), Error> {
        require(self.status(), "send a message", &[Status::Listening, Status::Closing])?;
        let spare = (self.sequencer().is_some() || self.inner.config.keep_unlinked.is_some()).then(|| frame.clone());
        match (self.push_linked_here(username, frame), spare) {
            (Some(pushed), _) => pushed,
            (None, Some(frame)) => self.send_unlinked_here(username, frame),
            (None, None) => Err(self.not_linked(username)),
        }
    }

    /// Queues `frame` for `username`'s connection when it is linked on this node (`None` when it is not): `Err` when
    /// the connection refused it.
    fn push_linked_here(&self, username: &str, frame: Frame) -> Option<Result<(), Error>> {
        // The shard stays read-locked while the frame is queued, so an unlink (which removes the entry first) cannot
        // tell the user's connection it was unlinked before this frame.
        let (connection, pushed) = self
            .inner
            .links
            .with(username, |link| link.map(|link| (link.clone(), link.push(frame))))?;
        Some(pushed.map_err(|error| self.refused_push(username, &connection, error)))
    }

    /// Why a send to `username`, not linked here, fails.
    fn not_linked(&self, username: &str) -> Error {
        match self.user(username) {
            Some(_) => Error::SendToUnlinkedUser,
            None => Error::SendToUnknownUser,
        }
    }

    /// A send to a user not linked on this node: kept for it while it is unlinked, or handed to the node of a
    /// cluster it is linked on, or (linked here meanwhile) pushed to its connection.
    fn send_unlinked_here(&self, username: &str, frame: Frame) -> Result<(), Error> {
        let kept = self.fan_out(|registry| {
            let kept = registry.keep(username, frame.clone());
            if let (Ok(true), Some(sequencer)) = (&kept, self.publisher()) {
                // Every node keeps it, so the user finds it on whichever node it relinks on. Under the fan-out lock,
                // like a broadcast, so that it keeps its place among this node's broadcasts.
                sequencer.publish_kept(username, self.applied(), &frame);
            }
            kept
        });
        match kept {
            Ok(true) => Ok(()),
            Ok(false) if self.user(username).is_some() => Err(Error::SendToUnlinkedUser),
            Ok(false) => Err(Error::SendToUnknownUser),
            Err(Link::Local(connection)) => connection
                .push(frame)
                .map_err(|error| self.refused_push(username, &connection, error)),
            Err(Link::Remote(_)) => match self.send_elsewhere(username, &frame) {
                Some(()) => Ok(()),
                None => Err(Error::SendToUnlinkedUser),
            },
        }
    }

    /// Whether `username` is linked to a connection of this node (on one process: whether it is linked).
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// assert!(!server.is_linked_here("simon"));
    /// ```
    pub fn is_linked_here(&self, username: &str) -> bool {
        self.inner.links.with(username, |link| link.is_some())
    }

    /// Sends `message` to `username` only if it is linked to a connection of this node: never handed to another node
    /// of a cluster, never kept for an unlinked user. For a node that serves its own users what every node has (a
    /// model's replica, see [`Server::on_membership`]). On one process it is [`send`](Server::send) without
    /// [`keep_unlinked`](crate::ServerBuilder::keep_unlinked).
    ///
    /// Fails like [`send`](Server::send), and with [`Error::SendToUnlinkedUser`] for a user linked on another node.
    ///
    /// ```
    /// use emitter_core::{Error, Message, Server};
    ///
    /// let server = Server::new();
    /// let hello = Message::new("app/hello");
    /// assert!(server.send_here("simon", &hello).is_err()); // not listening, and nobody is linked
    /// ```
    pub fn send_here(&self, username: &str, message: &Message) -> Result<(), Error> {
        unreserved(&message.kind)?;
        self.send_frame_here(username, Frame::from(message))
    }

    /// [`send_here`](Server::send_here) with a payload of your own type, serialized to JSON, as in
    /// [`send_payload`](Server::send_payload).
    pub fn send_payload_here<T: Serialize + ?Sized>(
        &self,
        username: &str,
        kind: &str,
        payload: &T,
    ) -> Result<(), Error> {
        self.send_frame_here(username, typed_frame(kind, payload)?)
    }

    fn send_frame_here(&self, username: &str, frame: Frame) -> Result<(), Error> {
        require(self.status(), "send a message", &[Status::Listening, Status::Closing])?;
        self.push_linked_here(username, frame)
            .unwrap_or_else(|| Err(self.not_linked(username)))
    }

    /// A handle that does not keep the server alive: for a long-lived thing the server's listeners hold, that must
    /// reach the server (a listener holding a [`Server`] would keep it alive as long as the server keeps the listener).
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// let weak = server.downgrade();
    /// assert!(weak.upgrade().is_some());
    /// drop(server);
    /// assert!(weak.upgrade().is_none());
    /// ```
    pub fn downgrade(&self) -> WeakServer {
        WeakServer(Arc::downgrade(&self.inner))
    }

    fn refused_push(&self, username: &str, connection: &Arc<Connection>, error: PushError) -> Error {
        match error {
            PushError::Full => {
                // A slow consumer, closed by the push: broadcasts skip it from now on.
                self.inner.registry.lock().mark_closing(username, connection);
                Error::QueueFull
            }
            PushError::Closed => Error::ConnectionClosing,
        }
    }

    /// Sends `message` to every linked user except `skip`. The message is serialized once. The report says who, if
    /// anyone, will not get it (see [`Broadcast`]).
    ///
    /// Fails when the server is not listening or closing, or when the message's type starts with the reserved
    /// `krmx/`.
    pub fn broadcast(&self, message: &Message, skip: Option<&str>) -> Result<Broadcast, Error> {
        unreserved(&message.kind)?;
        self.broadcast_frame(Frame::from(message), skip)
    }

    /// Broadcasts a message of type `kind` whose payload is `payload` serialized to JSON, like
    /// [`broadcast`](Server::broadcast); fails with [`Error::Serialize`] when the payload cannot be serialized.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// server.on_join(|u| {
    ///     let _ = u.server().broadcast_payload("lobby/arrived", &u, Some(u.username()));
    /// });
    /// ```
    pub fn broadcast_payload<T: Serialize + ?Sized>(
        &self,
        kind: &str,
        payload: &T,
        skip: Option<&str>,
    ) -> Result<Broadcast, Error> {
        self.broadcast_frame(typed_frame(kind, payload)?, skip)
    }

    fn broadcast_frame(&self, frame: Frame, skip: Option<&str>) -> Result<Broadcast, Error> {
        require(
            self.status(),
            "broadcast a message",
            &[Status::Listening, Status::Closing],
        )?;
        Ok(self.fan_out(|registry| {
            if let Some(sequencer) = self.publisher() {
                // Under the fan-out lock, so the other nodes get broadcasts in the order this node's users do.
                sequencer.publish_broadcast(self.applied(), skip, &frame);
            }
            registry.keep_for_unlinked(&frame, skip);
            registry.push_to_linked(&frame, skip)
        }))
    }

    /// Runs `f` under the fan-out lock, then wakes the writers waiting for the log.
    pub(crate) fn fan_out<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let result = f(&mut self.inner.registry.lock());
        self.inner.log.wake();
        result
    }

    /// Joins a user that no connection is linked to yet; a connection can link to it later, even when the server does
    /// not accept new users.
    ///
    /// Fails when the server is not listening, the user exists, or the name fails the username rule.
    ///
    /// On a node of a cluster (with a tokio runtime) this node checks what it can, queues the join and returns: the
    /// user joins when the cluster has ordered the change, on every node alike, and the `join` event says so. See
    /// the book's cluster chapter.
    pub fn join(&self, username: &str) -> Result<(), Error> {
        {
            let _turn = self.turn();
            require(self.status(), "join a user", &[Status::Listening])?;
            if self.user(username).is_some() {
                return Err(Error::JoinExistingUser);
            }
            if !self.inner.config.is_valid_username(username) {
                return Err(Error::JoinInvalidUsername);
            }
            if self.sequencer().is_none() {
                self.join_user(username);
                return Ok(());
            }
        }
        // The cluster decides whether the user exists: this node's view may be behind.
        self.cluster_method(Change::join(username))
    }

    /// Unlinks a user's connection. The connection stays open and may link again.
    ///
    /// Fails when the server is not listening or closing, or the user does not exist or is not linked.
    ///
    /// On a node of a cluster (with a tokio runtime) the unlink is queued, as [`join`](Server::join) says.
    pub fn unlink(&self, username: &str) -> Result<(), Error> {
        {
            let _turn = self.turn();
            require(
                self.status(),
                "unlink a connection from a user",
                &[Status::Listening, Status::Closing],
            )?;
            let user = self.user(username).ok_or(Error::UnlinkUnknownUser)?;
            if !user.is_linked {
                return Err(Error::UnlinkUnlinkedUser);
            }
            if self.sequencer().is_none() {
                self.unlink_user(username);
                return Ok(());
            }
        }
        self.cluster_method(Change::unlink(username))
    }

    /// Makes a user leave, linked or not: it is unlinked first if needed, then removed. Its connection stays open and
    /// may link again.
    ///
    /// Fails when the server is not listening or the user does not exist.
    ///
    /// On a node of a cluster (with a tokio runtime) the kick is queued, as [`join`](Server::join) says.
    pub fn kick(&self, username: &str) -> Result<(), Error> {
        {
            let _turn = self.turn();
            require(self.status(), "kick a user", &[Status::Listening])?;
            if self.user(username).is_none() {
                return Err(Error::KickUnknownUser);
            }
            if self.sequencer().is_none() {
                tracing::info!(username, "kicked");
                self.leave_user(username);
                return Ok(());
            }
        }
        tracing::info!(username, "kicking");
        self.cluster_method(Change::leave(username))
    }

    /// A server method's change on a node of a cluster, submitted without holding the turn (see `server/node.rs`).
    fn cluster_method(&self, change: Change) -> Result<(), Error> {
        match self.sequencer() {
            Some(sequencer) => self.submit_method(sequencer, change),
            None => Ok(()),
        }
    }
}
