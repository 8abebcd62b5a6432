//! Server configuration: the settings a server was built with, and their defaults.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::query::QueryParam;
use crate::protocol::username::is_valid_username;
use crate::protocol::version::AcceptedVersions;
use crate::transport::origin::Origins;

/// The default largest incoming message: 1 MiB. The reference allows 100 MiB (its WebSocket library's default), which
/// lets one client make the server buffer that much; Krmx messages are small JSON objects, so 1 MiB leaves room for
/// big game states while bounding what a hostile client can cost.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 20;

/// The default for how far behind one connection may fall: 4096 frames of its own waiting (a newcomer's snapshot of all
/// users is one), or 4096 broadcasts behind the others.
pub const DEFAULT_OUTBOUND_QUEUE: usize = 4096;

/// The default outbound budget: 4 MiB a connection may hold, its own frames waiting plus the broadcasts it has not
/// read yet. See the Limits chapter ("Byte budgets") for the arithmetic behind it.
pub const DEFAULT_OUTBOUND_BUDGET: usize = 4 << 20;

/// The default time one write to a connection's socket may take before the connection is a slow consumer: 10 s.
pub const DEFAULT_WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// The default cap on open connections: 10,000. A connection past it is refused before the WebSocket upgrade.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The default cap on connections that are open but not linked to a user: 1,000.
pub const DEFAULT_MAX_UNLINKED_CONNECTIONS: usize = 1_000;

/// The default cap on users, linked or not: 100,000, ten times [`DEFAULT_MAX_CONNECTIONS`]. Every open connection can
/// have its user, with room for nine unlinked users (waiting for a relink, or kept without a grace period) per linked
/// one, so no app that runs within the other defaults meets it; yet clients that link under fresh names and go away can
/// no longer grow the registry (and every newcomer's snapshot, which lists all users) without bound.
pub const DEFAULT_MAX_USERS: usize = 100_000;

/// The default time a connection may stay open without being linked: 30 s.
pub const DEFAULT_LINK_DEADLINE: Duration = Duration::from_secs(30);

/// The default time a connection the server closes has to take what was queued for it and answer the close: 1 s.
pub const DEFAULT_CLOSE_DRAIN_DEADLINE: Duration = Duration::from_secs(1);

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

/// What happens when a connection asks to link to a user that is linked to another connection already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkPolicy {
    /// The request is rejected with `user <name> is already linked to a connection`, as in the reference.
    #[default]
    Reject,
    /// The new connection takes over once authenticated: the old one hears `krmx/unlinked` about its user and is
    /// closed; everyone else sees the user unlinked and linked again.
    Replace,
}

/// Limits of the messages kept for a joined but unlinked user, to deliver when it relinks (see
/// [`ServerBuilder::keep_unlinked`](crate::ServerBuilder::keep_unlinked)). Past a limit the oldest are dropped first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepLimits {
    /// The most messages kept per user.
    pub messages: usize,
    /// The most bytes (of serialized messages) kept per user.
    pub bytes: usize,
    /// The oldest a kept message may be when the user relinks; older ones are dropped.
    pub age: Duration,
}

