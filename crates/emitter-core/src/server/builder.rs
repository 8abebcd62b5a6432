//! Configuring a server: the builder, whose every setter says its default.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, KeepLimits, LinkPolicy, RateLimit};
use crate::protocol::query::QueryParam;
use crate::transport::origin::{Origins, Pattern};
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
    ///
    /// [`DEFAULT_MAX_MESSAGE_SIZE`]: crate::DEFAULT_MAX_MESSAGE_SIZE
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
    ///
    /// [`DEFAULT_OUTBOUND_QUEUE`]: crate::DEFAULT_OUTBOUND_QUEUE
    pub fn outbound_queue(self, frames: usize) -> Self {
        self.with(|config| config.outbound_queue = frames.max(1))
    }

    /// The most bytes one connection may hold before it is a slow consumer: its own frames waiting (each counted
    /// with 64 bytes of overhead; a newcomer's snapshot counts nothing, its frames are shared) plus the broadcasts it
    /// has not read yet (the fan-out log from where it reads on, which it keeps alive). A slow consumer is closed
    /// (1013, `slow consumer`) like one past [`outbound_queue`](ServerBuilder::outbound_queue), and lets go of the
    /// broadcasts at once. One frame always fits an empty queue, so a message larger than the budget still reaches a
    /// client that keeps up. Broadcasts are checked against it once per quarter of a budget appended.
    /// Default: [`DEFAULT_OUTBOUND_BUDGET`](crate::DEFAULT_OUTBOUND_BUDGET) (4 MiB); the Limits chapter gives the worst case it allows.
    pub fn outbound_budget(self, bytes: usize) -> Self {
        self.with(|config| config.outbound_budget = bytes.max(1))
    }

    /// How long one write to a connection's socket (a frame, a ping, a flush of a burst) may wait for the client to
    /// read before the connection is closed as a slow consumer (1013, `slow consumer`). A writer blocked on a client
    /// that stopped reading also gives way at once when the connection is closed for another reason.
    /// Default: [`DEFAULT_WRITE_DEADLINE`](crate::DEFAULT_WRITE_DEADLINE) (10 s); at least 10 ms.
    pub fn write_deadline(self, deadline: Duration) -> Self {
        self.with(|config| config.write_deadline = deadline.max(Duration::from_millis(10)))
    }

    /// The most connections open at once. One more is refused (HTTP 503 before the upgrade where the transport can,
    /// or closed at once). Default: [`DEFAULT_MAX_CONNECTIONS`] (10,000). Each connection is a file descriptor:
    /// keep it under the process's open-file limit.
    ///
    /// [`DEFAULT_MAX_CONNECTIONS`]: crate::DEFAULT_MAX_CONNECTIONS
    pub fn max_connections(self, connections: usize) -> Self {
        self.with(|config| config.max_connections = connections)
    }

    /// The most connections open at once that are not linked to a user (new ones, and ones whose user was unlinked
    /// or left). One more is refused like one over [`max_connections`](Self::max_connections). Default:
    /// [`DEFAULT_MAX_UNLINKED_CONNECTIONS`] (1,000).
    ///
    /// [`DEFAULT_MAX_UNLINKED_CONNECTIONS`]: crate::DEFAULT_MAX_UNLINKED_CONNECTIONS
    pub fn max_unlinked_connections(self, connections: usize) -> Self {
        self.with(|config| config.max_unlinked_connections = connections)
    }

    /// The most users there may be, linked or not. A link request that would create a user past it is rejected with
    /// `server has too many users` (counted in `krmx_rejections_total{reason="too_many_users"}`); links to users that
    /// exist are never refused by it, so a user that relinks always gets back in. [`Server::join`] is the app's own
    /// decision and is not limited. On a cluster each node checks its replica of the users, which may be a few
    /// changes behind, so the cluster can pass the cap by about as many links as are decided at once. Default:
    /// [`DEFAULT_MAX_USERS`](crate::DEFAULT_MAX_USERS) (100,000); pair it with a
    /// [`grace_period`](Self::grace_period) so that users whose clients went away make room.
    ///
    /// ```
    /// let server = emitter_core::Server::builder().max_users(500).build();
    /// assert_eq!(server.config().max_users(), 500);
    /// ```
    pub fn max_users(self, users: usize) -> Self {
        self.with(|config| config.max_users = users)
    }

    /// How long a connection may stay open without a linked user: from when it opens, and again from each time its
    /// user is unlinked or leaves. Past it the connection is closed. A link attempt waiting on async authentication
    /// is not closed (the auth timeout bounds it). `Duration::ZERO` turns the deadline off. Default:
    /// [`DEFAULT_LINK_DEADLINE`] (30 s).
    ///
    /// [`DEFAULT_LINK_DEADLINE`]: crate::DEFAULT_LINK_DEADLINE
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
    ///
    /// [`DEFAULT_MAX_JSON_DEPTH`]: crate::DEFAULT_MAX_JSON_DEPTH
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

    /// The web pages, besides the server's own, that may open a connection. A browser sends the page's origin
    /// (`https://app.example.com`) in the upgrade request's `Origin` header, and the page's cookies with it: without
    /// a check, a page on any site could open a connection in its visitor's name (cross-site WebSocket hijacking).
    /// So an upgrade is accepted when it has no `Origin` (a client that is not a browser) or when its origin's host
    /// and port are the request's `Host`; one from another origin is refused with HTTP 403 before it is upgraded.
    ///
    /// Each entry is an origin (`https://app.example.com`, `http://localhost:3000`), or a pattern for its subdomains
    /// (`https://*.example.com`; without a scheme, `*.example.com` takes `http` and `https`), and `null` allows the
    /// origin a sandboxed page or a file sends. Without a port, an entry means its scheme's own (443 for `https`).
    /// Replaces the list given before. Behind a reverse proxy that rewrites `Host`, list the public origin here (or
    /// have the proxy pass `Host` on). Default: none (the server's own host only).
    ///
    /// ```
    /// let server = emitter_core::Server::builder()
    ///     .allowed_origins(["https://app.example.com", "*.example.org"])
    ///     .build();
    /// let config = server.config();
    /// assert!(config.origin_allowed(Some("https://app.example.com"), Some("api.example.com")));
    /// assert!(config.origin_allowed(Some("https://eu.example.org"), Some("api.example.com")));
    /// assert!(!config.origin_allowed(Some("https://evil.example"), Some("api.example.com")));
    /// ```
    pub fn allowed_origins<I>(self, origins: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let patterns = origins
            .into_iter()
            .map(|origin| Pattern::parse(origin.as_ref()))
            .collect();
        self.with(|config| config.origins = Origins::SameHostAnd(patterns))
    }

    /// Accepts upgrades from any origin: turns the check of [`allowed_origins`](Self::allowed_origins) off. Only for
    /// a server whose clients authenticate with something a browser does not send by itself (a token in the link
    /// request, not a cookie). Default: off.
    ///
    /// ```
    /// let server = emitter_core::Server::builder().allow_any_origin().build();
    /// assert!(server.config().origin_allowed(Some("https://anywhere.example"), Some("api.example.com")));
    /// ```
    pub fn allow_any_origin(self) -> Self {
        self.with(|config| config.origins = Origins::Any)
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
