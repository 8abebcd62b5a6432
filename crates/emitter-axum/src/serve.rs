//! Running the server: standalone on a port, on a listener you bound, or as part of your app.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use axum::serve::ListenerExt;
use axum::Router;
use emitter_core::Server;
use tokio::net::{TcpListener, ToSocketAddrs};

use crate::mount::router;

/// Why a server could not start listening.
#[derive(Debug)]
#[non_exhaustive]
pub enum ListenError {
    /// The server was not `initializing` (`cannot start listening when the server is …`).
    Server(emitter_core::Error),
    /// Binding or reading the socket address failed.
    Io(io::Error),
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenError::Server(error) => error.fmt(f),
            ListenError::Io(error) => write!(f, "cannot start listening: {error}"),
        }
    }
}

impl std::error::Error for ListenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ListenError::Server(error) => Some(error),
            ListenError::Io(error) => Some(error),
        }
    }
}

impl From<emitter_core::Error> for ListenError {
    fn from(error: emitter_core::Error) -> Self {
        ListenError::Server(error)
    }
}

impl From<io::Error> for ListenError {
    fn from(error: io::Error) -> Self {
        ListenError::Io(error)
    }
}

/// Binds `address` (anything `tokio::net::TcpListener::bind` takes: `("127.0.0.1", 8082)`, `"0.0.0.0:8082"`, a
/// `SocketAddr`; port 0 picks a free port), serves the Krmx endpoint there on a background task, emits `listen`, and
/// returns the port. The task stops when [`Server::close`] is called.
///
/// Bind `127.0.0.1` (only this machine can connect) while developing or behind a reverse proxy on the same host, and
/// `0.0.0.0` to accept connections from other machines.
///
/// ```no_run
/// # async fn demo() -> Result<(), emitter_axum::ListenError> {
/// let server = emitter_core::Server::new();
/// let port = emitter_axum::listen(&server, ("127.0.0.1", 8082)).await?;
/// // ... later
/// server.close().await.unwrap();
/// # Ok(()) }
/// ```
pub async fn listen(server: &Server, address: impl ToSocketAddrs) -> Result<u16, ListenError> {
    let host = server.host();
    host.start()?;
    match TcpListener::bind(address).await {
        Ok(listener) => run(server, listener, router(server)).await,
        Err(error) => {
            host.start_failed();
            Err(error.into())
        }
    }
}

/// Like [`listen`], on a listener you bound yourself.
pub async fn listen_on(server: &Server, listener: TcpListener) -> Result<u16, ListenError> {
    server.host().start()?;
    run(server, listener, router(server)).await
}

/// Serves `app`, which has the Krmx endpoint mounted (with [`router`] or [`layer`](crate::layer)), on `listener`, on
/// a background task; emits `listen` and returns the port. The task stops gracefully when [`Server::close`] is called.
///
/// ```no_run
/// use axum::{routing::get, Router};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let server = emitter_core::Server::new();
/// let app = Router::new()
///     .route("/health", get(|| async { "ok" }))
///     .merge(emitter_axum::router(&server));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let port = emitter_axum::serve(&server, listener, app).await?;
/// # Ok(()) }
/// ```
pub async fn serve(server: &Server, listener: TcpListener, app: Router) -> Result<u16, ListenError> {
    server.host().start()?;
    run(server, listener, app).await
}

/// Marks the server as listening on `port` and emits `listen`, for when you run `axum::serve` yourself. Pair it with
/// [`Server::closing`] as the graceful-shutdown signal, and set `TCP_NODELAY` on accepted sockets (axum's
/// `ListenerExt::tap_io`) as [`listen`] does, or small replies can wait on Nagle's algorithm. Serve the app with
/// `into_make_service_with_connect_info::<SocketAddr>()` for the `authenticate` listeners to see each connection's
/// peer address ([`Handshake::peer`](emitter_core::Handshake::peer)); without it, they see none.
///
/// ```no_run
/// use axum::Router;
/// use std::net::SocketAddr;
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let server = emitter_core::Server::new();
/// let app = Router::new().merge(emitter_axum::router(&server));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// emitter_axum::mark_listening(&server, listener.local_addr()?.port())?;
/// axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
///     .with_graceful_shutdown(server.closing())
///     .await?;
/// # Ok(()) }
/// ```
pub fn mark_listening(server: &Server, port: u16) -> Result<(), emitter_core::Error> {
    let host = server.host();
    host.start()?;
    host.listening(port)
}

async fn run(server: &Server, listener: TcpListener, app: Router) -> Result<u16, ListenError> {
    let host = server.host();
    let port = match listener.local_addr() {
        Ok(address) => address.port(),
        Err(error) => {
            host.start_failed();
            return Err(error.into());
        }
    };
    // Listening before the accept loop starts: a client that connects right away is never turned down.
    host.listening(port)?;
    let guard = host.transport_guard();
    let shutdown = host.closing();
    tokio::spawn(async move {
        // Small frames go out at once: without TCP_NODELAY, a reply can wait ~40 ms on Nagle's algorithm and delayed
        // ACKs after the server pushed frames.
        let listener = listener.tap_io(|stream| {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "could not set TCP_NODELAY");
            }
        });
        // With each connection's peer address, for the `authenticate` listeners (`Handshake::peer`).
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(%error, "the HTTP server stopped with an error");
        }
        drop(guard);
    });
    Ok(port)
}
