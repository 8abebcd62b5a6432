//! The client's public face: [`Client`], its builder, and its methods. Each method checks and changes the shared
//! state through [`requests`](crate::requests); what the server answers arrives through
//! [`incoming`](crate::incoming). The listener methods (`on_*`, `once_*`, `wait_for_*`) are in
//! [`listeners`](crate::listeners).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use emitter_core::protocol::{Message, LEAVE, UNLINK};
use emitter_core::User;
use serde::Serialize;
use serde_json::Value;

use crate::error::{ClientStatus, Error};
use crate::reconnect::Reconnect;
use crate::state::{Config, Shared};
use crate::tls::{Tls, TlsConfig};

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
/// use emitter_client::{Client, ClientStatus};
///
/// let client = Client::new();
/// client.connect(&format!("ws://127.0.0.1:{port}/")).await?;
/// client.link("simon", None).await?;
/// assert_eq!(client.status(), ClientStatus::Linked);
/// assert_eq!(client.users()[0].username, "simon");
/// client.leave().await?;
/// client.disconnect(false).await?;
/// assert_eq!(client.status(), ClientStatus::Closed);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Shared>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("status", &self.status())
            .field("username", &self.username())
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
    tls: Tls,
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

    /// What the client trusts for `wss://` connections (see [`TlsConfig`]): the platform's roots unless set.
    /// Replaces an earlier `tls`.
    ///
    /// ```no_run
    /// use emitter_client::{Client, TlsConfig};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ca = std::fs::read("ca.pem")?;
    /// let client = Client::builder().tls(TlsConfig::empty().add_root_certificates_pem(&ca)?).build();
    /// # Ok(()) }
    /// ```
    pub fn tls(mut self, trust: TlsConfig) -> Self {
        self.tls = Tls::new(trust);
        self
    }

    /// Builds the client, in status `initializing`.
    ///
    /// ```
    /// let client = emitter_client::Client::builder().build();
    /// assert_eq!(client.status(), emitter_client::ClientStatus::Initializing);
    /// ```
    pub fn build(self) -> Client {
        Client {
            inner: Arc::new(Shared::new(Config {
                version: self.version,
                reconnect: self.reconnect,
                close_timeout: self.close_timeout,
                tls: self.tls,
            })),
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

    /// A builder to set the protocol version, a reconnect policy, the close timeout or the TLS roots.
    ///
    /// ```
    /// let client = emitter_client::Client::builder().version("0.6.5").build();
    /// ```
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            version: DEFAULT_VERSION.to_owned(),
            reconnect: None,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            tls: Tls::default(),
        }
    }

    /// The current status.
    ///
    /// ```
    /// assert_eq!(emitter_client::Client::new().status(), emitter_client::ClientStatus::Initializing);
    /// ```
    pub fn status(&self) -> ClientStatus {
        self.inner.status()
    }

    /// The user this client is linked to, or is linking or unlinking; `None` when there is none. During an `unlink`
    /// event about this client's own user it is still set, so that a listener can tell a self unlink (as in the
    /// reference).
    ///
    /// ```
    /// assert_eq!(emitter_client::Client::new().username(), None);
    /// ```
    pub fn username(&self) -> Option<String> {
        self.inner.username()
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
        self.inner.users()
    }

    /// The protocol version this client sends when it links.
    ///
    /// ```
    /// assert_eq!(emitter_client::Client::new().version(), emitter_client::DEFAULT_VERSION);
    /// ```
    pub fn version(&self) -> &str {
        &self.inner.config.version
    }

    /// Opens a WebSocket to `url`: `ws://host:port/path`, or `wss://host:port/path` over TLS. Allowed when the client
    /// is `initializing` or `closed`.
    ///
    /// Emits `connecting` at once and `connect` when the socket is open. The future fails with
    /// [`Error::Connect`] (`error while trying to connect to the server at …`) when the socket cannot be opened, after
    /// a `close` event, as in the reference. What went wrong underneath is its [`source`](std::error::Error::source):
    /// for `wss://`, a server certificate that the client does not trust reads `invalid peer certificate: …`.
    ///
    /// A `wss://` connect checks the server's certificate against the platform's root certificates, or against
    /// those given with [`ClientBuilder::tls`].
    ///
    /// ```
    /// # #[tokio::main] async fn main() {
    /// let client = emitter_client::Client::new();
    /// let error = client.connect("ws://127.0.0.1:1/").await.unwrap_err();
    /// assert_eq!(error.to_string(), "error while trying to connect to the server at ws://127.0.0.1:1/");
    /// assert_eq!(client.status(), emitter_client::ClientStatus::Closed);
    /// # }
    /// ```
    pub fn connect(&self, url: &str) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        self.inner
            .bump_epoch_if(|status| matches!(status, ClientStatus::Initializing | ClientStatus::Closed));
        Shared::open(&self.inner, url)
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
        let started = self.inner.start_link(username, auth, true);
        async move {
            match started {
                Ok(linked) => linked.await,
                Err(error) => Err(error),
            }
        }
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
    /// assert_eq!(client.status(), emitter_client::ClientStatus::Connected);
    /// assert_eq!(server.user("simon").map(|user| user.is_linked), Some(false));
    /// # Ok(()) }
    /// ```
    pub fn unlink(&self) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        self.inner.request_unlink("unlink", UNLINK)
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
    /// assert_eq!(client.status(), emitter_client::ClientStatus::Connected);
    /// # Ok(()) }
    /// ```
    pub fn leave(&self) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        self.inner.request_unlink("leave", LEAVE)
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
    /// assert_eq!(client.status(), emitter_client::ClientStatus::Closed);
    /// # Ok(()) }
    /// ```
    pub fn disconnect(&self, force: bool) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let started = self.inner.start_disconnect(force);
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
    /// client.send(&Message::with_payload("chat/say", serde_json::json!("hello")))?;
    /// let (from, message) = received.await?;
    /// assert_eq!((from.as_str(), message.kind.as_str()), ("simon", "chat/say"));
    ///
    /// let refused = client.send(&Message::new("krmx/leave")).unwrap_err();
    /// assert_eq!(refused.to_string(), "cannot send custom messages with type starting with the internal 'krmx/' prefix");
    /// # Ok(()) }
    /// ```
    pub fn send(&self, message: &Message) -> Result<(), Error> {
        self.inner
            .send_frame(&message.kind, || serde_json::to_string(message).map_err(Error::from))
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
        self.inner.send_frame(kind, || Ok(value.to_string()))
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
        self.send(&Message::with_payload(kind, serde_json::to_value(payload)?))
    }

    fn check_can_send(&self) -> Result<(), Error> {
        match self.status() {
            ClientStatus::Linked => Ok(()),
            status => Err(Error::wrong_status("send", status)),
        }
    }
}
