//! What the application asks a client for: open a socket, link, unlink or leave, disconnect, send. Each request
//! changes the state and emits its event at once, under the dispatch lock, and hands back a receiver for the answer,
//! which [`incoming`](crate::incoming) sends when the server or the socket gives it.

use crate::redact::url_for_logs;
use std::future::Future;
use std::sync::Arc;

use emitter_core::protocol::{LINK, RESERVED_PREFIX};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::connection::{self, Command};
use crate::error::{ClientStatus, Error};
use crate::event::ClientEvent;
use crate::reconnect::Relink;
use crate::state::{Connection, Shared};

impl Shared {
    /// Moves the epoch on if the status allows what the user asked for, stopping a reconnect under way.
    pub(crate) fn bump_epoch_if(&self, allowed: impl FnOnce(ClientStatus) -> bool) {
        let guard = self.lock();
        let mut state = guard.borrow_mut();
        if allowed(state.status) {
            state.epoch += 1;
        }
    }

    /// Starts a connection task for `url`; the future resolves once the socket is open, or fails when it does not
    /// open. Does not move the epoch: `connect` does that first, a reconnect does not.
    pub(crate) fn open(this: &Arc<Shared>, url: &str) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let started = Shared::start_open(this, url);
        async move {
            match started {
                Ok(opened) => opened.await.unwrap_or(Err(Error::ConnectionClosed)),
                Err(error) => Err(error),
            }
        }
    }

    fn start_open(this: &Arc<Shared>, url: &str) -> Result<oneshot::Receiver<Result<(), Error>>, Error> {
        let guard = this.lock();
        let (generation, opened) = {
            let mut state = guard.borrow_mut();
            let status = state.status;
            if !matches!(status, ClientStatus::Initializing | ClientStatus::Closed) {
                return Err(Error::wrong_status("connect", status));
            }
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return Err(Error::NoRuntime);
            };
            state.status = ClientStatus::Connecting;
            state.generation += 1;
            let generation = state.generation;
            let (tx, commands) = mpsc::unbounded_channel();
            state.connection = Some(Connection {
                generation,
                commands: tx,
            });
            state.url = Some(url.to_owned());
            let (opened_tx, opened) = oneshot::channel();
            state.opening = Some(opened_tx);
            let task = connection::run(
                Arc::downgrade(this),
                generation,
                url.to_owned(),
                commands,
                this.config.close_timeout,
                this.config.tls.clone(),
            );
            runtime.spawn(task);
            (generation, opened)
        };
        tracing::debug!(url = url_for_logs(url), generation, "connecting");
        this.emit(ClientEvent::Connecting);
        Ok(opened)
    }

    /// Sends a link request; `by_user` is false for a reconnect's relink, which must not stop itself.
    pub(crate) fn start_link(
        &self,
        username: &str,
        auth: Option<&str>,
        by_user: bool,
    ) -> Result<impl Future<Output = Result<(), Error>> + Send + 'static, Error> {
        let guard = self.lock();
        let linked = {
            let mut state = guard.borrow_mut();
            let status = state.status;
            if status != ClientStatus::Connected {
                return Err(Error::wrong_status("link", status));
            }
            if by_user {
                state.epoch += 1;
            }
            state.status = ClientStatus::Linking;
            state.username = Some(username.to_owned());
            state.linked_as = Some((username.to_owned(), auth.map(str::to_owned)));
            let (tx, linked) = oneshot::channel();
            state.linking = Some(tx);
            linked
        };
        self.emit(ClientEvent::Linking);
        let mut payload = json!({ "username": username, "version": self.config.version });
        if let Some(auth) = auth {
            payload["auth"] = Value::String(auth.to_owned());
        }
        let request = json!({ "type": LINK, "payload": payload });
        guard.borrow().push(request.to_string());
        Ok(async move { linked.await.unwrap_or(Err(Error::ConnectionClosed)) })
    }

    /// Sends `krmx/unlink` or `krmx/leave` (`kind`); the future resolves with the unlink of this client's user.
    pub(crate) fn request_unlink(
        &self,
        action: &'static str,
        kind: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let started = self.start_unlink(action, kind);
        async move {
            match started {
                Ok(unlinked) => unlinked.await.unwrap_or(Err(Error::ConnectionClosed)),
                Err(error) => Err(error),
            }
        }
    }

    fn start_unlink(&self, action: &'static str, kind: &str) -> Result<oneshot::Receiver<Result<(), Error>>, Error> {
        let guard = self.lock();
        let unlinked = {
            let mut state = guard.borrow_mut();
            let status = state.status;
            if status != ClientStatus::Linked {
                return Err(Error::wrong_status(action, status));
            }
            state.epoch += 1;
            state.status = ClientStatus::Unlinking;
            state.linked_as = None;
            let (tx, unlinked) = oneshot::channel();
            state.unlinking = Some(tx);
            unlinked
        };
        self.emit(ClientEvent::Unlinking);
        guard.borrow().push(json!({ "type": kind }).to_string());
        Ok(unlinked)
    }

    /// Asks the connection task to close the socket; the receiver is answered after the `close` event.
    pub(crate) fn start_disconnect(&self, force: bool) -> Result<oneshot::Receiver<()>, Error> {
        let guard = self.lock();
        let closed = {
            let mut state = guard.borrow_mut();
            let status = state.status;
            let allowed = matches!(
                status,
                ClientStatus::Connected | ClientStatus::Linking | ClientStatus::Unlinking
            ) || (force
                && matches!(
                    status,
                    ClientStatus::Connecting | ClientStatus::Linked | ClientStatus::Closing
                ));
            if !allowed {
                return Err(Error::wrong_status("disconnect", status));
            }
            state.epoch += 1;
            state.status = ClientStatus::Closing;
            state.username = None;
            state.linked_as = None;
            let (tx, closed) = oneshot::channel();
            state.closing.push(tx);
            closed
        };
        self.emit(ClientEvent::Closing);
        if let Some(connection) = &guard.borrow().connection {
            let _ = connection.commands.send(Command::Close);
        }
        Ok(closed)
    }

    /// Queues an application message of type `kind` when linked; `encode` makes its frame.
    pub(crate) fn send_frame(&self, kind: &str, encode: impl FnOnce() -> Result<String, Error>) -> Result<(), Error> {
        let guard = self.lock();
        let state = guard.borrow();
        let status = state.status;
        if status != ClientStatus::Linked {
            return Err(Error::wrong_status("send", status));
        }
        if kind.starts_with(RESERVED_PREFIX) {
            return Err(Error::ReservedType);
        }
        state.push(encode()?);
        Ok(())
    }
}

/// A reconnect opens and links as the application would, without moving the epoch that tells it to stop.
impl Relink for Shared {
    fn epoch(&self) -> u64 {
        Shared::epoch(self)
    }

    fn status(&self) -> ClientStatus {
        Shared::status(self)
    }

    fn open(this: &Arc<Self>, url: &str) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        Shared::open(this, url)
    }

    fn relink(
        this: &Arc<Self>,
        username: &str,
        auth: Option<&str>,
    ) -> Result<impl Future<Output = Result<(), Error>> + Send + 'static, Error> {
        this.start_link(username, auth, false)
    }
}
