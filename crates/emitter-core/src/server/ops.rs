//! What operators read from a server: its metrics and its health (the types are in `metrics`).

use crate::error::Status;
use crate::metrics::health::Health;
use crate::metrics::Gauges;
use crate::Server;

impl Server {
    /// The server's metrics in the Prometheus text format (version 0.0.4; serve it with
    /// [`METRICS_CONTENT_TYPE`]). Every metric is this server's own: another server in the same process has its
    /// own numbers. A node of a cluster adds its `krmx_cluster_…` metrics. `emitter-axum` serves it at
    /// `GET /metrics`; the book's Operations chapter lists every metric.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// let text = server.metrics_text();
    /// assert!(text.contains("\nkrmx_connections_open 0\n"));
    /// assert!(text.contains("krmx_rejections_total{reason=\"app\"} 0"));
    /// ```
    ///
    /// [`METRICS_CONTENT_TYPE`]: crate::metrics::CONTENT_TYPE
    pub fn metrics_text(&self) -> String {
        let (users, users_linked) = self.inner.registry.lock().counts();
        self.inner.metrics.encode(Gauges {
            connections_open: self.inner.connections.open(),
            connections_linked: self.inner.connections.linked(),
            users,
            users_linked,
            clustered: self.sequencer().is_some(),
        })
    }

    /// Whether the server is fit to serve: listening, and on a cluster, holding its lease. `emitter-axum` answers
    /// `GET /health` with it (200, or 503 with the reason).
    ///
    /// ```
    /// use emitter_core::{Health, Server, Status};
    ///
    /// let server = Server::new();
    /// assert_eq!(server.health(), Health::NotListening(Status::Initializing));
    /// assert!(!server.health().is_healthy());
    /// ```
    pub fn health(&self) -> Health {
        match self.status() {
            Status::Listening if self.sequencer().is_some() && !self.inner.metrics.lease_held() => Health::LeaseLost,
            Status::Listening => Health::Healthy,
            status => Health::NotListening(status),
        }
    }
}
