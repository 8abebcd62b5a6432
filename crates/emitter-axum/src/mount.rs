//! Mounting the WebSocket endpoint into an axum app: as a `Router`, or as a tower layer.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::Request;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use emitter_core::Server;
use tower::{Layer, Service, ServiceExt};

use crate::upgrade::upgrade;

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
