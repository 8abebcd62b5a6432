//! The async handle: connect, leases, changes, the log, snapshots, and outgoing messages.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionManagerConfig;
use redis::Value;
use tokio::sync::mpsc;

use crate::sentinel::{Conn, Endpoint};
use crate::shared::{Call, Catchup, ClusterStats, Counters, Options, Shared};
use crate::types::{check_name, Change, ClusterSnapshot, Epoch, Error, LogEntry, NodeLease, Refusal, Result};
use crate::wire::blocking::Blocking;
use crate::wire::messages::NodeMessage;
use crate::wire::subscribe::Notifications;

/// A handle on one cluster in one Redis: cheap to clone, usable from any task. See the [crate docs](crate) for what
/// the cluster state is and what each call promises.
///
/// ```no_run
/// use emitter_redis::{Cluster, Options};
/// use emitter_redis::wire::Change;
///
/// # async fn run() -> Result<(), emitter_redis::Error> {
/// let cluster = Cluster::connect("redis://127.0.0.1/", "chat", Options::default()).await?;
/// let lease = cluster.register_node("node-a").await?;
/// let _alive = cluster.keep_alive(lease.clone()); // renews, and reaps dead nodes
/// let entries = cluster.submit(&lease, Change::link("alice", 1, true)).await?;
/// assert_eq!(entries.len(), 2); // alice joined, then was linked, at two consecutive seqs
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Cluster {
    pub(crate) shared: Arc<Shared>,
    pub(crate) conn: Conn,
    outgoing: mpsc::Sender<Outgoing>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.shared.name)
            .field("epoch", &self.shared.epoch())
            .finish_non_exhaustive()
    }
}

/// One message waiting for the publisher task: the channel it goes out on, and the node it is for (`None`: every
/// node).
struct Outgoing {
    channel: String,
    to: Option<String>,
    message: NodeMessage,
}

impl Outgoing {
    /// What it counts against the publish budget: its body, and 128 bytes for the channel and the header.
    fn size(&self) -> u64 {
        self.message.body.len() as u64 + 128
    }
}

/// How many queued messages the publisher sends in one pipeline.
const PUBLISH_BATCH: usize = 256;

