//! The server: its state, the actions that change it, and the order in which they reach clients and listeners.
//!
//! Every change runs under one re-entrant dispatch lock. A listener that calls back into the server re-enters on the
//! same thread; other threads wait their turn. The state itself sits in a `RefCell` that is borrowed only in short
//! scopes and never while a listener runs, so a listener always sees the state as it is at its event, and the
//! messages clients receive are queued in the same order as the events.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{ReentrantMutex, ReentrantMutexGuard};
use serde::Serialize;
use tokio::sync::watch;

use crate::config::{Config, ServerBuilder};
use crate::error::{Error, Status};
use crate::events::Event;
use crate::protocol::{Frame, Message, ServerMessage};
use crate::state::{ConnectionState, State};
use crate::subscribe::Events;
use crate::transport::{Host, PushError};

/// What a broadcast did: how many linked users got the message queued, and who did not.
///
/// A recipient misses a message only when its connection is closing or is a slow consumer (its queue was full, so the
/// server is closing it); either way that user is about to be unlinked, and a client that relinks gets a fresh
/// snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Broadcast {
    /// How many linked users had the message queued.
    pub delivered: usize,
    /// The users whose connection did not take the message, and why.
    pub undelivered: Vec<(String, crate::transport::PushError)>,
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

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) events: Events,
    pub(crate) state: ReentrantMutex<RefCell<State>>,
    pub(crate) status_tx: watch::Sender<Status>,
    pub(crate) open_tx: watch::Sender<usize>,
}

/// A Krmx server: users, the connections linked to them, and the listeners that react to them.
///
/// It is cheap to clone; clones share everything. Methods can be called from any thread and from inside any listener.
/// Listeners run while the server holds its dispatch lock, so keep them quick: anything slow (a database, the network)
/// belongs in [`AuthContext::mark_async`](crate::AuthContext::mark_async) or a spawned task.
///
/// ```
/// use emitter_core::{Message, Server};
///
/// let server = Server::new();
/// let s = server.clone();
/// let _ = server.on_message(move |username, message| {
///     if message.kind == "chat/say" {
///         let said = Message::with_payload("chat/said", &(username, &message.payload)).unwrap();
///         let _ = s.broadcast(&said, None);
///     }
/// });
/// ```
#[derive(Clone)]
pub struct Server {
    pub(crate) inner: Arc<Inner>,
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

type Guard<'a> = ReentrantMutexGuard<'a, RefCell<State>>;

fn require(state: &State, action: &'static str, allowed: &[Status]) -> Result<(), Error> {
    if allowed.contains(&state.status) {
        Ok(())
    } else {
        Err(Error::WrongStatus {
            action,
            status: state.status,
        })
    }
}

impl Server {
    /// A server with the default configuration.
    pub fn new() -> Server {
        Server::builder().build()
    }

    /// Starts configuring a server.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    pub(crate) fn with_config(config: Config) -> Server {
        Server {
            inner: Arc::new(Inner {
                config,
                events: Events::default(),
                state: ReentrantMutex::new(RefCell::new(State::new())),
                status_tx: watch::Sender::new(Status::Initializing),
                open_tx: watch::Sender::new(0),
            }),
        }
    }

    /// The server's settings.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The transport's handle on this server. Applications do not need it.
    pub fn host(&self) -> Host {
        Host { server: self.clone() }
    }