/// A server's settings. Build one with [`Server::builder`]; read it back with [`Server::config`].
///
/// [`Server::builder`]: crate::Server::builder
/// [`Server::config`]: crate::Server::config
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
    pub(crate) outbound_budget: usize,
    pub(crate) write_deadline: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_unlinked_connections: usize,
    pub(crate) max_users: usize,
    pub(crate) link_deadline: Option<Duration>,
    pub(crate) rate_limit: Option<RateLimit>,
    pub(crate) max_json_depth: usize,
    pub(crate) link_policy: LinkPolicy,
    pub(crate) grace_period: Option<Duration>,
    pub(crate) keep_unlinked: Option<KeepLimits>,
    pub(crate) close_drain_deadline: Duration,
    pub(crate) origins: Origins,
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
            outbound_budget: DEFAULT_OUTBOUND_BUDGET,
            write_deadline: DEFAULT_WRITE_DEADLINE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_unlinked_connections: DEFAULT_MAX_UNLINKED_CONNECTIONS,
            max_users: DEFAULT_MAX_USERS,
            link_deadline: Some(DEFAULT_LINK_DEADLINE),
            rate_limit: None,
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
            link_policy: LinkPolicy::Reject,
            grace_period: None,
            keep_unlinked: None,
            close_drain_deadline: DEFAULT_CLOSE_DRAIN_DEADLINE,
            origins: Origins::default(),
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
            .field("outbound_budget", &self.outbound_budget)
            .field("write_deadline", &self.write_deadline)
            .field("max_connections", &self.max_connections)
            .field("max_unlinked_connections", &self.max_unlinked_connections)
            .field("max_users", &self.max_users)
            .field("link_deadline", &self.link_deadline)
            .field("rate_limit", &self.rate_limit)
            .field("max_json_depth", &self.max_json_depth)
            .field("link_policy", &self.link_policy)
            .field("grace_period", &self.grace_period)
            .field("keep_unlinked", &self.keep_unlinked)
            .field("close_drain_deadline", &self.close_drain_deadline)
            .field("origins", &self.origins)
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

    /// The most bytes one connection may hold before it is a slow consumer: its own frames waiting plus the
    /// broadcasts it has not read yet.
    pub fn outbound_budget(&self) -> usize {
        self.outbound_budget
    }

    /// How long one write to a connection's socket (a frame, a ping, a flush) may take before the connection is a
    /// slow consumer.
    pub fn write_deadline(&self) -> Duration {
        self.write_deadline
    }

    /// The cap on open connections.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// The cap on open connections not linked to a user.
    pub fn max_unlinked_connections(&self) -> usize {
        self.max_unlinked_connections
    }

    /// The cap on users (linked or not) past which a link that would create a new user is refused.
    pub fn max_users(&self) -> usize {
        self.max_users
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

    /// What a link request for a user linked elsewhere does.
    pub fn link_policy(&self) -> LinkPolicy {
        self.link_policy
    }

    /// How long an unlinked user stays before it leaves by itself; `None` when it stays until it leaves or is kicked.
    pub fn grace_period(&self) -> Option<Duration> {
        self.grace_period
    }

    /// The limits of the messages kept for unlinked users; `None` when none are kept.
    pub fn keep_unlinked(&self) -> Option<KeepLimits> {
        self.keep_unlinked
    }

    /// How long a connection that is closing may take to write what was queued for it and to finish the WebSocket
    /// close handshake before its socket is cut.
    pub fn close_drain_deadline(&self) -> Duration {
        self.close_drain_deadline
    }

    /// Whether an upgrade request may open a connection, by its `Origin` header (`origin`) and its `Host` header
    /// (`host`): see [`ServerBuilder::allowed_origins`](crate::ServerBuilder::allowed_origins).
    ///
    /// ```
    /// let config = emitter_core::Server::new().config().clone();
    /// assert!(config.origin_allowed(None, Some("game.example")));
    /// assert!(config.origin_allowed(Some("https://game.example"), Some("game.example")));
    /// assert!(!config.origin_allowed(Some("https://evil.example"), Some("game.example")));
    /// ```
    pub fn origin_allowed(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        self.origins.allow(origin, host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Server;

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
        assert_eq!(config.close_drain_deadline(), DEFAULT_CLOSE_DRAIN_DEADLINE);
        assert_eq!(config.max_users(), DEFAULT_MAX_USERS);
        assert_eq!(config.outbound_budget(), DEFAULT_OUTBOUND_BUDGET);
        assert_eq!(config.write_deadline(), DEFAULT_WRITE_DEADLINE);
        assert!(config.is_valid_username("simon"));
        assert!(!config.is_valid_username("bot 1"));
    }
}
