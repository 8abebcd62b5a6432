//! What operators scrape and probe: the server's Prometheus metrics and a health check for a load balancer.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use emitter_core::metrics;
use emitter_core::Server;

/// A `Router` that serves the server's metrics at `GET /metrics`, in the Prometheus text format. Merge it into the
/// app that serves the Krmx endpoint, or serve it on a port of its own (one that only your monitoring can reach).
///
/// ```
/// use axum::Router;
///
/// let server = emitter_core::Server::new();
/// let app: Router = emitter_axum::router(&server)
///     .merge(emitter_axum::metrics_route(&server))
///     .merge(emitter_axum::health_route(&server));
/// ```
pub fn metrics_route(server: &Server) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(server.clone())
}

/// A `Router` that answers `GET /health`: `200 ok` while the server is listening (and, on a node of a cluster, holds
/// its lease), `503` with the reason otherwise (not started yet, closing, closed, lease lost).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = emitter_core::Server::new();
/// let app = emitter_axum::router(&server).merge(emitter_axum::health_route(&server));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// emitter_axum::serve(&server, listener, app).await?; // GET /health answers 200 from here on
/// assert!(server.health().is_healthy());
/// server.close().await?;
/// # Ok(())
/// # }
/// ```
pub fn health_route(server: &Server) -> Router {
    Router::new()
        .route("/health", get(health_handler))
        .with_state(server.clone())
}

/// The handler behind [`metrics_route`], to mount at a path of your choosing with the server as its state.
///
/// ```
/// use axum::{routing::get, Router};
///
/// let server = emitter_core::Server::new();
/// let app: Router = Router::new()
///     .route("/internal/metrics", get(emitter_axum::metrics_handler))
///     .with_state(server);
/// ```
pub async fn metrics_handler(State(server): State<Server>) -> Response {
    let mut response = server.metrics_text().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(metrics::CONTENT_TYPE));
    response
}

/// The handler behind [`health_route`], to mount at a path of your choosing with the server as its state.
///
/// ```
/// use axum::{routing::get, Router};
///
/// let server = emitter_core::Server::new();
/// let app: Router = Router::new()
///     .route("/healthz", get(emitter_axum::health_handler))
///     .with_state(server);
/// ```
pub async fn health_handler(State(server): State<Server>) -> Response {
    let health = server.health();
    let status = if health.is_healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, format!("{health}\n")).into_response()
}