    pub(crate) fn lock(&self) -> Guard<'_> {
        self.inner.state.lock()
    }

    /// The server's status.
    pub fn status(&self) -> Status {
        self.lock().borrow().status
    }

    /// The users, in the order they joined. A user who relinks keeps its place; one who leaves and joins again goes
    /// last.
    pub fn users(&self) -> Vec<User> {
        let guard = self.lock();
        let state = guard.borrow();
        state
            .users
            .values()
            .map(|slot| User {
                username: slot.username.clone(),
                is_linked: slot.link.is_some(),
            })
            .collect()
    }

    /// Runs `f` under the server's dispatch lock: no connection, timer or other thread changes the server until `f`
    /// returns, so a check and the action it decides on happen together. Server methods called inside `f` work as
    /// they do in a listener, and the events they cause are emitted inside `f`.
    ///
    /// Keep `f` as quick as a listener: everything else waits for it.
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
        let _guard = self.lock();
        f(self)
    }

    /// One user, if it exists.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// assert_eq!(server.user("simon"), None);
    /// ```
    pub fn user(&self, username: &str) -> Option<User> {
        let guard = self.lock();
        let state = guard.borrow();
        state.user(username).map(|slot| User {
            username: slot.username.clone(),
            is_linked: slot.link.is_some(),
        })
    }

    /// Sends `message` to one linked user.
    ///
    /// Fails when the server is not listening or closing, or when the user does not exist or is not linked. It also
    /// fails when the user's connection is closing, or its outgoing queue is full: then the connection is a slow
    /// consumer and is closed, which unlinks the user.
    pub fn send(&self, username: &str, message: &Message) -> Result<(), Error> {
        self.send_frame(username, Frame::from(message))
    }

    /// Sends any serializable value as the message (it should serialize to an object with a string `type`).
    ///
    /// ```
    /// #[derive(serde::Serialize)]
    /// struct Said<'a> { r#type: &'a str, payload: &'a str }
    /// let server = emitter_core::Server::new();
    /// assert!(server.send_json("simon", &Said { r#type: "chat/said", payload: "hi" }).is_err()); // not listening
    /// ```
    pub fn send_json<T: Serialize + ?Sized>(&self, username: &str, message: &T) -> Result<(), Error> {
        self.send_frame(username, Frame::encode(message))
    }

    fn send_frame(&self, username: &str, frame: Frame) -> Result<(), Error> {
        let guard = self.lock();
        let state = guard.borrow();
        require(&state, "send a message", &[Status::Listening, Status::Closing])?;
        let slot = state.user(username).ok_or(Error::SendToUnknownUser)?;
        let link = slot.link.as_ref().ok_or(Error::SendToUnlinkedUser)?;
        State::push(link.sink.as_ref(), link.id, frame).map_err(|error| match error {
            PushError::Full => Error::QueueFull,
            PushError::Closed => Error::ConnectionClosing,
        })
    }

    /// Sends `message` to every linked user except `skip`. The message is serialized once. The report says who, if
    /// anyone, did not get it (see [`Broadcast`]).
    ///
    /// Fails when the server is not listening or closing.
    pub fn broadcast(&self, message: &Message, skip: Option<&str>) -> Result<Broadcast, Error> {
        self.broadcast_frame(Frame::from(message), skip)
    }

    /// Broadcasts any serializable value as the message, like [`broadcast`](Server::broadcast).
    pub fn broadcast_json<T: Serialize + ?Sized>(&self, message: &T, skip: Option<&str>) -> Result<Broadcast, Error> {
        self.broadcast_frame(Frame::encode(message), skip)
    }

    fn broadcast_frame(&self, frame: Frame, skip: Option<&str>) -> Result<Broadcast, Error> {
        let guard = self.lock();
        let state = guard.borrow();
        require(&state, "broadcast a message", &[Status::Listening, Status::Closing])?;
        Ok(state.push_to_linked(&frame, skip))
    }

    /// Joins a user that no connection is linked to yet; a connection can link to it later, even when the server does
    /// not accept new users.
    ///
    /// Fails when the server is not listening, the user exists, or the name fails the username rule.
    pub fn join(&self, username: &str) -> Result<(), Error> {
        let _guard = self.lock();
        {
            let guard = self.lock();
            let state = guard.borrow();
            require(&state, "join a user", &[Status::Listening])?;
            if state.user(username).is_some() {
                return Err(Error::JoinExistingUser);
            }
        }
        if !self.inner.config.is_valid_username(username) {
            return Err(Error::JoinInvalidUsername);
        }
        self.join_user(username);
        Ok(())
    }

    /// Unlinks a user's connection. The connection stays open and may link again.
    ///
    /// Fails when the server is not listening or closing, or the user does not exist or is not linked.
    pub fn unlink(&self, username: &str) -> Result<(), Error> {
        let _guard = self.lock();
        {
            let guard = self.lock();
            let state = guard.borrow();
            require(
                &state,
                "unlink a connection from a user",
                &[Status::Listening, Status::Closing],
            )?;
            let slot = state.user(username).ok_or(Error::UnlinkUnknownUser)?;
            if slot.link.is_none() {
                return Err(Error::UnlinkUnlinkedUser);
            }
        }
        self.unlink_user(username);
        Ok(())
    }

    /// Makes a user leave, linked or not: it is unlinked first if needed, then removed. Its connection stays open and
    /// may link again.
    ///
    /// Fails when the server is not listening or the user does not exist.
    pub fn kick(&self, username: &str) -> Result<(), Error> {
        let _guard = self.lock();
        {
            let guard = self.lock();
            let state = guard.borrow();
            require(&state, "kick a user", &[Status::Listening])?;
            if state.user(username).is_none() {
                return Err(Error::KickUnknownUser);
            }
        }
        tracing::info!(username, "kicked");
        self.leave_user(username);
        Ok(())
    }

    /// Closes the server: every user leaves (unlinked, then left, with the events and messages that go with that),
    /// pending link attempts are dropped, every connection is closed and the transport stops. Then `close` is emitted.
    ///
    /// The work up to closing the connections happens before this returns, so calling it from a listener without
    /// awaiting is fine. The future resolves once the server is `closed`; `Err` means the server was not `starting` or
    /// `listening`.
    pub fn close(&self) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let started = self.begin_close();
        let mut status = self.inner.status_tx.subscribe();
        async move {
            started?;
            // The sender lives as long as the server, which the closing task holds.
            let _ = status.wait_for(|status| *status == Status::Closed).await;
            Ok(())
        }
    }

    fn begin_close(&self) -> Result<(), Error> {
        let _guard = self.lock();
        let (usernames, pending) = {
            let guard = self.lock();
            let mut state = guard.borrow_mut();
            require(&state, "close", &[Status::Starting, Status::Listening])?;
            self.set_status(&mut state, Status::Closing);
            let mut pending = Vec::new();
            for connection in state.connections.values_mut() {
                if let ConnectionState::Linking { task, .. } = &mut connection.state {
                    pending.extend(task.take());
                    connection.state = ConnectionState::Unlinked;
                }
            }
            let usernames: Vec<String> = state.users.values().map(|slot| slot.username.clone()).collect();
            (usernames, pending)
        };
        tracing::info!("server is closing");
        for task in pending {
            task.abort();
        }
        for username in usernames {
            let exists = self.lock().borrow().user(&username).is_some();
            if exists {
                self.leave_user(&username);
            }
        }
        {
            let guard = self.lock();
            let state = guard.borrow();
            for connection in state.connections.values() {
                connection.sink.close();
            }
        }
        self.finish_close_when_idle();
        Ok(())
    }

    /// Emits `close` once no connection and no transport is left. Runs on a task when there is something to wait for.
    fn finish_close_when_idle(&self) {
        let idle = self.lock().borrow().open_count() == 0;
        if idle {
            self.finish_close();
            return;
        }
        let server = self.clone();
        let mut open = self.inner.open_tx.subscribe();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = open.wait_for(|open| *open == 0).await;
                    server.finish_close();
                });
            }
            Err(_) => {
                tracing::warn!("close() outside a tokio runtime with connections open: closing without waiting");
                self.finish_close();
            }
        }
    }

    fn finish_close(&self) {
        let _guard = self.lock();
        {
            let guard = self.lock();
            let mut state = guard.borrow_mut();
            if state.status != Status::Closing {
                return;
            }
            // Listeners see `closed`; the futures waiting on close() wake only after the listeners ran.
            state.status = Status::Closed;
        }
        tracing::info!("server closed");
        self.emit(Event::Close, |events| events.close.emit("close", |f| f()));
        self.inner.status_tx.send_replace(Status::Closed);
        // A closed server emits nothing more. Dropping the listeners breaks the cycle that a listener holding a clone
        // of the server makes, so the server is freed once the application lets go of it.
        self.inner.events.clear();
    }

    pub(crate) fn set_status(&self, state: &mut State, status: Status) {
        state.status = status;
        self.inner.status_tx.send_replace(status);
    }

    pub(crate) fn publish_open_count(&self, state: &State) {
        self.inner.open_tx.send_replace(state.open_count());
    }

    /// Resolves when the server starts closing (or has closed). Useful as a graceful-shutdown signal.
    pub fn closing(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut status = self.inner.status_tx.subscribe();
        async move {
            let _ = status.wait_for(|status| *status >= Status::Closing).await;
        }
    }

    // ---- lifecycle, for transports -------------------------------------------------------------------------------

    pub(crate) fn mark_starting(&self) -> Result<(), Error> {
        let guard = self.lock();
        let mut state = guard.borrow_mut();
        require(&state, "start listening", &[Status::Initializing])?;
        self.set_status(&mut state, Status::Starting);
        Ok(())
    }

    pub(crate) fn mark_start_failed(&self) {
        let guard = self.lock();
        let mut state = guard.borrow_mut();
        if state.status == Status::Starting {
            self.set_status(&mut state, Status::Initializing);
        }
    }

    pub(crate) fn mark_listening(&self, port: u16) -> Result<(), Error> {
        let _guard = self.lock();
        {
            let guard = self.lock();
            let mut state = guard.borrow_mut();
            require(&state, "start listening", &[Status::Starting])?;
            self.set_status(&mut state, Status::Listening);
        }
        tracing::info!(port, "listening");
        self.start_link_deadline_sweeper();
        self.emit(Event::Listen { port }, |events| {
            events.listen.emit("listen", |f| f(port))
        });
        Ok(())
    }

    /// Closes connections that stay unlinked past the link deadline, checking a few times per deadline. The task holds
    /// the server weakly and stops when it closes or is dropped.
    fn start_link_deadline_sweeper(&self) {
        let Some(deadline) = self.inner.config.link_deadline else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no tokio runtime: the link deadline is not enforced");
            return;
        };
        let every = (deadline / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let inner = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                let Some(inner) = inner.upgrade() else { return };
                let server = Server { inner };
                if server.status() != Status::Listening {
                    return;
                }
                server.close_overdue(deadline);
            }
        });
    }

    pub(crate) fn transport_started(&self) {
        let guard = self.lock();
        let mut state = guard.borrow_mut();
        state.transports += 1;
        self.publish_open_count(&state);
    }

    pub(crate) fn transport_stopped(&self) {
        let guard = self.lock();
        let mut state = guard.borrow_mut();
        state.transports = state.transports.saturating_sub(1);
        self.publish_open_count(&state);
    }

    // ---- the state machine's steps ---------------------------------------------------------------------------------
    // Each step changes the state, queues the messages that tell clients, then emits its event. Callers hold the
    // dispatch lock and have checked the step's preconditions.

    /// Emits an event to the any-listeners, then to the event's own listeners. Returns the panic messages.
    pub(crate) fn emit(&self, event: Event<'_>, specific: impl FnOnce(&Events) -> Vec<String>) -> Vec<String> {
        let events = &self.inner.events;
        let mut panics = events.any.emit(event.name(), |f| f(&event));
        panics.extend(specific(events));
        panics
    }

    pub(crate) fn join_user(&self, username: &str) {
        {
            let guard = self.lock();
            let mut state = guard.borrow_mut();
            let joined = state.insert_user(username).joined.clone();
            // The newcomer is not linked, so this reaches exactly the users linked before it joined.
            let _ = state.push_to_linked(&joined, None);
        }
        tracing::info!(username, "joined");
        self.emit(Event::Join { username }, |events| {
            events.join.emit("join", |f| f(username))
        });
    }

    pub(crate) fn unlink_user(&self, username: &str) {
        {
            let guard = self.lock();
            let mut state = guard.borrow_mut();
            let _ = state.push_to_linked(&ServerMessage::Unlinked(username).to_frame(), None);
            let Some(link) = state.user_mut(username).and_then(|slot| slot.link.take()) else {
                return;
            };
            state.mark_unlinked(link.id);
        }
        tracing::info!(username, "unlinked");
        self.emit(Event::Unlink { username }, |events| {
            events.unlink.emit("unlink", |f| f(username))
        });
    }

    pub(crate) fn leave_user(&self, username: &str) {
        let linked = self.lock().borrow().user(username).and_then(|slot| slot.link.clone());
        if let Some(link) = linked {
            self.unlink_user(username);
            // The leaving connection hears of its own leave, as in the reference.
            let _ = State::push(link.sink.as_ref(), link.id, ServerMessage::Left(username).to_frame());
        }
        {
            let guard = self.lock();
            let mut state = guard.borrow_mut();
            // An unlink listener may have kicked the user already; then its leave has been told.
            if state.user(username).is_none_or(|slot| slot.link.is_some()) {
                return;
            }
            let _ = state.push_to_linked(&ServerMessage::Left(username).to_frame(), None);
            state.remove_user(username);
        }
        tracing::info!(username, "left");
        self.emit(Event::Leave { username }, |events| {
            events.leave.emit("leave", |f| f(username))
        });
    }
}
