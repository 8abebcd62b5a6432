//! The seam between the core and a transport such as `emitter-axum`.
//!
//! A transport accepts connections, hands the core each incoming frame through a [`Host`], and writes out what each
//! connection's [`Outbox`] has for it. The core never touches a socket and never waits on one.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use crate::error::Status;
pub use crate::outbox::Outbox;
use crate::protocol::Frame;
use crate::Server;

/// Identifies one connection for the lifetime of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub(crate) u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cn-{}", self.0)
    }
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The connection's queue is full: it is not reading fast enough.
    Full,
    /// The connection is closing or closed.
    Closed,
}

/// A newcomer's snapshot of the users: for each user in join order its `krmx/joined` frame and, if the user is linked,
/// its `krmx/linked` frame, ending with the newcomer itself.
///
/// It holds one shared pointer per user rather than a frame per message: during a link storm every newcomer's snapshot
/// waits in its queue until the client has read it, and the memory those take at once is what the server's heap grows
/// to (and keeps). The frames themselves were serialized once, when each user joined.
pub struct Snapshot {
    entries: Vec<(Arc<UserFrames>, bool)>,
}

/// A user's `krmx/joined` and `krmx/linked` frames, made once when it joins.
pub(crate) struct UserFrames {
    pub(crate) joined: Frame,
    pub(crate) linked: Frame,
}

impl Snapshot {
    pub(crate) fn with_capacity(users: usize) -> Snapshot {
        Snapshot {
            entries: Vec::with_capacity(users),
        }
    }

    pub(crate) fn push(&mut self, user: &Arc<UserFrames>, linked: bool) {
        self.entries.push((user.clone(), linked));
    }

    /// The next frame to write after `cursor`, advancing it.
    pub(crate) fn next(&self, cursor: &mut SnapshotCursor) -> Option<&Frame> {
        loop {
            let (user, linked) = self.entries.get(cursor.user)?;
            if !cursor.joined {
                cursor.joined = true;
                return Some(&user.joined);
            }
            cursor.user += 1;
            cursor.joined = false;
            if *linked {
                return Some(&user.linked);
            }
        }
    }

    /// The frames to write, in order.
    pub fn frames(&self) -> impl Iterator<Item = &Frame> + '_ {
        self.entries
            .iter()
            .flat_map(|(user, linked)| std::iter::once(&user.joined).chain(linked.then_some(&user.linked)))
    }

    /// How many frames [`frames`](Snapshot::frames) yields.
    pub fn len(&self) -> usize {
        self.entries.iter().map(|(_, linked)| 1 + usize::from(*linked)).sum()
    }

    /// Whether there is no frame at all (never, for a real snapshot: it holds the newcomer).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// How far the writing of a [`Snapshot`] got.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SnapshotCursor {
    user: usize,
    joined: bool,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("users", &self.entries.len())
            .finish_non_exhaustive()
    }
}

/// The transport's side of a [`Server`]: lifecycle changes and connection traffic.
///
/// Applications do not need this; it is for transports.
#[derive(Clone)]
pub struct Host {
    pub(crate) server: Server,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host").finish_non_exhaustive()
    }
}

/// Keeps [`Server::close`] from finishing while a transport still runs. Drop it when the transport has stopped.
#[must_use = "the server counts as closed only when this guard is dropped"]
pub struct TransportGuard {
    pub(crate) server: Server,
}

impl fmt::Debug for TransportGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportGuard").finish_non_exhaustive()
    }
}

impl Drop for TransportGuard {
    fn drop(&mut self) {
        self.server.transport_stopped();
    }
}

impl Host {
    /// The server this host serves.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Moves `initializing` to `starting`; fails with `cannot start listening when the server is …` otherwise.
    pub fn start(&self) -> Result<(), crate::Error> {
        self.server.mark_starting()
    }

    /// Moves `starting` back to `initializing`, after the transport failed to bind.
    pub fn start_failed(&self) {
        self.server.mark_start_failed();
    }

    /// Moves `starting` to `listening` and emits `listen` with `port`. Fails when the server is not `starting` (it
    /// was closed meanwhile, say).
    pub fn listening(&self, port: u16) -> Result<(), crate::Error> {
        self.server.mark_listening(port)
    }

    /// Registers a running transport; `close()` finishes only after the guard is dropped.
    pub fn transport_guard(&self) -> TransportGuard {
        self.server.transport_started();
        TransportGuard {
            server: self.server.clone(),
        }
    }

    /// Whether a new connection would be admitted now (the server listens and no connection limit is reached). Ask
    /// before accepting a connection, to refuse it cheaply (an HTTP 503, say); [`connect`](Host::connect) still has
    /// the last word.
    pub fn has_room(&self) -> bool {
        self.server.has_room()
    }

    /// Registers a new connection and returns its id and its [`Outbox`]: what to write to it, in order. `None` when
    /// the server is not listening or a connection limit is reached: close the socket at once.
    ///
    /// When the outbox says the connection is closing, write what it returned, close the socket, and report the close
    /// with [`disconnect`](Host::disconnect) (as for a close of any other cause).
    pub fn connect(&self) -> Option<(ConnectionId, Outbox)> {
        self.server.connect()
    }

    /// Hands the core one incoming text or binary frame.
    pub fn receive(&self, id: ConnectionId, data: &[u8]) {
        self.server.receive(id, data);
    }

    /// Reports that a connection has closed, for whatever reason. Its user, if any, is unlinked.
    pub fn disconnect(&self, id: ConnectionId) {
        self.server.disconnect(id);
    }

    /// The server's current status.
    pub fn status(&self) -> Status {
        self.server.status()
    }

    /// Resolves when the server starts closing; hand it to a graceful-shutdown hook.
    pub fn closing(&self) -> impl Future<Output = ()> + Send + 'static {
        self.server.closing()
    }
}
