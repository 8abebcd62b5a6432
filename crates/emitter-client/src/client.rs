//! The client: its state, the requests it sends, and the protocol messages it applies.
//!
//! Every state change and the events it triggers run under one re-entrant dispatch lock, as in the server: a listener
//! that calls back into the client re-enters on the same thread, and the state it sees is the state at its event. The
//! state sits in a `RefCell` that is borrowed only in short scopes and never while a listener runs.

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use emitter_core::protocol::{self, Message, RESERVED_PREFIX};
use emitter_core::User;
use parking_lot::{ReentrantMutex, ReentrantMutexGuard};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::connection::{self, Command};
use crate::error::{Error, Status};
use crate::event::{ClientEvent, Events};
use crate::reconnect::{self, Plan, Reconnect};

/// The protocol version a client sends in its link requests unless told otherwise. emitter servers accept 0.5 and
/// 0.6; `@krmx/server` 0.6 accepts `0.6.*` and the 0.5 releases on npm accept `0.5.*` (set
/// [`ClientBuilder::version`] for those).
///
/// ```
/// assert_eq!(emitter_client::Client::new().version(), emitter_client::DEFAULT_VERSION);
/// let for_npm_server = emitter_client::Client::builder().version("0.5.5").build();
/// assert_ne!(for_npm_server.version(), emitter_client::DEFAULT_VERSION);
/// ```
pub const DEFAULT_VERSION: &str = "0.6.0";

/// How long [`Client::disconnect`] waits for the server to answer the WebSocket close before dropping the socket.
///
/// ```
/// let patient = emitter_client::Client::builder()
///     .close_timeout(emitter_client::DEFAULT_CLOSE_TIMEOUT * 2)
///     .build();
/// ```
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// The rejection a server sends to a message that an unlinked connection sent: never the answer to a link request.
const UNLINKED_CONNECTION: &str = "unlinked connection";

pub(crate) struct Config {
    pub(crate) version: String,
    pub(crate) reconnect: Option<Reconnect>,
    pub(crate) close_timeout: Duration,
}

type Reply = oneshot::Sender<Result<(), Error>>;

struct Connection {
    generation: u64,
    commands: mpsc::UnboundedSender<Command>,
}

#[derive(Default)]
struct State {
    status: Option<Status>,
    username: Option<String>,
    users: Vec<User>,
    connection: Option<Connection>,
    generation: u64,
    url: Option<String>,
    /// The user and auth of the last link request, kept while linked, for a reconnect.
    linked_as: Option<(String, Option<String>)>,
    /// Moves on whenever the user asks for something, so that a reconnect under way knows to stop.
    epoch: u64,
    opening: Option<Reply>,
    linking: Option<Reply>,
    unlinking: Option<Reply>,
    closing: Vec<oneshot::Sender<()>>,
}

impl State {
    fn status(&self) -> Status {
        self.status.unwrap_or(Status::Initializing)
    }

    fn push(&self, frame: String) {
        match &self.connection {
            Some(connection) if connection.commands.send(Command::Frame(frame)).is_ok() => {}
            _ => tracing::debug!("a message was not sent: the connection is gone"),
        }
    }

    fn user_mut(&mut self, username: &str) -> Option<&mut User> {
        self.users.iter_mut().find(|user| user.username == username)
    }
}

pub(crate) struct Inner {
    config: Config,
    pub(crate) events: Events,
    state: ReentrantMutex<RefCell<State>>,
}

/// A Krmx client: one WebSocket connection that links to one user at a time.
///
/// Cloning is cheap and every clone is the same client. The methods follow the reference client (`@krmx/client`):
/// [`connect`](Client::connect), then [`link`](Client::link) to a user, [`send`](Client::send) messages and receive
/// them with [`on_message`](Client::on_message), then [`unlink`](Client::unlink) or [`leave`](Client::leave), and
/// [`disconnect`](Client::disconnect). Requests are sent when the method is called; the futures they return only wait
/// for the answer, so they need not be awaited at once.
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let server = emitter_core::Server::new();
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let port = emitter_axum::listen_on(&server, listener).await?;
/// use emitter_client::{Client, Status};
///
/// let client = Client::new();
/// client.connect(&format!("ws://127.0.0.1:{port}/")).await?;
/// client.link("simon", None).await?;
/// assert_eq!(client.status(), Status::Linked);
/// assert_eq!(client.users()[0].username, "simon");
/// client.leave().await?;
/// client.disconnect(false).await?;
/// assert_eq!(client.status(), Status::Closed);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let guard = self.lock();
        let state = guard.borrow();
        f.debug_struct("Client")
            .field("status", &state.status())
            .field("username", &state.username)
            .finish_non_exhaustive()
    }
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