impl Cluster {
    /// Connects to the Redis at `url` (`redis://host:port/db`, or the primary Redis Sentinel names:
    /// `redis+sentinel://host:port[,host:port…]/<master>[/<db>]`, followed through failovers), joins the cluster
    /// `name` (creating its state if there is none, with a new epoch, logged at WARN;
    /// [`Options::require_existing_cluster`] refuses instead), and starts the task that publishes outgoing messages.
    /// Needs a tokio runtime.
    ///
    /// Each connection attempt, the handshake included, is bounded by [`Options::connect_timeout`]. A failure reads
    /// [`Error::Connect`], naming the URL without its password: `could not connect to Redis at
    /// redis://:***@127.0.0.1:6390/0: Connection refused`.
    pub async fn connect(url: &str, name: &str, options: Options) -> Result<Cluster> {
        check_name(name)?;
        let shown = redacted_url(url);
        let endpoint = Endpoint::open(url, options.poll_interval, options.connect_timeout)
            .await
            .map_err(|error| match error {
                Error::Redis(error) => connect_error(&shown, error),
                other => other,
            })?;
        let shared = Arc::new(Shared::new(name, options, endpoint, shown));
        let conn = first_connection(&shared).await?;
        // Outgoing messages take their own connection, so that their order at Redis is the order they were queued
        // in, whatever scripts the node runs meanwhile.
        let publisher = first_connection(&shared).await?;
        let (outgoing, queue) = mpsc::channel(shared.options.publish_queue.max(1));
        tokio::spawn(publish(publisher, queue, shared.clone()));
        let cluster = Cluster { shared, conn, outgoing };
        let create = !cluster.shared.options.require_existing_cluster;
        cluster.open(create).await.map_err(|error| match error {
            Error::Redis(error) => connect_error(&cluster.shared.url, error),
            other => other,
        })?;
        Ok(cluster)
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The options it was made with.
    pub fn options(&self) -> &Options {
        &self.shared.options
    }

    /// The epoch this handle works in: the one Redis had when the handle connected or last [reopened](Self::reopen).
    pub fn epoch(&self) -> Epoch {
        self.shared.epoch()
    }

    /// Adopts the epoch Redis has now, creating the cluster state (a new epoch) if there is none. Call it after an
    /// [`EpochChanged`](crate::Refusal::EpochChanged): then register again and rebuild the replica from a snapshot.
    pub async fn reopen(&self) -> Result<Epoch> {
        self.open(true).await
    }

    async fn open(&self, create: bool) -> Result<Epoch> {
        let call = self.shared.open_call(create);
        let value = self.invoke(&call).await?;
        self.shared.open_result(value)
    }

    async fn invoke(&self, call: &Call) -> Result<Value> {
        let mut conn = self.conn.clone();
        Ok(call.invocation(&self.shared.keys).invoke_async(&mut conn).await?)
    }

    /// Registers a node: a new generation (fencing token) and a lease of [`Options::lease`]. Users still linked to an
    /// earlier generation of the same node id are unlinked first (`NodeRestarted`): that process is gone, or fenced
    /// from now on.
    ///
    /// One live process per node id: while the id's lease is held by another handle (another process) and not past
    /// its deadline, the registration is refused. It waits once for that lease to lapse (at most one
    /// [`Options::lease`]): a process restarted after a crash, with its old lease still running, starts then. If the
    /// lease was renewed meanwhile, another process is alive with this id: [`Error::NodeInUse`]. The handle's own
    /// lease (registering again after losing it) is taken over at once.
    pub async fn register_node(&self, node: &str) -> Result<NodeLease> {
        check_name(node)?;
        let mut waited = false;
        loop {
            let call = self.shared.register_call(node);
            let value = self.invoke(&call).await?;
            match self.shared.register_result(&call, node, value) {
                Err(Error::Refused(Refusal::NodeInUse { remaining_ms })) if !waited => {
                    tracing::warn!(
                        cluster = self.shared.name,
                        node,
                        remaining_ms,
                        "the node id's lease is held by another process: waiting for it to lapse"
                    );
                    let lease = self.shared.options.lease;
                    // A little past Redis's deadline: the two clocks tick alike, but the reply took a while.
                    tokio::time::sleep(Duration::from_millis(remaining_ms).min(lease) + LAPSE_MARGIN).await;
                    waited = true;
                }
                Err(Error::Refused(Refusal::NodeInUse { .. })) => {
                    return Err(Error::NodeInUse {
                        node: node.to_owned(),
                        cluster: self.shared.name.clone(),
                    })
                }
                other => return other,
            }
        }
    }

    /// Extends the lease to [`Options::lease`] from now (Redis's now). [`Refusal::Fenced`](crate::Refusal::Fenced)
    /// once it is gone: the node must stop serving.
    pub async fn renew(&self, lease: &NodeLease) -> Result<()> {
        let call = self.shared.renew_call(lease);
        let value = self.invoke(&call).await?;
        self.shared.housekeeping_result(&call, value).map(drop)
    }

    /// Ends the lease cleanly: every user linked to this node is unlinked (`NodeReleased`), in the log. Returns those
    /// entries.
    pub async fn release(&self, lease: &NodeLease) -> Result<Vec<LogEntry>> {
        let call = self.shared.release_call(lease);
        let value = self.invoke(&call).await?;
        self.shared.housekeeping_result(&call, value)
    }

    /// Unlinks the users of every node whose lease ran out (`LeaseExpired`) and forgets those leases; `by` is recorded
    /// as the cause. Any process may run it; [`keep_alive`](Self::keep_alive) does, every
    /// [`Options::reap_interval`]. Returns the entries it appended.
    pub async fn reap_dead_nodes(&self, by: &str) -> Result<Vec<LogEntry>> {
        check_name(by)?;
        let call = self.shared.reap_call(by);
        let value = self.invoke(&call).await?;
        let entries = self.shared.housekeeping_result(&call, value)?;
        if !entries.is_empty() {
            tracing::warn!(
                cluster = self.shared.name,
                by,
                unlinked = entries.len(),
                "reaped dead nodes' users"
            );
        }
        Ok(entries)
    }

    /// Asks for one membership change, in the name of `lease`'s node. On success, the entries it appended, in seq
    /// order (one, or two for a link that joins or a leave that unlinks): apply them at once, after any entry before
    /// them that the caller has not applied yet. A refusal ([`Error::Refused`]) changed nothing. An
    /// [`Error::Redis`] leaves the outcome unknown: catch up from the log before deciding again.
    pub async fn submit(&self, lease: &NodeLease, change: Change) -> Result<Vec<LogEntry>> {
        let call = self.shared.submit_call(lease, &change);
        let value = self.invoke(&call).await?;
        self.shared.entries_result(&call, value)
    }

    /// Every entry after `seq`, in order, up to the newest one when the read began. Fails with
    /// [`Error::Trimmed`] when retention dropped some of them, and [`Error::Ahead`] when `seq` is past Redis's newest
    /// seq: then read a [`snapshot`](Self::snapshot).
    pub async fn entries_after(&self, seq: u64) -> Result<Vec<LogEntry>> {
        let epoch = self.shared.epoch();
        let mut catchup = Catchup::new(seq);
        while let Some(from) = catchup.next_from() {
            let mut conn = self.conn.clone();
            let value: Value = self.shared.read_pipe(from).query_async(&mut conn).await?;
            self.shared.read_into(&mut catchup, &epoch, value)?;
        }
        Ok(catchup.entries)
    }

    /// Every user in join order and the seq that state corresponds to, read atomically.
    pub async fn snapshot(&self) -> Result<ClusterSnapshot> {
        let epoch = self.shared.epoch();
        let value = self.invoke(&self.shared.snapshot_call(&epoch)).await?;
        self.shared.snapshot_result(epoch, value)
    }

    /// The epoch in Redis (`None`: the state is gone) and the newest seq. One `MGET`, no script.
    pub async fn head(&self) -> Result<(Option<Epoch>, u64)> {
        let mut conn = self.conn.clone();
        let value: Value = self.shared.head_cmd().query_async(&mut conn).await?;
        Shared::head_result(value)
    }

    /// Subscribes to the cluster's notifications for `node`: new seqs, broadcasts from other nodes, and messages sent
    /// to users linked on `node`. The subscription reconnects by itself; see [`Notifications`].
    pub async fn subscribe(&self, node: &str) -> Result<Notifications> {
        check_name(node)?;
        Ok(Notifications::start(self.shared.clone(), self.conn.clone(), node))
    }

    /// Queues a broadcast for the users linked on the other nodes (the origin delivers to its own users itself),
    /// except `skip`. `after` is the last seq the origin had applied. Never blocks: call it where the origin fans
    /// the same message out locally, and the other nodes receive its broadcasts in that order.
    pub fn publish_broadcast(&self, from: &NodeLease, after: u64, skip: Option<&str>, body: Bytes) -> Result<()> {
        self.queue(
            self.shared.keys.broadcast_channel.clone(),
            None,
            message_from(from, after, skip, false, body),
        )
    }

    /// Queues a message for `user`, unlinked everywhere, for every other node to keep until the user links again
    /// (`ServerBuilder::keep_unlinked`). Never blocks; on the broadcast channel, so it keeps its place among this
    /// node's broadcasts.
    pub fn publish_kept(&self, from: &NodeLease, after: u64, user: &str, body: Bytes) -> Result<()> {
        self.queue(
            self.shared.keys.broadcast_channel.clone(),
            None,
            message_from(from, after, Some(user), true, body),
        )
    }

    /// Queues a message for `user`, linked on node `to`. Never blocks; sent on the same connection as broadcasts, so
    /// it keeps its place among this node's messages.
    pub fn publish_send(&self, from: &NodeLease, to: &str, after: u64, user: &str, body: Bytes) -> Result<()> {
        check_name(to)?;
        self.queue(
            self.shared.keys.node_channel(to),
            Some(to.to_owned()),
            message_from(from, after, Some(user), false, body),
        )
    }

    fn queue(&self, channel: String, to: Option<String>, message: NodeMessage) -> Result<()> {
        let outgoing = Outgoing { channel, to, message };
        let size = outgoing.size();
        let budget = self.shared.options.publish_budget as u64;
        // Taken before it is queued, given back by the publisher once Redis has it (or it is dropped).
        let within_budget = self
            .shared
            .publish_queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued == 0 || queued + size <= budget).then_some(queued + size)
            })
            .is_ok();
        if !within_budget {
            Counters::add(&self.shared.counters.publish_queue_full, 1);
            return Err(Error::QueueFull);
        }
        let refused = match self.outgoing.try_send(outgoing) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Counters::add(&self.shared.counters.publish_queue_full, 1);
                Error::QueueFull
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Error::Closed,
        };
        self.shared.publish_queued.fetch_sub(size, Ordering::AcqRel);
        Err(refused)
    }

    /// A handle for synchronous callers (the core's membership path), on its own blocking connection: see
    /// [`Blocking`]. Connects on first use.
    pub fn blocking(&self) -> Blocking {
        Blocking::new(self.shared.clone())
    }

    /// Sets the grace period the reaper applies (see `ServerBuilder::grace_period`): a node passes its server's.
    pub(crate) fn set_grace_period(&self, period: Option<std::time::Duration>) {
        let ms = period.map_or(0, |period| u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1));
        self.shared.grace_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// What went wrong, or was worked around, so far.
    pub fn stats(&self) -> ClusterStats {
        self.shared.stats()
    }
}

