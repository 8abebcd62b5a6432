//! The opt-in reconnect policy: when a linked client's connection drops, connect again and relink the same user.

use crate::redact::url_for_logs;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::error::{ClientStatus, Error};

/// How a client reconnects after its connection dropped while it was linked. Off unless set with
/// [`ClientBuilder::reconnect`](crate::ClientBuilder::reconnect); the reference client never reconnects by itself.
///
/// When the WebSocket closes while the client is [`Linked`](ClientStatus::Linked), and the close was not asked for
/// ([`disconnect`](crate::Client::disconnect), [`leave`](crate::Client::leave) and [`unlink`](crate::Client::unlink)
/// never trigger it), the client waits, connects to the same URL and links the same username with the same auth
/// again. Every step emits its usual events (`close`, then `connecting`, `connect`, `linking`, `accept`, `link` …).
/// A failed connect or a rejected link is retried after a delay that starts at
/// [`initial_delay`](Reconnect::initial_delay) and is multiplied by [`multiplier`](Reconnect::multiplier) after each
/// failure, up to [`max_delay`](Reconnect::max_delay), until [`max_attempts`](Reconnect::max_attempts) attempts have
/// failed. Calling `connect`, `link`, `unlink`, `leave` or `disconnect` yourself stops a reconnect that is under way.
///
/// A server only unlinks a user when it notices the old connection is gone; until then a relink is rejected with
/// `user … is already linked to a connection`, and the policy simply retries.
///
/// ```
/// use std::time::Duration;
/// use emitter_client::{Client, Reconnect};
///
/// let policy = Reconnect::new()
///     .initial_delay(Duration::from_millis(100))
///     .max_delay(Duration::from_secs(5))
///     .max_attempts(20);
/// assert_eq!(policy.delay(1), Duration::from_millis(100));
/// assert_eq!(policy.delay(2), Duration::from_millis(200));
/// assert_eq!(policy.delay(10), Duration::from_secs(5));
/// let client = Client::builder().reconnect(policy).build();
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Reconnect {
    initial_delay: Duration,
    max_delay: Duration,
    multiplier: f64,
    max_attempts: Option<u32>,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            initial_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(10),
            multiplier: 2.0,
            max_attempts: None,
        }
    }
}

impl Reconnect {
    /// The default policy: 250 ms, doubling up to 10 s, retrying for ever.
    ///
    /// ```
    /// let policy = emitter_client::Reconnect::new();
    /// assert_eq!(policy.delay(1), std::time::Duration::from_millis(250));
    /// ```
    pub fn new() -> Self {
        Reconnect::default()
    }

    /// The wait before the first attempt.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let policy = emitter_client::Reconnect::new().initial_delay(Duration::from_millis(10));
    /// assert_eq!(policy.delay(1), Duration::from_millis(10));
    /// ```
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// The longest wait between two attempts.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let policy = emitter_client::Reconnect::new().max_delay(Duration::from_secs(1));
    /// assert_eq!(policy.delay(30), Duration::from_secs(1));
    /// ```
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// What each wait is multiplied by after a failed attempt (at least 1).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let policy = emitter_client::Reconnect::new().initial_delay(Duration::from_millis(100)).multiplier(3.0);
    /// assert_eq!(policy.delay(3), Duration::from_millis(900));
    /// ```
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Gives up after this many failed attempts. Without it the client keeps trying.
    ///
    /// ```
    /// let policy = emitter_client::Reconnect::new().max_attempts(3);
    /// ```
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// The wait before attempt `attempt` (counted from 1).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let policy = emitter_client::Reconnect::new();
    /// assert_eq!(policy.delay(3), Duration::from_secs(1));
    /// ```
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let seconds = self.initial_delay.as_secs_f64() * self.multiplier.powi(exponent);
        let max = self.max_delay.as_secs_f64();
        if seconds.is_finite() && seconds < max {
            Duration::from_secs_f64(seconds)
        } else {
            self.max_delay
        }
    }
}

/// What a reconnect needs to know: where, as whom, and which request it serves.
pub(crate) struct Plan {
    pub(crate) url: String,
    pub(crate) username: String,
    pub(crate) auth: Option<String>,
    pub(crate) epoch: u64,
}

/// What a reconnect needs of a client: the reconnect knows the client only through this, and only weakly.
pub(crate) trait Relink: Send + Sync + 'static {
    /// Moves on whenever the user asks for something.
    fn epoch(&self) -> u64;
    fn status(&self) -> ClientStatus;
    /// Opens a new socket to `url`, as `connect` does, but without stopping the reconnect.
    fn open(this: &Arc<Self>, url: &str) -> impl Future<Output = Result<(), Error>> + Send + 'static;
    /// Sends a link request, as `link` does, but without stopping the reconnect.
    fn relink(
        this: &Arc<Self>,
        username: &str,
        auth: Option<&str>,
    ) -> Result<impl Future<Output = Result<(), Error>> + Send + 'static, Error>;
}

/// Connects again and relinks until it worked, the policy gives up, or the user took over (the epoch moved on).
pub(crate) async fn run<R: Relink>(client: Weak<R>, policy: Reconnect, plan: Plan) {
    let Plan {
        url,
        username,
        auth,
        epoch,
    } = plan;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        if policy.max_attempts.is_some_and(|max| attempt > max) {
            tracing::warn!(
                username,
                url = url_for_logs(&url),
                attempts = attempt - 1,
                "reconnect: giving up"
            );
            return;
        }
        tokio::time::sleep(policy.delay(attempt)).await;
        let Some(client) = client.upgrade() else { return };
        if client.epoch() != epoch {
            tracing::debug!(username, "reconnect: stopped, the client was told to do something else");
            return;
        }
        if client.status() == ClientStatus::Closed {
            tracing::debug!(username, url = url_for_logs(&url), attempt, "reconnect: connecting");
            if let Err(error) = R::open(&client, &url).await {
                tracing::debug!(%error, attempt, "reconnect: connect failed");
                continue;
            }
        }
        if client.epoch() != epoch {
            return;
        }
        match R::relink(&client, &username, auth.as_deref()) {
            Ok(linked) => match linked.await {
                Ok(()) => {
                    tracing::info!(username, url = url_for_logs(&url), attempt, "reconnect: linked again");
                    return;
                }
                Err(Error::Rejected(reason)) => tracing::debug!(reason, attempt, "reconnect: link rejected"),
                Err(error) => tracing::debug!(%error, attempt, "reconnect: link failed"),
            },
            Err(error) => tracing::debug!(%error, attempt, "reconnect: cannot link now"),
        }
    }
}