/// Configures a [`Client`].
///
/// ```
/// use std::time::Duration;
/// use emitter_client::{Client, Reconnect};
///
/// let client = Client::builder()
///     .version("0.5.5") // for an @krmx/server 0.5 from npm
///     .reconnect(Reconnect::new().max_attempts(10))
///     .close_timeout(Duration::from_secs(1))
///     .build();
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    version: String,
    reconnect: Option<Reconnect>,
    close_timeout: Duration,
}

impl ClientBuilder {
    /// The protocol version sent in link requests; [`DEFAULT_VERSION`] unless set. A server rejects versions it does
    /// not speak with `krmx server version mismatch (server=…,client=…)`.
    ///
    /// ```
    /// let client = emitter_client::Client::builder().version("0.5.5").build();
    /// ```
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Reconnects and relinks after a dropped connection, following `policy`. Off by default. See [`Reconnect`].
    ///
    /// ```
    /// let client = emitter_client::Client::builder().reconnect(emitter_client::Reconnect::new()).build();
    /// ```
    pub fn reconnect(mut self, policy: Reconnect) -> Self {
        self.reconnect = Some(policy);
        self
    }

    /// How long a disconnect waits for the server to answer the WebSocket close; [`DEFAULT_CLOSE_TIMEOUT`] unless set.
    ///
    /// ```
    /// let client = emitter_client::Client::builder().close_timeout(std::time::Duration::from_millis(500)).build();
    /// ```
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Builds the client, in status `initializing`.
    ///
    /// ```
    /// let client = emitter_client::Client::builder().build();
    /// assert_eq!(client.status(), emitter_client::Status::Initializing);
    /// ```
    pub fn build(self) -> Client {
        Client {
            inner: Arc::new(Inner {
                config: Config {
                    version: self.version,
                    reconnect: self.reconnect,
                    close_timeout: self.close_timeout,
                },
                events: Events::default(),
                state: ReentrantMutex::new(RefCell::new(State::default())),
            }),
        }
    }
}

impl Client {
    /// A client with the default configuration, in status `initializing`. Register listeners, then
    /// [`connect`](Client::connect).
    ///
    /// ```
    /// let client = emitter_client::Client::new();
    /// assert_eq!(client.username(), None);
    /// assert!(client.users().is_empty());
    /// ```
    pub fn new() -> Client {
        Client::builder().build()
    }