pub(crate) fn manager_config(options: &Options) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(options.connect_timeout))
        .set_response_timeout(Some(options.command_timeout))
        // A few quick retries: a command waits for the reconnection, so a long backoff would stall the caller.
        .set_number_of_retries(3)
        .set_min_delay(std::time::Duration::from_millis(20))
        .set_max_delay(options.connect_timeout)
}

pub(crate) async fn manager(shared: &Shared) -> Result<Conn> {
    Conn::connect(shared.endpoint.clone(), manager_config(&shared.options)).await
}

/// How far past a lease's deadline a registration waits before it asks again.
const LAPSE_MARGIN: Duration = Duration::from_millis(50);

/// A [`manager`] made at start, bounded by [`Options::connect_timeout`] as a whole. The manager bounds each attempt
/// (connect and handshake) by it, but retries a failed one three times, with a back-off in between: a port that
/// accepts and never answers held `connect` for four timeouts and the back-offs (8.3 s with the defaults; measured
/// 1.44 s with 300 ms).
async fn first_connection(shared: &Shared) -> Result<Conn> {
    let limit = shared.options.connect_timeout;
    match tokio::time::timeout(limit, manager(shared)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(Error::Redis(error))) => Err(connect_error(&shared.url, error)),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(Error::Connect {
            url: shared.url.clone(),
            reason: format!("no answer within the connect timeout ({limit:?}): is a Redis server listening there?"),
            source: None,
        }),
    }
}

