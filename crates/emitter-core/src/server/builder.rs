//! Configuring a server: the builder, whose every setter says its default.

use std::sync::Arc;
use std::time::Duration;

use crate::protocol::query::QueryParam;
use crate::server::config::{Config, KeepLimits, LinkPolicy, RateLimit};
use crate::Server;

/// Builds a [`Server`]. Every setter says its default.
///
/// ```
/// use emitter_core::{QueryParam, Server};
/// use std::time::Duration;
///
/// let server = Server::builder()
///     .accept_new_users(false)
///     .auth_timeout(Duration::from_secs(2))
///     .path("game")
///     .query_param("room", QueryParam::Present)
///     .build();
/// assert_eq!(server.config().path(), "/game");
/// ```
#[derive(Debug, Clone, Default)]
pub struct ServerBuilder {
    config: Config,
}

impl ServerBuilder {
    /// Whether a connection may link to a user that does not exist yet, creating it. When `false`, only users joined
    /// with [`Server::join`] can be linked to, and others get `server is not accepting new users`. Default: `true`.
    pub fn accept_new_users(self, accept: bool) -> Self {
        self.with(|config| config.accept_new_users = accept)
    }

    /// How long the futures given to [`mark_async`](crate::AuthContext::mark_async) may take before the link is
    /// rejected with `authentication timeout`. Values under 1 ms become 1 ms. Default: 10 s.
    pub fn auth_timeout(self, timeout: Duration) -> Self {
        self.with(|config| config.auth_timeout = timeout.max(Duration::from_millis(1)))
    }

    /// The rule a username must pass, for links (`invalid username`) and for [`Server::join`]. Default:
    /// [`is_valid_username`](crate::is_valid_username).
    pub fn is_valid_username(self, rule: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.with(|config| config.username_rule = Arc::new(rule))
    }

    /// How often every connection is pinged. A connection that has not answered the previous ping when the next is
    /// due is closed, which unlinks its user. `Duration::ZERO` turns pinging off; other values under 100 ms become
    /// 100 ms. Default: 15 s.
    pub fn ping_interval(self, interval: Duration) -> Self {
        let interval = (!interval.is_zero()).then(|| interval.max(Duration::from_millis(100)));
        self.with(|config| config.ping_interval = interval)
    }

    /// The HTTP path of the WebSocket endpoint; a missing leading `/` is added. Default: `/`.
    pub fn path(self, path: impl Into<String>) -> Self {
        let path = path.into();
        let path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        self.with(|config| config.path = path)
    }

    /// Adds an expectation on the connection URL's query parameter `name`. A connection whose URL fails any
    /// expectation is closed at once. Default: none.
    pub fn query_param(self, name: impl Into<String>, expected: QueryParam) -> Self {
        self.with(|config| config.query_params.push((name.into(), expected)))
    }

    /// The largest incoming message (and frame) in bytes. A bigger one closes the connection, which unlinks its user;
    /// nothing is buffered past the limit. Default: [`DEFAULT_MAX_MESSAGE_SIZE`] (1 MiB).
    pub fn max_message_size(self, bytes: usize) -> Self {
        self.with(|config| config.max_message_size = bytes.max(1))
    }

    /// The client protocol versions that may link. Default: 0.5.x and 0.6.x, which are identical on the wire.
    pub fn accepted_versions(self, versions: crate::AcceptedVersions) -> Self {
        self.with(|config| config.accepted_versions = versions)
    }

    /// How far behind one connection may fall before it is a slow consumer: at most this many frames of its own may
    /// wait (sends to its user and replies to it; a newcomer's snapshot of all users is one, however many users there
    /// are), and it may be at most this many broadcasts (and membership messages) behind the others. A slow consumer
    /// is closed (unlinking its user) rather than delaying anyone else or making the server keep what it has not read.
    /// Default: [`DEFAULT_OUTBOUND_QUEUE`] (4096).
    pub fn outbound_queue(self, frames: usize) -> Self {
        self.with(|config| config.outbound_queue = frames.max(1))
    }

    /// The most connections open at once. One more is refused (HTTP 503 before the upgrade where the transport can,
    /// or closed at once). Default: [`DEFAULT_MAX_CONNECTIONS`] (10,000). Each connection is a file descriptor:
    /// keep it under the process's open-file limit.
    pub fn max_connections(self, connections: usize) -> Self {
        self.with(|config| config.max_connections = connections)
    }

    /// The most connections open at once that are not linked to a user (new ones, and ones whose user was unlinked
    /// or left). One more is refused like one over [`max_connections`](Self::max_connections). Default:
    /// [`DEFAULT_MAX_UNLINKED_CONNECTIONS`] (1,000).
    pub fn max_unlinked_connections(self, connections: usize) -> Self {
        self.with(|config| config.max_unlinked_connections = connections)
    }

    /// How long a connection may stay open without a linked user: from when it opens, and again from each time its
    /// user is unlinked or leaves. Past it the connection is closed. A link attempt waiting on async authentication
    /// is not closed (the auth timeout bounds it). `Duration::ZERO` turns the deadline off. Default:
    /// [`DEFAULT_LINK_DEADLINE`] (30 s).
    pub fn link_deadline(self, deadline: Duration) -> Self {
        self.with(|config| config.link_deadline = (!deadline.is_zero()).then_some(deadline))
    }

