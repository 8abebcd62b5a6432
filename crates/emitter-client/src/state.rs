//! What a client holds: its configuration, its listeners, and its state behind one re-entrant dispatch lock.
//!
//! Every state change and the events it triggers run under that lock, as in the server: a listener that calls back
//! into the client re-enters on the same thread, and the state it sees is the state at its event. The state sits in a
//! `RefCell` that is borrowed only in short scopes and never while a listener runs. The changes themselves are in
//! [`requests`](crate::requests) (what the application asks for) and [`incoming`](crate::incoming) (what the
//! connection reports).

use std::cell::RefCell;
use std::time::Duration;

use emitter_core::User;
use parking_lot::{ReentrantMutex, ReentrantMutexGuard};
use tokio::sync::{mpsc, oneshot};

use crate::connection::Command;
use crate::error::{ClientStatus, Error};
use crate::event::{ClientEvent, Events};
use crate::reconnect::Reconnect;
use crate::tls::Tls;

/// What a [`ClientBuilder`](crate::ClientBuilder) sets.
pub(crate) struct Config {
    pub(crate) version: String,
    pub(crate) reconnect: Option<Reconnect>,
    pub(crate) close_timeout: Duration,
    pub(crate) tls: Tls,
}

/// Where a request's answer goes: the future the request method returned waits on the other end.
pub(crate) type Reply = oneshot::Sender<Result<(), Error>>;

/// The connection task of the current socket.
pub(crate) struct Connection {
    /// Which socket: a task of an older one reports nothing any more.
    pub(crate) generation: u64,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) status: ClientStatus,
    pub(crate) username: Option<String>,
    pub(crate) users: Vec<User>,
    pub(crate) connection: Option<Connection>,
    pub(crate) generation: u64,
    pub(crate) url: Option<String>,
    /// The user and auth of the last link request, kept while linked, for a reconnect.
    pub(crate) linked_as: Option<(String, Option<String>)>,
    /// Moves on whenever the user asks for something, so that a reconnect under way knows to stop.
    pub(crate) epoch: u64,
    pub(crate) opening: Option<Reply>,
    pub(crate) linking: Option<Reply>,
    pub(crate) unlinking: Option<Reply>,
    pub(crate) closing: Vec<oneshot::Sender<()>>,
}

impl State {
    /// Queues `frame` on the current connection, if there is one.
    pub(crate) fn push(&self, frame: String) {
        match &self.connection {
            Some(connection) if connection.commands.send(Command::Frame(frame)).is_ok() => {}
            _ => tracing::debug!("a message was not sent: the connection is gone"),
        }
    }

    pub(crate) fn user_mut(&mut self, username: &str) -> Option<&mut User> {
        self.users.iter_mut().find(|user| user.username == username)
    }

    /// Marks a user that joined as linked or not, as a `kind` message says; false, with a warning, when no such user
    /// joined (the message is then ignored).
    pub(crate) fn mark_linked(&mut self, username: &str, is_linked: bool, kind: &str) -> bool {
        match self.user_mut(username) {
            Some(user) => {
                user.is_linked = is_linked;
                true
            }
            None => {
                tracing::warn!(username, "{kind} for a user that did not join; ignored");
                false
            }
        }
    }

    /// Whether `generation` is the current connection's.
    pub(crate) fn is_current(&self, generation: u64) -> bool {
        self.connection.as_ref().map(|c| c.generation) == Some(generation)
    }
}

/// Everything a client is; every clone of a [`Client`](crate::Client) shares one.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) events: Events,
    state: ReentrantMutex<RefCell<State>>,
}

impl Shared {
    pub(crate) fn new(config: Config) -> Shared {
        Shared {
            config,
            events: Events::default(),
            state: ReentrantMutex::new(RefCell::new(State::default())),
        }
    }

    /// Takes the dispatch lock (re-entrant on the same thread).
    pub(crate) fn lock(&self) -> ReentrantMutexGuard<'_, RefCell<State>> {
        self.state.lock()
    }

    pub(crate) fn status(&self) -> ClientStatus {
        self.lock().borrow().status
    }

    pub(crate) fn username(&self) -> Option<String> {
        self.lock().borrow().username.clone()
    }

    pub(crate) fn users(&self) -> Vec<User> {
        self.lock().borrow().users.clone()
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.lock().borrow().epoch
    }

    /// Emits an event: the any-event listeners first, then the event's own. Never call with the state borrowed.
    pub(crate) fn emit(&self, event: ClientEvent<'_>) {
        self.events.emit(&event);
    }
}