/// A connection failure in words: refused, not a Redis server, or the client's own text.
fn connect_error(url: &str, error: redis::RedisError) -> Error {
    use redis::ErrorKind;
    let reason = if error.is_connection_refusal() {
        "Connection refused".to_owned()
    } else if error.is_timeout() {
        "no answer within the connect timeout: is a Redis server listening there?".to_owned()
    } else {
        match error.kind() {
            ErrorKind::Parse | ErrorKind::UnexpectedReturnType => {
                format!("what answered there is not a Redis server ({error})")
            }
            _ => error.to_string(),
        }
    };
    Error::Connect {
        url: url.to_owned(),
        reason,
        source: Some(error),
    }
}

/// `url` with its password and query (which may carry one) replaced by `***`, for messages and logs: never show a
/// secret. `redis://user:pw@host:6379/0?x=y` reads `redis://user:***@host:6379/0?***`.
pub(crate) fn redacted_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, _)) => (rest, "?***"),
        None => (rest, ""),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        // A lone userinfo may be a password to some clients: hidden too.
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("***@{host}"),
        },
        None => authority.to_owned(),
    };
    let scheme = scheme.map(|scheme| format!("{scheme}://")).unwrap_or_default();
    format!("{scheme}{authority}{path}{query}")
}

/// Sends queued messages in order, pipelining what has piled up. Each message is kept in its origin's window
/// (`XADD <window> MAXLEN ~ <size> <order>-0 m <frame> [t <node it is for>]`) and published, in the same pipeline: a
/// receiver that misses the publish finds it in the window (see `wire::recovery`).
///
/// A batch that fails because its connection dropped (Redis restarted, the connection was killed) is sent once more,
/// on the connection the manager makes anew: the first publish after a Redis restart always finds the old connection
/// dead, and dropping it would lose a message that never reached any Redis. The price is a rare duplicate: if the
/// connection died after Redis ran the batch but before it replied, Redis relays it twice (the window refuses the
/// second `XADD`: its order is there already), and the receivers drop the repeat by its number (see
/// [`NodeMessage::number`]). Any other failure (a timeout, a Redis error) is counted and dropped: its outcome is
/// unknown, and a retry could deliver it after later messages.
async fn publish(mut conn: Conn, mut queue: mpsc::Receiver<Outgoing>, shared: Arc<Shared>) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    // The last number given on each channel, and on all channels together (`order`), per generation of this node.
    let mut numbers: HashMap<(String, u64), u64> = HashMap::new();
    let mut orders: HashMap<u64, u64> = HashMap::new();
    // Each generation's window (its key).
    let mut window_keys: HashMap<u64, String> = HashMap::new();
    let window = shared.options.message_window;
    while queue.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        // A refused XADD must not fail the batch: the publish still goes out (see `window_failures`).
        pipe.ignore_errors();
        let mut windows: Vec<u64> = Vec::new();
        for outgoing in &mut batch {
            let number = numbers
                .entry((outgoing.channel.clone(), outgoing.message.generation))
                .or_default();
            *number += 1;
            outgoing.message.number = *number;
            let order = orders.entry(outgoing.message.generation).or_default();
            *order += 1;
            outgoing.message.order = *order;
            let frame = outgoing.message.encode();
            if window > 0 {
                let generation = outgoing.message.generation;
                let key = window_keys
                    .entry(generation)
                    .or_insert_with(|| shared.keys.window(&outgoing.message.origin, generation));
                let xadd = pipe
                    .cmd("XADD")
                    .arg(key.as_str())
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(window)
                    .arg(format!("{order}-0"))
                    .arg("m")
                    .arg(&frame);
                if let Some(to) = &outgoing.to {
                    xadd.arg("t").arg(to);
                }
                if !windows.contains(&generation) {
                    windows.push(generation);
                }
            }
            pipe.cmd("PUBLISH").arg(&outgoing.channel).arg(frame).ignore();
        }
        for generation in windows {
            if let Some(key) = window_keys.get(&generation) {
                pipe.cmd("PEXPIRE")
                    .arg(key.as_str())
                    .arg(WINDOW_IDLE_EXPIRY_MS)
                    .ignore();
            }
        }
        let count = batch.len() as u64;
        let bytes: u64 = batch.iter().map(Outgoing::size).sum();
        let mut sent = pipe.query_async::<Vec<Value>>(&mut conn).await;
        let mut retried = false;
        if sent.as_ref().is_err_and(redis::RedisError::is_connection_dropped) {
            Counters::add(&shared.counters.publish_retries, count);
            tracing::info!(
                cluster = shared.name,
                count,
                "the publishing connection dropped: sending again"
            );
            retried = true;
            sent = pipe.query_async::<Vec<Value>>(&mut conn).await;
        }
        match sent {
            Ok(replies) => {
                Counters::add(&shared.counters.published, count);
                // After a retry, a refused XADD is the first attempt's message already kept: not a failure.
                let unkept = replies
                    .iter()
                    .filter(|reply| matches!(reply, Value::ServerError(_)))
                    .count() as u64;
                if unkept > 0 && !retried {
                    Counters::add(&shared.counters.window_failures, unkept);
                    let error = replies.iter().find_map(|reply| match reply {
                        Value::ServerError(error) => Some(format!("{error:?}")),
                        _ => None,
                    });
                    tracing::warn!(
                        cluster = shared.name,
                        unkept,
                        error,
                        "redis did not keep published messages in their window: a receiver that misses them cannot recover them"
                    );
                }
            }
            Err(error) => {
                Counters::add(&shared.counters.publish_failures, count);
                tracing::warn!(cluster = shared.name, %error, lost = count, "publishing to redis failed; messages dropped");
            }
        }
        batch.clear();
        shared.publish_queued.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// How long a message window lives after its last message: long enough for any receiver to come back for it, short
