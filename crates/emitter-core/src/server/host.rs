//! The transport's handle on a server: the [`Host`] through which it hands the core each connection and its frames.

use std::fmt;
use std::future::Future;

use crate::error::Status;
use crate::metrics::Cause;
use crate::protocol::vocabulary::ORIGIN_NOT_ALLOWED;
use crate::transport::close_reason::TransportClose;
use crate::transport::handshake::Handshake;
use crate::transport::id::ConnectionId;
use crate::transport::outbox::Outbox;
use crate::Server;

impl Server {
    /// The transport's handle on this server (see [`Host`]). Applications do not need it.
    pub fn host(&self) -> Host {
        Host { server: self.clone() }
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

    /// Why a new connection would be refused now, if it would: `the server is not listening` (it has not started, or
    /// it is closing), `too many connections` or `too many unlinked connections`. Ask before accepting a connection,
    /// to refuse it cheaply (an HTTP 503 whose body is the reason, say); [`connect`](Host::connect) still has the last
    /// word.
    pub fn refusal(&self) -> Option<&'static str> {
        self.server.refusal()
    }

    /// Why an upgrade request would be refused for its origin, if it would: `origin not allowed`, when its `Origin`
    /// header (`origin`) is neither the host of its `Host` header (`host`) nor an allowed origin (see
    /// [`ServerBuilder::allowed_origins`](crate::ServerBuilder::allowed_origins)). Ask before upgrading; answer HTTP
    /// 403 with the reason, and count it with [`record_refusal`](Host::record_refusal).
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// let host = server.host();
    /// assert_eq!(host.origin_refusal(None, Some("game.example")), None);
    /// let why = host.origin_refusal(Some("https://evil.example"), Some("game.example")).unwrap();
    /// host.record_refusal(why);
    /// assert!(server.metrics_text().contains("krmx_connections_refused_total{reason=\"origin\"} 1"));
    /// ```
    pub fn origin_refusal(&self, origin: Option<&str>, host: Option<&str>) -> Option<&'static str> {
        (!self.server.config().origin_allowed(origin, host)).then_some(ORIGIN_NOT_ALLOWED)
    }

    /// Registers a new connection, with nothing known of the request that opened it, and returns its id and its [`Outbox`]: what to write to it, in order. `Err` holds
    /// why it was refused (as [`refusal`](Host::refusal) words it): close the socket at once.
    ///
    /// When the outbox says the connection is closing, write what it returned, close the socket with the code and
    /// text of its [`close_reason`](Outbox::close_reason), and report the close with
    /// [`disconnect`](Host::disconnect) (as for a close of any other cause).
    pub fn connect(&self) -> Result<(ConnectionId, Outbox), &'static str> {
        self.connect_with(Handshake::default())
    }

    /// [`connect`](Host::connect), telling the core what the request that opened the connection said: the
    /// `authenticate` listeners read it through [`AuthInfo::handshake`](crate::AuthInfo::handshake). A transport that
    /// has a request (an HTTP upgrade) calls this one.
    pub fn connect_with(&self, handshake: Handshake) -> Result<(ConnectionId, Outbox), &'static str> {
        self.server.connect(handshake)
    }

    /// Hands the core one incoming text or binary frame.
    pub fn receive(&self, id: ConnectionId, data: &[u8]) {
        self.server.receive(id, data);
    }

    /// Reports that a write to a connection's socket did not finish within the
    /// [write deadline](crate::config::Config::write_deadline): the core closes it as a slow consumer (1013, `slow consumer`,
    /// counted as one), and its outbox says so.
    pub fn stalled(&self, id: ConnectionId) {
        self.server.stalled(id);
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

    // ---- metrics: what only the transport sees ------------------------------------------------------------------

    /// Counts `frames` written to a connection's socket, of `bytes` payload bytes in all (the server's
    /// `krmx_messages_sent_total` and `krmx_sent_bytes_total`). Call it once per write burst: it costs two atomic
    /// adds on counters striped per thread.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// server.host().record_written(3, 120);
    /// let text = server.metrics_text();
    /// assert!(text.contains("\nkrmx_messages_sent_total 3\n"));
    /// assert!(text.contains("\nkrmx_sent_bytes_total 120\n"));
    /// ```
    pub fn record_written(&self, frames: usize, bytes: usize) {
        let metrics = &self.server.inner.metrics;
        metrics.messages_out.add(frames as u64);
        metrics.bytes_out.add(bytes as u64);
    }

    /// Counts a connection the transport refused before opening it, for the reason [`refusal`](Host::refusal) gave
    /// (`krmx_connections_refused_total{reason}`). A refusal by [`connect`](Host::connect) is counted by the core.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// let host = server.host();
    /// if let Some(why) = host.refusal() {
    ///     host.record_refusal(why); // and answer 503 with `why`
    /// }
    /// let text = server.metrics_text();
    /// assert!(text.contains("krmx_connections_refused_total{reason=\"not_listening\"} 1"));
    /// ```
    pub fn record_refusal(&self, why: &str) {
        self.server.inner.metrics.refused(why);
    }

    /// Records how many frames a connection's writer found waiting when it woke (`krmx_outbound_queue_depth`).
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// server.host().record_queue_depth(5);
    /// assert!(server.metrics_text().contains("krmx_outbound_queue_depth_bucket{le=\"8\"} 1"));
    /// ```
    pub fn record_queue_depth(&self, frames: usize) {
        self.server.inner.metrics.queue_depth.observe(frames as u64);
    }

    /// Counts a connection the transport closed on its own account, for `cause`
    /// (`krmx_connection_closes_total{cause}`). The closes the core asks for are counted by the core.
    ///
    /// ```
    /// use emitter_core::transport::TransportClose;
    ///
    /// let server = emitter_core::Server::new();
    /// server.host().record_close(TransportClose::Oversize);
    /// assert!(server
    ///     .metrics_text()
    ///     .contains("krmx_connection_closes_total{cause=\"oversize\"} 1"));
    /// ```
    pub fn record_close(&self, cause: TransportClose) {
        self.server.inner.metrics.closed(Cause::Transport(cause));
    }
}
