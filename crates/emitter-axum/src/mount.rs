//! Mounting the WebSocket endpoint into an axum app: as a `Router`, or as a tower layer.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{RawQuery, State};
use axum::http::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use emitter_core::Server;
use tower::{Layer, Service, ServiceExt};

use crate::connection;

/// Bytes read from a socket at a time.
const READ_BUFFER: usize = 1024;

/// Bytes of written frames gathered before they go to the socket (a flush sends them sooner). Measured with
/// `emitter-bench suite --only storm2k`: 128/128 KiB (the defaults) 147 KiB RSS per idle linked connection, 4/8 KiB
/// 23.9, 1/4 KiB 18.9, 1/2 KiB 14.3, with the same broadcast throughput.
const WRITE_BUFFER: usize = 2 * 1024;

/// A `Router` that serves the Krmx WebSocket endpoint at the server's configured path (default `/`). Merge it into
/// your app, or nest it under a prefix.
///
/// The server accepts connections only while it is listening: start it with [`listen`](crate::listen),
/// [`serve`](crate::serve), or [`mark_listening`](crate::mark_listening) when you run `axum::serve` yourself.
///
/// ```
/// use axum::{routing::get, Router};
///
/// let server = emitter_core::Server::builder().path("/ws").build();
/// let app: Router = Router::new()
///     .route("/health", get(|| async { "ok" }))
///     .merge(emitter_axum::router(&server));
/// ```
pub fn router(server: &Server) -> Router {
    let path = server.config().path().to_owned();
    Router::new().route(&path, get(upgrade)).with_state(server.clone())
}

async fn upgrade(State(server): State<Server>, RawQuery(query): RawQuery, ws: WebSocketUpgrade) -> Response {
    let host = server.host();
    if !host.has_room() {
        // Refused before the upgrade: no socket task, no buffers. `connect` repeats the check after the upgrade.
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let config = server.config();
    let query_ok = config.query_params_hold(query.as_deref());
    let max = config.max_message_size();
    // Small buffers keep an idle connection cheap: the WebSocket layer zero-fills its whole read buffer on every read,
    // so its 128 KiB default would be resident for every connection. Both grow for a bigger message when needed.
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| connection::run(host, socket, query_ok))
}

/// A tower layer that serves the Krmx WebSocket endpoint at the server's path and passes every other request to the
/// service it wraps.
///
/// ```
/// use axum::{routing::get, Router};
///
/// let server = emitter_core::Server::builder().path("/krmx").build();
/// let app: Router = Router::new()
///     .route("/api/hello", get(|| async { "hello" }))
///     .layer(emitter_axum::layer(&server));
/// ```
pub fn layer(server: &Server) -> KrmxLayer {
    KrmxLayer {
        path: server.config().path().to_owned(),
        router: router(server),
    }
}

/// See [`layer`].
#[derive(Clone)]
pub struct KrmxLayer {
    path: String,
    router: Router,
}

impl std::fmt::Debug for KrmxLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KrmxLayer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for KrmxLayer {
    type Service = KrmxService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KrmxService {
            path: self.path.clone(),
            router: self.router.clone(),
            inner,
        }
    }
}

/// The service [`KrmxLayer`] wraps around another.
#[derive(Clone)]
pub struct KrmxService<S> {
    path: String,
    router: Router,
    inner: S,
}

impl<S> std::fmt::Debug for KrmxService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KrmxService")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for KrmxService<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if request.uri().path() == self.path {
            let router = self.router.clone();
            Box::pin(async move { router.oneshot(request.map(axum::body::Body::new)).await })
        } else {
            Box::pin(self.inner.call(request))
        }
    }
}
