//! Server configuration and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::query::QueryParam;
use crate::username::is_valid_username;
use crate::version::AcceptedVersions;
use crate::Server;

/// The default largest incoming message: 1 MiB. The reference allows 100 MiB (its WebSocket library's default), which
/// lets one client make the server buffer that much; Krmx messages are small JSON objects, so 1 MiB leaves room for
/// big game states while bounding what a hostile client can cost.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 20;

/// The default for how far behind one connection may fall: 4096 frames of its own waiting (a newcomer's snapshot of all
/// users is one), or 4096 broadcasts behind the others.
pub const DEFAULT_OUTBOUND_QUEUE: usize = 4096;

/// The default cap on open connections: 10,000. A connection past it is refused before the WebSocket upgrade.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The default cap on connections that are open but not linked to a user: 1,000.
pub const DEFAULT_MAX_UNLINKED_CONNECTIONS: usize = 1_000;

/// The default time a connection may stay open without being linked: 30 s.
pub const DEFAULT_LINK_DEADLINE: Duration = Duration::from_secs(30);

/// The default deepest nesting of arrays and objects in an incoming message, the message object itself included: 32.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 32;

/// The longest username the server looks at, in bytes, whatever the username rule says: 256. A longer one is an
/// `invalid username` without calling the rule.
pub const MAX_USERNAME_BYTES: usize = 256;

/// A per-connection message rate limit: a token bucket that refills `per_second` tokens a second up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Messages a second a connection may send in the long run.
    pub per_second: f64,
    /// Messages a connection may send at once after a quiet spell.
    pub burst: f64,
}