    /// A builder to set the protocol version, a reconnect policy or the close timeout.
    ///
    /// ```
    /// let client = emitter_client::Client::builder().version("0.6.5").build();
    /// ```
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            version: DEFAULT_VERSION.to_owned(),
            reconnect: None,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
        }
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Client {
        Client { inner }
    }

    fn lock(&self) -> ReentrantMutexGuard<'_, RefCell<State>> {
        self.inner.state.lock()
    }

    /// The current status.
    ///
    /// ```
    /// assert_eq!(emitter_client::Client::new().status(), emitter_client::Status::Initializing);
    /// ```
    pub fn status(&self) -> Status {
        self.lock().borrow().status()
    }

    /// The user this client is linked to, or is linking or unlinking; `None` when there is none. During an `unlink`
    /// event about this client's own user it is still set, so that a listener can tell a self unlink (as in the
    /// reference).
    ///
    /// ```
    /// assert_eq!(emitter_client::Client::new().username(), None);
    /// ```
    pub fn username(&self) -> Option<String> {
        self.lock().borrow().username.clone()
    }

    /// The users on the server, in the order the server listed them, kept up to date from the `krmx/joined`,
    /// `krmx/linked`, `krmx/unlinked` and `krmx/left` messages. Empty unless linked.
    ///
    /// When [`link`](Client::link) resolves, the list is complete for a new user; for a returning user the server may
    /// still be sending the users that joined after it (the protocol has no end-of-snapshot marker).
    ///
    /// ```
    /// assert!(emitter_client::Client::new().users().is_empty());
    /// ```
    pub fn users(&self) -> Vec<User> {
        self.lock().borrow().users.clone()
    }

    /// The protocol version this client sends when it links.
    ///
    /// ```
    /// assert_eq!(emitter_client::Client::new().version(), emitter_client::DEFAULT_VERSION);
    /// ```
    pub fn version(&self) -> &str {
        &self.inner.config.version
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.lock().borrow().epoch
    }

    /// Emits an event: the any-event listeners first, then the event's own. Never call with the state borrowed.
    fn emit(&self, event: ClientEvent<'_>) {
        self.inner.events.emit(&event);
    }

    /// Opens a WebSocket to `url` (`ws://host:port/path`). Allowed when the client is `initializing` or `closed`.
    ///
    /// Emits `connecting` at once and `connect` when the socket is open. The future fails with
    /// [`Error::Connect`] (`error while trying to connect to the server at …`) when the socket cannot be opened, after
    /// a `close` event, as in the reference. Only `ws://` URLs are supported.
    ///
    /// ```
    /// # #[tokio::main] async fn main() {
    /// let client = emitter_client::Client::new();
    /// let error = client.connect("ws://127.0.0.1:1/").await.unwrap_err();
    /// assert_eq!(error.to_string(), "error while trying to connect to the server at ws://127.0.0.1:1/");
    /// assert_eq!(client.status(), emitter_client::Status::Closed);
    /// # }
    /// ```
    pub fn connect(&self, url: &str) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        self.bump_epoch_if(|status| matches!(status, Status::Initializing | Status::Closed));
        self.open(url)
    }

    /// `connect` without stopping a reconnect: what the reconnect itself uses.
    pub(crate) fn open(&self, url: &str) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let started = self.start_open(url);
        async move {
            match started {
                Ok(opened) => opened.await.unwrap_or(Err(Error::ConnectionClosed)),
                Err(error) => Err(error),
            }
        }
    }

    fn start_open(&self, url: &str) -> Result<oneshot::Receiver<Result<(), Error>>, Error> {
        let guard = self.lock();
        let (generation, opened) = {
            let mut state = guard.borrow_mut();
            let status = state.status();
            if !matches!(status, Status::Initializing | Status::Closed) {
                return Err(Error::wrong_status("connect", status));
            }
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return Err(Error::NoRuntime);
            };
            state.status = Some(Status::Connecting);
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
                Arc::downgrade(&self.inner),
                generation,
                url.to_owned(),
                commands,
                self.inner.config.close_timeout,
            );
            runtime.spawn(task);
            (generation, opened)
        };
        tracing::debug!(url, generation, "connecting");
        self.emit(ClientEvent::Connecting);
        Ok(opened)
    }

    /// Links this connection to `username`, with an optional `auth` string for the server's authenticate listeners.
    /// Allowed when `connected`.
    ///
    /// Emits `linking` and sends the request at once. The future resolves when the server has accepted the request
    /// and linked *this* user (its `link` event), and fails with [`Error::Rejected`] carrying the server's reason,
    /// such as `invalid username`, or [`Error::ConnectionClosed`].
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = emitter_core::Server::new();
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// # let port = emitter_axum::listen_on(&server, listener).await?;
    /// let client = emitter_client::Client::new();
    /// client.connect(&format!("ws://127.0.0.1:{port}/")).await?;
    /// let error = client.link("x", None).await.unwrap_err();
    /// assert_eq!(error.to_string(), "invalid username");
    /// client.link("simon", Some("token")).await?;
    /// assert_eq!(client.username().as_deref(), Some("simon"));
    /// # Ok(()) }
    /// ```
    pub fn link(&self, username: &str, auth: Option<&str>) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let started = self.start_link(username, auth, true);
        async move {
            match started {
                Ok(linked) => linked.await,
                Err(error) => Err(error),
            }
        }
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
            let status = state.status();
            if status != Status::Connected {
                return Err(Error::wrong_status("link", status));
            }
            if by_user {
                state.epoch += 1;
            }
            state.status = Some(Status::Linking);
            state.username = Some(username.to_owned());
            state.linked_as = Some((username.to_owned(), auth.map(str::to_owned)));
            let (tx, linked) = oneshot::channel();
            state.linking = Some(tx);
            linked
        };
        self.emit(ClientEvent::Linking);
        let mut payload = json!({ "username": username, "version": self.inner.config.version });
        if let Some(auth) = auth {
            payload["auth"] = Value::String(auth.to_owned());
        }
        let request = json!({ "type": "krmx/link", "payload": payload });
        guard.borrow().push(request.to_string());
        Ok(async move { linked.await.unwrap_or(Err(Error::ConnectionClosed)) })
    }

    /// Unlinks this connection from its user, which stays on the server (unlinked) until it leaves or is kicked.
    /// Allowed when `linked`.
    ///
    /// Emits `unlinking` and sends the request at once; the future resolves with the `unlink` event about this user,
    /// after which the client is `connected` again and can link to any user.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = emitter_core::Server::new();
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// # let port = emitter_axum::listen_on(&server, listener).await?;
    /// # let client = emitter_client::Client::new();
    /// # client.connect(&format!("ws://127.0.0.1:{port}/")).await?;
    /// client.link("simon", None).await?;
    /// client.unlink().await?;
    /// assert_eq!(client.status(), emitter_client::Status::Connected);
    /// assert_eq!(server.user("simon").map(|user| user.is_linked), Some(false));
    /// # Ok(()) }
    /// ```
    pub fn unlink(&self) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        self.request_unlink("unlink", "krmx/unlink")
    }

    /// Tells the server that this client's user leaves: it is unlinked and removed, and everyone else gets a
    /// `leave` event. Allowed when `linked`.
    ///
    /// Emits `unlinking` and sends the request at once; the future resolves with the `unlink` event about this user
    /// (the last message the server sends about it to this connection is a `krmx/left`, which still arrives as a
    /// `leave` event). The connection stays open and `connected`.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = emitter_core::Server::new();
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// # let port = emitter_axum::listen_on(&server, listener).await?;
    /// # let client = emitter_client::Client::new();
    /// # client.connect(&format!("ws://127.0.0.1:{port}/")).await?;
    /// client.link("simon", None).await?;
    /// client.leave().await?;
    /// assert_eq!(client.status(), emitter_client::Status::Connected);
    /// # Ok(()) }
    /// ```
    pub fn leave(&self) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        self.request_unlink("leave", "krmx/leave")
    }

    fn request_unlink(&self, action: &'static str, kind: &str) -> impl Future<Output = Result<(), Error>> + 'static {
        let started = (|| {
            let guard = self.lock();
            let unlinked = {
                let mut state = guard.borrow_mut();
                let status = state.status();
                if status != Status::Linked {
                    return Err(Error::wrong_status(action, status));
                }
                state.epoch += 1;
                state.status = Some(Status::Unlinking);
                state.linked_as = None;
                let (tx, unlinked) = oneshot::channel();
                state.unlinking = Some(tx);
                unlinked
            };
            self.emit(ClientEvent::Unlinking);
            guard.borrow().push(json!({ "type": kind }).to_string());
            Ok(unlinked)
        })();
        async move {
            match started {
                Ok(unlinked) => unlinked.await.unwrap_or(Err(Error::ConnectionClosed)),
                Err(error) => Err(error),
            }
        }
    }

    /// Closes the connection. Allowed when `connected`, `linking` or `unlinking`; with `force`, also when
    /// `connecting`, `linked` or `closing` (a linked user is then unlinked by the server, not left).
    ///
    /// Emits `closing` at once; the future resolves after the `close` event.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = emitter_core::Server::new();
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// # let port = emitter_axum::listen_on(&server, listener).await?;
    /// # let client = emitter_client::Client::new();
    /// # client.connect(&format!("ws://127.0.0.1:{port}/")).await?;
    /// client.link("simon", None).await?;
    /// let error = client.disconnect(false).await.unwrap_err();
    /// assert_eq!(error.to_string(), "cannot disconnect when the client is linked");
    /// client.disconnect(true).await?;
    /// assert_eq!(client.status(), emitter_client::Status::Closed);
    /// # Ok(()) }
    /// ```
    pub fn disconnect(&self, force: bool) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let started = (|| {
            let guard = self.lock();
            let closed = {
                let mut state = guard.borrow_mut();
                let status = state.status();
                let allowed = matches!(status, Status::Connected | Status::Linking | Status::Unlinking)
                    || (force && matches!(status, Status::Connecting | Status::Linked | Status::Closing));
                if !allowed {
                    return Err(Error::wrong_status("disconnect", status));
                }
                state.epoch += 1;
                state.status = Some(Status::Closing);
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
        })();
        async move {
            match started {
                // The waiter is dropped unanswered only if the client itself is gone: the socket is closed then too.
                Ok(closed) => {
                    let _ = closed.await;
                    Ok(())
                }
                Err(error) => Err(error),
            }
        }
    }

    /// Sends an application message to the server. Allowed when `linked`; types starting with `krmx/` are refused.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = emitter_core::Server::new();
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// # let port = emitter_axum::listen_on(&server, listener).await?;
    /// # let client = emitter_client::Client::new();
    /// # client.connect(&format!("ws://127.0.0.1:{port}/")).await?;
    /// # client.link("simon", None).await?;
    /// use emitter_core::Message;
    ///
    /// let received = server.wait_for_message();
    /// client.send(&Message::with_payload("chat/say", "hello")?)?;
    /// let (from, message) = received.await;
    /// assert_eq!((from.as_str(), message.kind.as_str()), ("simon", "chat/say"));
    ///
    /// let refused = client.send(&Message::new("krmx/leave")).unwrap_err();
    /// assert_eq!(refused.to_string(), "cannot send custom messages with type starting with the internal 'krmx/' prefix");
    /// # Ok(()) }
    /// ```
    pub fn send(&self, message: &Message) -> Result<(), Error> {
        self.send_frame(&message.kind, || serde_json::to_string(message).map_err(Error::from))
    }

    /// Sends any value that serializes to a JSON object with a string `type`, extra fields and all, such as a
    /// `serde_json::json!` value or a struct with a `#[serde(rename = "type")]` field. Allowed when `linked`.
    ///
    /// ```
    /// # fn demo(client: emitter_client::Client) -> Result<(), emitter_client::Error> {
    /// client.send_json(&serde_json::json!({ "type": "game/move", "payload": { "x": 1, "y": 2 } }))?;
    /// # Ok(()) }
    /// let error = emitter_client::Client::new().send_json(&42).unwrap_err();
    /// assert_eq!(error.to_string(), "cannot send when the client is initializing");
    /// ```
    pub fn send_json<T: Serialize + ?Sized>(&self, message: &T) -> Result<(), Error> {
        self.check_can_send()?;
        let value = serde_json::to_value(message)?;
        let Some(kind) = value.get("type").and_then(Value::as_str) else {
            return Err(Error::NotAMessage);
        };
        self.send_frame(kind, || Ok(value.to_string()))
    }

    /// Sends a message of type `kind` whose payload is `payload` serialized to JSON. Allowed when `linked`.
    ///
    /// ```
    /// #[derive(serde::Serialize)]
    /// struct Move { x: u8, y: u8 }
    ///
    /// # fn demo(client: emitter_client::Client) -> Result<(), emitter_client::Error> {
    /// client.send_payload("game/move", &Move { x: 1, y: 2 })?;
    /// # Ok(()) }
    /// ```
    pub fn send_payload<T: Serialize + ?Sized>(&self, kind: &str, payload: &T) -> Result<(), Error> {
        self.check_can_send()?;
        self.send(&Message::with_payload(kind, payload)?)
    }

    fn check_can_send(&self) -> Result<(), Error> {
        match self.status() {
            Status::Linked => Ok(()),
            status => Err(Error::wrong_status("send", status)),
        }
    }

    fn send_frame(&self, kind: &str, encode: impl FnOnce() -> Result<String, Error>) -> Result<(), Error> {
        let guard = self.lock();
        let state = guard.borrow();
        let status = state.status();
        if status != Status::Linked {
            return Err(Error::wrong_status("send", status));
        }
        if kind.starts_with(RESERVED_PREFIX) {
            return Err(Error::ReservedType);
        }
        state.push(encode()?);
        Ok(())
    }

    /// Moves the epoch on if the status allows what the user asked for, stopping a reconnect under way.
    fn bump_epoch_if(&self, allowed: impl FnOnce(Status) -> bool) {
        let guard = self.lock();
        let mut state = guard.borrow_mut();
        if allowed(state.status()) {
            state.epoch += 1;
        }
    }

    // ---- called by the connection task ----

    /// The socket of `generation` is open.
    pub(crate) fn opened(&self, generation: u64) {
        let guard = self.lock();
        let opening = {
            let mut state = guard.borrow_mut();
            if state.connection.as_ref().map(|c| c.generation) != Some(generation) {
                return;
            }
            // A forced disconnect while connecting: the close is on its way, and `connect` fails with it.
            if state.status() != Status::Connecting {
                return;
            }
            state.status = Some(Status::Connected);
            state.opening.take()
        };
        tracing::debug!(generation, "connected");
        self.emit(ClientEvent::Connect);
        if let Some(opening) = opening {
            let _ = opening.send(Ok(()));
        }
    }

    /// The socket of `generation` closed, or never opened (`cause`).
    pub(crate) fn closed(&self, generation: u64, cause: Option<Arc<dyn std::error::Error + Send + Sync>>) {
        let guard = self.lock();
        let (url, opening, linking, unlinking, closing, relink) = {
            let mut state = guard.borrow_mut();
            if state.connection.as_ref().map(|c| c.generation) != Some(generation) {
                return;
            }
            state.connection = None;
            let was = state.status();
            state.status = Some(Status::Closed);
            state.username = None;
            state.users.clear();
            let url = state.url.clone().unwrap_or_default();
            let relink = match (&self.inner.config.reconnect, was, state.linked_as.take()) {
                (Some(policy), Status::Linked, Some((username, auth))) => {
                    state.epoch += 1;
                    Some((
                        policy.clone(),
                        Plan {
                            url: url.clone(),
                            username,
                            auth,
                            epoch: state.epoch,
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
            let _ = opening.send(Err(Error::Connect { url, cause }));
        }
        for pending in [linking, unlinking].into_iter().flatten() {
            let _ = pending.send(Err(Error::ConnectionClosed));
        }
        for waiter in closing {
            let _ = waiter.send(());
        }
        if let Some((policy, plan)) = relink {
            tracing::info!(
                username = plan.username,
                url = plan.url,
                "connection lost while linked: reconnecting"
            );
            tokio::spawn(reconnect::run(Arc::downgrade(&self.inner), policy, plan));
        }
    }

    /// One frame from the server on the socket of `generation`.
    pub(crate) fn receive(&self, generation: u64, bytes: &[u8]) {
        let guard = self.lock();
        if guard.borrow().connection.as_ref().map(|c| c.generation) != Some(generation) {
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
        let status = guard.borrow().status();
        if status == Status::Linked {
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
            "krmx/accepted" => return self.accepted(),
            "krmx/rejected" => ("krmx/rejected", field("reason")),
            kind @ ("krmx/joined" | "krmx/linked" | "krmx/unlinked" | "krmx/left") => (kind, field("username")),
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
            "krmx/rejected" => self.rejected(name),
            "krmx/joined" => self.joined(name),
            "krmx/linked" => self.linked(name),
            "krmx/unlinked" => self.unlinked(name),
            _ => self.left(name),
        }
    }

    fn accepted(&self) {
        let guard = self.lock();
        {
            let mut state = guard.borrow_mut();
            let status = state.status();
            let Some(username) = state.username.clone().filter(|_| status == Status::Linking) else {
                tracing::warn!(%status, "krmx/accepted without a link request; ignored");
                return;
            };
            state.status = Some(Status::Linked);
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
            let status = state.status();
            // Only a link request is answered with a rejection that ends it. A server also rejects messages that
            // reached it after it unlinked this connection (`unlinked connection`); such a late reply says nothing
            // about a link request sent after it.
            if status != Status::Linking || reason == UNLINKED_CONNECTION {
                tracing::debug!(reason, %status, "a rejection that answers no link request; ignored");
                return;
            }
            state.status = Some(Status::Connected);
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
            let Some(user) = state.user_mut(username) else {
                tracing::warn!(username, "krmx/linked for a user that did not join; ignored");
                return;
            };
            user.is_linked = true;
            let is_self = state.username.as_deref() == Some(username) && state.status() == Status::Linked;
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
            let Some(user) = state.user_mut(username) else {
                tracing::warn!(username, "krmx/unlinked for a user that did not join; ignored");
                return;
            };
            user.is_linked = false;
            let is_self = state.username.as_deref() == Some(username);
            if is_self {
                state.status = Some(Status::Connected);
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
                if state.status() == Status::Connected && state.username.as_deref() == Some(username) {
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