    /// Limits how fast one connection may send: `per_second` messages a second in the long run, `burst` at once. A
    /// connection that goes over is closed (its user is unlinked): a client that floods is misbehaving, and dropping
    /// its messages silently would only hide that. Default: no limit.
    ///
    /// ```
    /// let server = emitter_core::Server::builder().rate_limit(50.0, 100.0).build();
    /// assert_eq!(server.config().rate_limit().unwrap().burst, 100.0);
    /// ```
    pub fn rate_limit(self, per_second: f64, burst: f64) -> Self {
        self.with(|config| {
            config.rate_limit = Some(RateLimit {
                per_second: per_second.max(0.0),
                burst: burst.max(1.0),
            })
        })
    }

    /// The deepest nesting of arrays and objects an incoming message may have, its own object counting as 1. A
    /// deeper one is an invalid message, found by a scan of the bytes before anything is parsed. Default:
    /// [`DEFAULT_MAX_JSON_DEPTH`] (32).
    pub fn max_json_depth(self, depth: usize) -> Self {
        self.with(|config| config.max_json_depth = depth.max(1))
    }

    /// What a link request for a user that is linked to another connection does: [`LinkPolicy::Reject`] it (the
    /// reference's behaviour), or [`LinkPolicy::Replace`] the old connection, which hears `krmx/unlinked` about its
    /// user and is closed, once the new one is authenticated. On a cluster the old connection may be on another node.
    /// Default: [`LinkPolicy::Reject`].
    ///
    /// ```
    /// use emitter_core::{LinkPolicy, Server};
    ///
    /// let server = Server::builder().link_policy(LinkPolicy::Replace).build();
    /// assert_eq!(server.config().link_policy(), LinkPolicy::Replace);
    /// ```
    pub fn link_policy(self, policy: LinkPolicy) -> Self {
        self.with(|config| config.link_policy = policy)
    }

    /// How long a user may stay unlinked before it leaves by itself (`period` after its `unlink`, or after its `join`
    /// when nobody linked to it, it gets `leave`, as a kick would make). A link within the period keeps the user. On
    /// a cluster the cluster keeps the time, so it runs out even
    /// if the node that unlinked the user is gone (checked about once a second, so up to a second late).
    /// `Duration::ZERO` turns it off. Default: off (users stay until they leave or are kicked, as in the reference).
    ///
    /// ```
    /// let server = emitter_core::Server::builder().grace_period(std::time::Duration::from_secs(30)).build();
    /// assert_eq!(server.config().grace_period(), Some(std::time::Duration::from_secs(30)));
    /// ```
    pub fn grace_period(self, period: Duration) -> Self {
        self.with(|config| config.grace_period = (!period.is_zero()).then_some(period))
    }

    /// Keeps the messages for a joined but unlinked user, within `limits`, and delivers them when it relinks: right
    /// after its snapshot, in order, before anything newer. What is kept: [`Server::send`]s to it (which then succeed
    /// instead of failing with `cannot send to an unlinked user`) and broadcasts it would have received. Past a limit
    /// the oldest are dropped and counted in [`Stats::unlinked_dropped`](crate::Stats::unlinked_dropped). Clients
    /// see ordinary messages. Default: off (as in the reference).
    ///
    /// ```
    /// use emitter_core::{KeepLimits, Server};
    /// use std::time::Duration;
    ///
    /// let limits = KeepLimits { messages: 100, bytes: 1 << 20, age: Duration::from_secs(60) };
    /// let server = Server::builder().keep_unlinked(limits).build();
    /// assert_eq!(server.config().keep_unlinked(), Some(limits));
    /// ```
    pub fn keep_unlinked(self, limits: KeepLimits) -> Self {
        self.with(|config| config.keep_unlinked = Some(limits))
    }

    /// How long a connection that is closing may take to write what was queued for it before the close and to
    /// finish the WebSocket close handshake (send its close frame, get the client's answer); past it, its socket is
    /// cut, without a close frame if none could be written. It applies to every close: the server's own
    /// ([`Server::close`] resolves within about this long, however slowly clients read), a client's, and the ones
    /// for a limit. `Duration::ZERO` waits for nothing: what the socket does not take at once is cut. Default:
    /// [`DEFAULT_CLOSE_DRAIN_DEADLINE`] (1 s).
    ///
    /// [`DEFAULT_CLOSE_DRAIN_DEADLINE`]: crate::DEFAULT_CLOSE_DRAIN_DEADLINE
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// // Give clients up to ten seconds to take their last messages when the server shuts down.
    /// let server = emitter_core::Server::builder().close_drain_deadline(Duration::from_secs(10)).build();
    /// assert_eq!(server.config().close_drain_deadline(), Duration::from_secs(10));
    /// ```
    pub fn close_drain_deadline(self, deadline: Duration) -> Self {
        self.with(|config| config.close_drain_deadline = deadline)
    }

    /// Changes the configuration with `set`: the body of every setter above.
    fn with(mut self, set: impl FnOnce(&mut Config)) -> Self {
        set(&mut self.config);
        self
    }

    /// Creates the server, in status [`Initializing`](crate::Status::Initializing).
    pub fn build(self) -> Server {
        Server::with_config(self.config)
    }
}

impl Server {
    /// Starts configuring a server.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }
}