/// A server's settings. Build one with [`Server::builder`]; read it back with [`Server::config`].
#[derive(Clone)]
pub struct Config {
    pub(crate) accept_new_users: bool,
    pub(crate) auth_timeout: Duration,
    pub(crate) username_rule: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) path: String,
    pub(crate) query_params: Vec<(String, QueryParam)>,
    pub(crate) max_message_size: usize,
    pub(crate) accepted_versions: AcceptedVersions,
    pub(crate) outbound_queue: usize,
    pub(crate) max_connections: usize,
    pub(crate) max_unlinked_connections: usize,
    pub(crate) link_deadline: Option<Duration>,
    pub(crate) rate_limit: Option<RateLimit>,
    pub(crate) max_json_depth: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            accept_new_users: true,
            auth_timeout: Duration::from_secs(10),
            username_rule: Arc::new(is_valid_username),
            ping_interval: Some(Duration::from_secs(15)),
            path: "/".to_owned(),
            query_params: Vec::new(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            accepted_versions: AcceptedVersions::default(),
            outbound_queue: DEFAULT_OUTBOUND_QUEUE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_unlinked_connections: DEFAULT_MAX_UNLINKED_CONNECTIONS,
            link_deadline: Some(DEFAULT_LINK_DEADLINE),
            rate_limit: None,
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("accept_new_users", &self.accept_new_users)
            .field("auth_timeout", &self.auth_timeout)
            .field("ping_interval", &self.ping_interval)
            .field("path", &self.path)
            .field("query_params", &self.query_params)
            .field("max_message_size", &self.max_message_size)
            .field("accepted_versions", &self.accepted_versions)
            .field("outbound_queue", &self.outbound_queue)
            .field("max_connections", &self.max_connections)
            .field("max_unlinked_connections", &self.max_unlinked_connections)
            .field("link_deadline", &self.link_deadline)
            .field("rate_limit", &self.rate_limit)
            .field("max_json_depth", &self.max_json_depth)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Whether connections may link to users that do not exist yet.
    pub fn accept_new_users(&self) -> bool {
        self.accept_new_users
    }

    /// How long async authentication may take.
    pub fn auth_timeout(&self) -> Duration {
        self.auth_timeout
    }

    /// Whether `username` passes the configured username rule.
    pub fn is_valid_username(&self, username: &str) -> bool {
        (self.username_rule)(username)
    }

    /// How often each connection is pinged; `None` when pinging is off.
    pub fn ping_interval(&self) -> Option<Duration> {
        self.ping_interval
    }

    /// The HTTP path the WebSocket endpoint is served on; always starts with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether a connection URL's raw query string meets every expected query parameter.
    pub fn query_params_hold(&self, query: Option<&str>) -> bool {
        QueryParam::all_hold(&self.query_params, query)
    }

    /// The largest incoming message, in bytes.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// Which client protocol versions may link.
    pub fn accepted_versions(&self) -> &AcceptedVersions {
        &self.accepted_versions
    }

    /// How far behind one connection may fall: frames of its own waiting, or broadcasts it has not read yet.
    pub fn outbound_queue(&self) -> usize {
        self.outbound_queue
    }

    /// The cap on open connections.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// The cap on open connections not linked to a user.
    pub fn max_unlinked_connections(&self) -> usize {
        self.max_unlinked_connections
    }

    /// How long a connection may stay unlinked before it is closed; `None` when there is no deadline.
    pub fn link_deadline(&self) -> Option<Duration> {
        self.link_deadline
    }

    /// The per-connection message rate limit, if any.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.rate_limit
    }

    /// The deepest nesting of arrays and objects an incoming message may have.
    pub fn max_json_depth(&self) -> usize {
        self.max_json_depth
    }
}

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
    pub fn accept_new_users(mut self, accept: bool) -> Self {
        self.config.accept_new_users = accept;
        self
    }

    /// How long the futures given to [`mark_async`](crate::AuthContext::mark_async) may take before the link is
    /// rejected with `authentication timeout`. Values under 1 ms become 1 ms. Default: 10 s.
    pub fn auth_timeout(mut self, timeout: Duration) -> Self {
        self.config.auth_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The rule a username must pass, for links (`invalid username`) and for [`Server::join`]. Default:
    /// [`is_valid_username`](crate::is_valid_username).
    pub fn is_valid_username(mut self, rule: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.config.username_rule = Arc::new(rule);
        self
    }

    /// How often every connection is pinged. A connection that has not answered the previous ping when the next is
    /// due is closed, which unlinks its user. `Duration::ZERO` turns pinging off; other values under 100 ms become
    /// 100 ms. Default: 15 s.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.config.ping_interval = if interval.is_zero() {
            None
        } else {
            Some(interval.max(Duration::from_millis(100)))
        };
        self
    }

    /// The HTTP path of the WebSocket endpoint; a missing leading `/` is added. Default: `/`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.config.path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        self
    }

    /// Adds an expectation on the connection URL's query parameter `name`. A connection whose URL fails any
    /// expectation is closed at once. Default: none.
    pub fn query_param(mut self, name: impl Into<String>, expected: QueryParam) -> Self {
        self.config.query_params.push((name.into(), expected));
        self
    }

    /// The largest incoming message (and frame) in bytes. A bigger one closes the connection, which unlinks its user;
    /// nothing is buffered past the limit. Default: [`DEFAULT_MAX_MESSAGE_SIZE`] (1 MiB).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config.max_message_size = bytes.max(1);
        self
    }

    /// The client protocol versions that may link. Default: 0.5.x and 0.6.x, which are identical on the wire.
    pub fn accepted_versions(mut self, versions: crate::AcceptedVersions) -> Self {
        self.config.accepted_versions = versions;
        self
    }

    /// How far behind one connection may fall before it is a slow consumer: at most this many frames of its own may
    /// wait (sends to its user and replies to it; a newcomer's snapshot of all users is one, however many users there
    /// are), and it may be at most this many broadcasts (and membership messages) behind the others. A slow consumer
    /// is closed (unlinking its user) rather than delaying anyone else or making the server keep what it has not read.
    /// Default: [`DEFAULT_OUTBOUND_QUEUE`] (4096).
    pub fn outbound_queue(mut self, frames: usize) -> Self {
        self.config.outbound_queue = frames.max(1);
        self
    }

    /// The most connections open at once. One more is refused (HTTP 503 before the upgrade where the transport can,
    /// or closed at once). Default: [`DEFAULT_MAX_CONNECTIONS`] (10,000). Each connection is a file descriptor:
    /// keep it under the process's open-file limit.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.config.max_connections = connections;
        self
    }

    /// The most connections open at once that are not linked to a user (new ones, and ones whose user was unlinked
    /// or left). One more is refused like one over [`max_connections`](Self::max_connections). Default:
    /// [`DEFAULT_MAX_UNLINKED_CONNECTIONS`] (1,000).
    pub fn max_unlinked_connections(mut self, connections: usize) -> Self {
        self.config.max_unlinked_connections = connections;
        self
    }

    /// How long a connection may stay open without a linked user: from when it opens, and again from each time its
    /// user is unlinked or leaves. Past it the connection is closed. A link attempt waiting on async authentication
    /// is not closed (the auth timeout bounds it). `Duration::ZERO` turns the deadline off. Default:
    /// [`DEFAULT_LINK_DEADLINE`] (30 s).
    pub fn link_deadline(mut self, deadline: Duration) -> Self {
        self.config.link_deadline = (!deadline.is_zero()).then_some(deadline);
        self
    }

    /// Limits how fast one connection may send: `per_second` messages a second in the long run, `burst` at once. A
    /// connection that goes over is closed (its user is unlinked): a client that floods is misbehaving, and dropping
    /// its messages silently would only hide that. Default: no limit.
    ///
    /// ```
    /// let server = emitter_core::Server::builder().rate_limit(50.0, 100.0).build();
    /// assert_eq!(server.config().rate_limit().unwrap().burst, 100.0);
    /// ```
    pub fn rate_limit(mut self, per_second: f64, burst: f64) -> Self {
        self.config.rate_limit = Some(RateLimit {
            per_second: per_second.max(0.0),
            burst: burst.max(1.0),
        });
        self
    }

    /// The deepest nesting of arrays and objects an incoming message may have, its own object counting as 1. A
    /// deeper one is an invalid message, found by a scan of the bytes before anything is parsed. Default:
    /// [`DEFAULT_MAX_JSON_DEPTH`] (32).
    pub fn max_json_depth(mut self, depth: usize) -> Self {
        self.config.max_json_depth = depth.max(1);
        self
    }

    /// Creates the server, in status [`Initializing`](crate::Status::Initializing).
    pub fn build(self) -> Server {
        Server::with_config(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_and_normalises() {
        let server = Server::builder()
            .auth_timeout(Duration::ZERO)
            .ping_interval(Duration::from_millis(5))
            .path("a/b")
            .build();
        let config = server.config();
        assert_eq!(config.auth_timeout(), Duration::from_millis(1));
        assert_eq!(config.ping_interval(), Some(Duration::from_millis(100)));
        assert_eq!(config.path(), "/a/b");
        let off = Server::builder().ping_interval(Duration::ZERO).build();
        assert_eq!(off.config().ping_interval(), None);
    }

    #[test]
    fn defaults() {
        let server = Server::new();
        let config = server.config();
        assert!(config.accept_new_users());
        assert_eq!(config.auth_timeout(), Duration::from_secs(10));
        assert_eq!(config.ping_interval(), Some(Duration::from_secs(15)));
        assert_eq!(config.path(), "/");
        assert!(config.query_params_hold(Some("anything")));
        assert_eq!(config.max_message_size(), DEFAULT_MAX_MESSAGE_SIZE);
        assert!(config.is_valid_username("simon"));
        assert!(!config.is_valid_username("bot 1"));
    }
}