/// enough that the windows of a node id's earlier generations do not pile up.
const WINDOW_IDLE_EXPIRY_MS: u64 = 3_600_000;

/// A message from `from`'s node for the other nodes, numbered later by the publisher in the order it sends: `user` is
/// the recipient, or for a broadcast the user to skip; `keep` marks a message for a user unlinked everywhere.
fn message_from(from: &NodeLease, after: u64, user: Option<&str>, keep: bool, body: Bytes) -> NodeMessage {
    NodeMessage {
        origin: from.node.clone(),
        generation: from.generation,
        number: 0,
        order: 0,
        after,
        user: user.map(str::to_owned),
        keep,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::redacted_url;

    #[test]
    fn a_url_is_shown_without_its_password() {
        assert_eq!(
            redacted_url("redis://:secret@127.0.0.1:6390/0"),
            "redis://:***@127.0.0.1:6390/0"
        );
        assert_eq!(redacted_url("redis://bob:secret@host/2"), "redis://bob:***@host/2");
        assert_eq!(redacted_url("rediss://secret@host"), "rediss://***@host");
        assert_eq!(
            redacted_url("redis://host:6379/0?password=secret"),
            "redis://host:6379/0?***"
        );
        assert_eq!(
            redacted_url("redis+unix:///run/redis.sock?pass=x"),
            "redis+unix:///run/redis.sock?***"
        );
        assert_eq!(redacted_url("redis://127.0.0.1/"), "redis://127.0.0.1/");
    }
}
