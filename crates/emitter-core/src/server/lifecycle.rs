//! The server's life: starting, listening, the link-deadline sweeper, closing, and the transports that keep it open.
//!
//! Status changes happen on the membership path; the status is mirrored in an atomic so that the message path can
//! read it without a lock.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Status};
use crate::membership::connections::Role;
use crate::server::events::Event;
use crate::server::{require, Server};
use crate::transport::close_reason::CloseReason;

const STATUSES: [Status; 5] = [
    Status::Initializing,
    Status::Starting,
    Status::Listening,
    Status::Closing,
    Status::Closed,
];

impl Server {
    /// The server's status.
    pub fn status(&self) -> Status {
        STATUSES[usize::from(self.inner.status.load(Ordering::SeqCst))]
    }

    /// Call on the membership path only.
    fn set_status(&self, status: Status) {
        self.inner.status.store(status as u8, Ordering::SeqCst);
        self.inner.status_tx.send_replace(status);
    }

    /// Closes the server: every user leaves (unlinked, then left, with the events and messages that go with that),
    /// (on a node of a cluster: only this node's linked users are unlinked; the cluster's users stay),
    /// pending link attempts are dropped, every connection is closed and the transport stops. Then `close` is emitted.
    ///
    /// The work up to closing the connections happens before this returns, so calling it from a listener without
    /// awaiting is fine. Each connection then has the [close drain deadline](crate::ServerBuilder::close_drain_deadline)
    /// to take what was queued for it and to answer the close; a socket still open past it is cut.
    ///
    /// The future resolves once the server is `closed`: every connection gone, the transport stopped, the `close`
    /// listeners run. Closing is idempotent: a call while the server is `closing` or `closed`, or two calls at once,
    /// wait for the same close and resolve `Ok`; `close` is emitted once. `Err` (`cannot close when the server is
    /// initializing`) means the server never started listening, so there was nothing to close (it can still listen).
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
        let _turn = self.turn();
        if self.status() >= Status::Closing {
            // Closing already: wait for that close.
            return Ok(());
        }
        require(self.status(), "close", &[Status::Starting, Status::Listening])?;
        self.set_status(Status::Closing);
        tracing::info!("server is closing");
        let connections = self.inner.connections.all();
        for connection in &connections {
            let mut state = connection.state.lock();
            if let Role::Linking { task, .. } = &mut state.role {
                if let Some(task) = task.take() {
                    task.abort();
                }
                state.role = Role::Unlinked;
            }
        }
        if let Some(sequencer) = self.sequencer() {
            // One node of a cluster closing is not the cluster closing: its users are unlinked, and may relink on
            // another node; everyone else stays. The unlinks are queued together (a few round trips for all of
            // them); the connections close once they are applied, so each hears of its own unlink first.
            let server = self.clone();
            self.unlink_gone(sequencer, &connections, move || {
                server.close_all(CloseReason::ServerClosing)
            });
        } else {
            let usernames: Vec<String> = self.users().into_iter().map(|user| user.username).collect();
            for username in usernames {
                if self.user(&username).is_some() {
                    self.leave_user(&username);
                }
            }
            self.close_all(CloseReason::ServerClosing);
        }
        self.finish_close_when_idle();
        Ok(())
    }

    fn close_all(&self, reason: CloseReason) {
        for connection in self.inner.connections.all() {
            connection.close(reason);
        }
    }

    /// Emits `close` once no connection and no transport is left. Runs on a task when there is something to wait for.
    fn finish_close_when_idle(&self) {
        if self.open_count() == 0 {
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
        let _turn = self.turn();
        if self.status() != Status::Closing {
            return;
        }
        // Listeners see `closed`; the futures waiting on close() wake only after the listeners ran.
        self.inner.status.store(Status::Closed as u8, Ordering::SeqCst);
        tracing::info!("server closed");
        self.emit(Event::Close, |events| events.close.emit("close", |f| f(self)));
        self.inner.status_tx.send_replace(Status::Closed);
        // A closed server emits nothing more. Dropping the listeners breaks the cycle that a listener holding a clone
        // of the server makes, so the server is freed once the application lets go of it.
        self.inner.events.clear();
    }

    /// Things that keep `close()` from finishing: open connections and running transports.
    fn open_count(&self) -> usize {
        self.inner.connections.open() + self.inner.transports.load(Ordering::SeqCst)
    }

    /// Publishes the open count for `close()` to wait on. Counting inside the channel's lock makes the last publisher
    /// see every change before it, so a stale count never overwrites a fresh one.
    pub(crate) fn publish_open_count(&self) {
        self.inner.open_tx.send_modify(|open| *open = self.open_count());
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
        let _turn = self.turn();
        require(self.status(), "start listening", &[Status::Initializing])?;
        self.set_status(Status::Starting);
        Ok(())
    }

    pub(crate) fn mark_start_failed(&self) {
        let _turn = self.turn();
        if self.status() == Status::Starting {
            self.set_status(Status::Initializing);
        }
    }

    pub(crate) fn mark_listening(&self, port: u16) -> Result<(), Error> {
        let _turn = self.turn();
        require(self.status(), "start listening", &[Status::Starting])?;
        self.set_status(Status::Listening);
        tracing::info!(port, "listening");
        self.start_link_deadline_sweeper();
        self.emit(Event::Listen { port }, |events| {
            events.listen.emit("listen", |f| f(self, port))
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

    /// Closes the connections that stayed unlinked past the link deadline. On the membership path, so that a link
    /// being decided is never cut half way.
    fn close_overdue(&self, deadline: Duration) {
        let _turn = self.turn();
        let now = Instant::now();
        for connection in self.inner.connections.all() {
            let mut state = connection.state.lock();
            let overdue = state
                .unlinked_since
                .is_some_and(|since| now.duration_since(since) >= deadline);
            if overdue && matches!(state.role, Role::Unlinked) {
                tracing::debug!(connection = %connection.id, "closing a connection that stayed unlinked past the link deadline");
                connection.close_locked(&mut state, CloseReason::LinkDeadline);
            }
        }
    }

    pub(crate) fn transport_started(&self) {
        self.inner.transports.fetch_add(1, Ordering::SeqCst);
        self.publish_open_count();
    }

    pub(crate) fn transport_stopped(&self) {
        let _ = self
            .inner
            .transports
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        self.publish_open_count();
    }
}
