//! What the async [`Cluster`](crate::Cluster) and the [`Blocking`](crate::wire::Blocking) handle share: the options, the
//! key names, the epoch, the counters, and each operation as a script call plus the parsing of its reply. The two
//! handles differ only in how they send a call, so they cannot disagree on what a call means.

use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use redis::{Script, ScriptInvocation, Value};

use crate::chain::Chain;
use crate::notified::Notified;
use crate::script::keys::Keys;
use crate::script::parse;
use crate::script::scripts;
use crate::sentinel::Endpoint;
use crate::types::{Change, ClusterSnapshot, Epoch, Error, LogEntry, NodeLease, Refusal, Result};

/// How a cluster handle behaves. Build it from the defaults:
///
/// ```
/// use std::time::Duration;
/// use emitter_redis::Options;
///
/// let options = Options {
///     lease: Duration::from_secs(5),
///     ..Options::default()
/// };
/// assert_eq!(options.log_retention, 100_000);
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a node's lease lasts without renewal, by Redis's clock. A node that has not renewed within it is
    /// fenced, and its users are unlinked by the next reap. [`Cluster::keep_alive`](crate::Cluster::keep_alive)
    /// renews every third of it. Default: 10 s.
    pub lease: Duration,
    /// How often [`Cluster::keep_alive`](crate::Cluster::keep_alive) also reaps dead nodes; `None`: never. A killed
    /// node's users are unlinked at most `lease` + `reap_interval` after its last renewal. Default: 1 s.
    pub reap_interval: Option<Duration>,
    /// The log keeps at least this many of its newest entries (`XADD … MAXLEN ~`: Redis trims whole blocks, so a few
    /// more may stay). A node further behind than that resynchronises from a [`ClusterSnapshot`]. Default: 100,000
    /// (roughly 10 MB of Redis memory at most).
    pub log_retention: u64,
    /// The longest a command may wait for its reply before it fails (and, for a change, its outcome is unknown).
    /// Default: 2 s.
    pub command_timeout: Duration,
    /// The longest a connection attempt may take. Default: 2 s.
    pub connect_timeout: Duration,
    /// How often a [`Notifications`](crate::wire::Notifications) polls the newest seq and pings its connection, so that a
    /// lost notification or a dead connection costs at most this long; with a `redis+sentinel://` URL, also how often
    /// the handle asks the sentinels which server is the primary. Default: 1 s.
    pub poll_interval: Duration,
    /// How many outgoing messages may wait for Redis before `publish_*` refuses with [`Error::QueueFull`].
    /// Default: 65,536.
    pub publish_queue: usize,
    /// How many bytes of outgoing messages (their bodies plus 128 bytes each for the channel and header) may wait for
    /// Redis before `publish_*` refuses with [`Error::QueueFull`]; one message always fits an empty queue.
    /// Default: 64 MiB (see the Limits chapter, "Byte budgets").
    pub publish_budget: usize,
    /// How many of its newest messages to other nodes (broadcasts and sends together) each node keeps in Redis, in
    /// the order it sent them, for receivers that missed some (a dropped subscription, a Redis restart with
    /// persistence) to fetch: one capped stream per node generation, trimmed with `XADD … MAXLEN ~` (whole blocks,
    /// so a few more may stay). A receiver further behind than that counts the rest as lost. A window nobody writes to
    /// expires an hour after its last message (a node id's earlier generations). 0 keeps no window: cross-node
    /// messages are then at most once. Default: 10,000 (see the Capacity chapter for what it costs Redis).
    pub message_window: u64,
    /// How many notifications may wait for the subscriber to take them; past that the subscription stops reading
    /// (Redis buffers, then drops the subscriber; it comes back, and the log and the other nodes' windows fill the
    /// gap). Default: 4,096.
    pub notification_queue: usize,
    /// How many groups of membership changes (a link, a closed connection's unlink, a closing node's unlinks) may
    /// wait for a node's change queue to send them before a change is refused at once
    /// ([`Error::ChangeQueueFull`](crate::Error::ChangeQueueFull)). Default: 4,096.
    pub change_queue: usize,
    /// How long a node refuses membership changes at once ([`Error::BackingOff`](crate::Error::BackingOff)) after
    /// Redis failed a batch of them, rather than queue them behind a Redis that is away. Default: 500 ms.
    pub change_backoff: Duration,
    /// Whether [`Cluster::connect`](crate::Cluster::connect) refuses a cluster name that has no state in the Redis
    /// database yet ([`Error::NoSuchCluster`]) instead of creating it. Set it on every process but the one that
    /// creates the cluster: a typo in the cluster name, or another database number in the URL, then fails at start
    /// instead of silently forming a second cluster. Only [`connect`](crate::Cluster::connect) checks it: once
    /// connected, a node recreates the state Redis lost (a restart without persistence). Default: `false` (create).
    pub require_existing_cluster: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lease: Duration::from_secs(10),
            reap_interval: Some(Duration::from_secs(1)),
            log_retention: 100_000,
            command_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            poll_interval: Duration::from_secs(1),
            publish_queue: 65_536,
            publish_budget: 64 << 20,
            message_window: 10_000,
            notification_queue: 4_096,
            change_queue: 4_096,
            change_backoff: Duration::from_millis(500),
            require_existing_cluster: false,
        }
    }
}

/// Counters of what went wrong, or was worked around, since the handle was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterStats {
    /// Subscriptions (pub/sub connections) that dropped (killed, timed out, Redis restarted).
    pub subscription_drops: u64,
    /// Subscriptions made again after a drop. Each one is followed by a `Subscribed` notification, after which the
    /// subscriber reads the log (the membership changes made meanwhile) and the other nodes' windows (their messages,
    /// see [`ClusterStats::messages_recovered`]).
    pub resubscriptions: u64,
    /// Messages published.
    pub published: u64,
    /// Messages sent a second time because their connection dropped before Redis replied (see
    /// [`Cluster::publish_broadcast`](crate::Cluster::publish_broadcast)).
    pub publish_retries: u64,
    /// Messages lost because Redis failed to take them (a timeout, a Redis error, or a dropped connection twice).
    pub publish_failures: u64,
    /// Messages refused because the outgoing queue was full.
    pub publish_queue_full: u64,
    /// Membership changes sent by the node's change queue (see [`Options::change_queue`]).
    pub changes_sent: u64,
    /// Round trips the node's change queue made to send them: one per batch (a pipeline of script calls).
    pub change_batches: u64,
    /// Membership changes refused at once because the node's change queue was full.
    pub change_queue_full: u64,
    /// Round trips that read the log (a catch-up, a gap filled). A node in step reads none: it applies the entries
    /// the scripts' notifications carry, and reads after a lost notification, a script too big to carry its entries,
    /// or a fall behind.
    pub log_reads: u64,
    /// Membership changes refused at once because Redis had failed a batch a moment before (the back-off).
    pub changes_backed_off: u64,
    /// Frames on a channel that were not this crate's (ignored).
    pub malformed_messages: u64,
    /// Messages from other nodes that never arrived here, told by the gaps in their numbers (see
    /// [`NodeMessage::number`](crate::wire::NodeMessage::number)) that their origin's window
    /// ([`Options::message_window`]) no longer held: published while this node's subscription was away, and trimmed
    /// (or lost with Redis) before it came back.
    pub messages_lost: u64,
    /// Messages from other nodes that did not come through the subscription (published while it was away) and were
    /// fetched from their origin's window instead, each delivered once, in its origin's order.
    pub messages_recovered: u64,
    /// Messages published but not kept in the window (Redis refused the `XADD`: out of memory, say): a receiver
    /// that misses one of them cannot recover it.
    pub window_failures: u64,
    /// Messages from other nodes that arrived twice (a publish sent again after its connection dropped) and were
    /// dropped the second time.
    pub repeats_dropped: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) subscription_drops: AtomicU64,
    pub(crate) resubscriptions: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) publish_retries: AtomicU64,
    pub(crate) publish_failures: AtomicU64,
    pub(crate) publish_queue_full: AtomicU64,
    pub(crate) changes_sent: AtomicU64,
    pub(crate) change_batches: AtomicU64,
    pub(crate) change_queue_full: AtomicU64,
    pub(crate) log_reads: AtomicU64,
    pub(crate) changes_backed_off: AtomicU64,
    pub(crate) malformed_messages: AtomicU64,
    pub(crate) messages_lost: AtomicU64,
    pub(crate) messages_recovered: AtomicU64,
    pub(crate) window_failures: AtomicU64,
    pub(crate) repeats_dropped: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ClusterStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ClusterStats {
            subscription_drops: get(&self.subscription_drops),
            resubscriptions: get(&self.resubscriptions),
            published: get(&self.published),
            publish_retries: get(&self.publish_retries),
            publish_failures: get(&self.publish_failures),
            publish_queue_full: get(&self.publish_queue_full),
            changes_sent: get(&self.changes_sent),
            change_batches: get(&self.change_batches),
            change_queue_full: get(&self.change_queue_full),
            log_reads: get(&self.log_reads),
            changes_backed_off: get(&self.changes_backed_off),
            malformed_messages: get(&self.malformed_messages),
            messages_lost: get(&self.messages_lost),
            messages_recovered: get(&self.messages_recovered),
            window_failures: get(&self.window_failures),
            repeats_dropped: get(&self.repeats_dropped),
        }
    }
}

/// One script call: which script, its ARGV, and the user it is about (to word a refusal).
pub(crate) struct Call {
    script: &'static Script,
    args: Vec<String>,
    pub(crate) user: String,
}

impl Call {
    fn new(script: &'static Script, args: Vec<String>) -> Call {
        Call {
            script,
            args,
            user: String::new(),
        }
    }

    /// The epoch the call was made in: every script but `open` takes it first.
    pub(crate) fn epoch(&self) -> &str {
        self.args.first().map_or("", String::as_str)
    }

    /// The call as one `EVALSHA`, for a pipeline (the script must be loaded: see [`Call::load`]).
    pub(crate) fn evalsha(&self, keys: &Keys) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        let all = keys.all();
        cmd.arg(self.script.get_hash()).arg(all.len());
        for key in all {
            cmd.arg(key);
        }
        for arg in &self.args {
            cmd.arg(arg);
        }
        cmd
    }

    /// Loads the call's script into Redis (`SCRIPT LOAD`), for [`Call::evalsha`].
    pub(crate) async fn load(&self, conn: &mut impl redis::aio::ConnectionLike) -> redis::RedisResult<String> {
        self.script.load_async(conn).await
    }

    pub(crate) fn invocation(&self, keys: &Keys) -> ScriptInvocation<'static> {
        let mut invocation = self.script.prepare_invoke();
        for key in keys.all() {
            invocation.key(key);
        }
        for arg in &self.args {
            invocation.arg(arg);
        }
        invocation
    }
}

/// A change as the submit scripts take it: kind, user, connection, flag.
fn change_fields(change: &Change) -> [String; 4] {
    let flag = |on: bool| if on { "1" } else { "0" }.to_owned();
    let (kind, user, connection, flag) = match change {
        Change::Join { user } => ("join", user, String::new(), String::new()),
        Change::Link {
            user,
            connection,
            accept_new_users,
            replace,
        } => (
            "link",
            user,
            connection.to_string(),
            flag(*accept_new_users) + &flag(*replace),
        ),
        Change::Unlink { user, only } => (
            "unlink",
            user,
            only.map(|c| c.to_string()).unwrap_or_default(),
            flag(only.is_some()),
        ),
        Change::Leave { user, only } => (
            "leave",
            user,
            only.map(|c| c.to_string()).unwrap_or_default(),
            flag(only.is_some()),
        ),
    };
    [kind.to_owned(), user.clone(), connection, flag]
}

/// How many log entries one read script returns at most; a longer catch-up takes several.
pub(crate) const READ_BATCH: u64 = 1_000;

pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) keys: Keys,
    pub(crate) options: Options,
    /// The Redis to talk to: a fixed address, or the primary Sentinel names (see [`crate::sentinel`]).
    pub(crate) endpoint: Arc<Endpoint>,
    epoch: Mutex<Epoch>,
    pub(crate) counters: Counters,
    /// The grace period of the server this handle serves as a node, in ms (0: none); the reaper applies it.
    pub(crate) grace_ms: AtomicU64,
    /// The bytes of the outgoing messages waiting for Redis, bounded by [`Options::publish_budget`].
    pub(crate) publish_queued: AtomicU64,
    /// The log's hash chain as this handle has read it: every entry read is checked against it.
    pub(crate) chain: Chain,
    /// The newest entries the scripts' notifications carried, for the node to apply without a read.
    pub(crate) notified: Notified,
    /// This handle's random token, written with its node's lease: a registration tells its own lease (taken over at
    /// once) from another process's (refused while alive).
    pub(crate) instance: String,
    /// The Redis URL without its password, for messages and logs.
    pub(crate) url: String,
}

impl Shared {
    pub(crate) fn new(name: &str, options: Options, endpoint: Arc<Endpoint>, url: String) -> Shared {
        Shared {
            notified: Notified::new(options.log_retention),
            instance: random_epoch(),
            url,
            name: name.to_owned(),
            keys: Keys::new(name),
            options,
            endpoint,
            epoch: Mutex::new(Epoch(String::new())),
            counters: Counters::default(),
            grace_ms: AtomicU64::new(0),
            publish_queued: AtomicU64::new(0),
            chain: Chain::default(),
        }
    }

    pub(crate) fn epoch(&self) -> Epoch {
        self.epoch.lock().clone()
    }

    pub(crate) fn stats(&self) -> ClusterStats {
        self.counters.snapshot()
    }

    fn change_args(&self, epoch: &Epoch, node: &str) -> Vec<String> {
        vec![
            epoch.0.clone(),
            self.options.log_retention.max(1).to_string(),
            self.keys.seq_channel.clone(),
            node.to_owned(),
        ]
    }

    /// `create`: whether to create the cluster state when there is none.
    pub(crate) fn open_call(&self, create: bool) -> Call {
        Call::new(
            &scripts::OPEN_SCRIPT,
            vec![random_epoch(), if create { "1" } else { "0" }.to_owned()],
        )
    }

    /// The database number the handle's URL names.
    pub(crate) fn db(&self) -> i64 {
        self.endpoint.client().get_connection_info().redis_settings().db()
    }

    /// Adopts the epoch an `open` call returned.
    pub(crate) fn open_result(&self, value: Value) -> Result<Epoch> {
        let Value::Array(items) = value else {
            return Err(parse::malformed("open: not an array"));
        };
        let (Some(epoch), Some(created)) = (items.first(), items.get(1)) else {
            return Err(parse::malformed("open: too short"));
        };
        let created = parse::number(created)?;
        if created == 2 {
            return Err(Error::NoSuchCluster {
                cluster: self.name.clone(),
                url: self.url.clone(),
                db: self.db(),
            });
        }
        let epoch = Epoch(parse::text(epoch)?);
        if created == 1 {
            tracing::warn!(
                cluster = self.name,
                db = self.db(),
                url = self.url,
                %epoch,
                "created a new cluster state: no node of this cluster name had state in this Redis database. \
                 If other nodes already serve, check the cluster name and the database number in the URL: \
                 a typo forms a second, separate cluster (Options::require_existing_cluster refuses instead)"
            );
        } else {
            tracing::debug!(cluster = self.name, %epoch, "joined the cluster state");
        }
        let previous = std::mem::replace(&mut *self.epoch.lock(), epoch.clone());
        if !previous.0.is_empty() && previous != epoch {
            tracing::warn!(cluster = self.name, %previous, %epoch, "the cluster epoch changed");
        }
        Ok(epoch)
    }

    pub(crate) fn submit_call(&self, lease: &NodeLease, change: &Change) -> Call {
        let mut args = self.change_args(&lease.epoch, &lease.node);
        args.push(lease.generation.to_string());
        args.extend(change_fields(change));
        let mut call = Call::new(&scripts::SUBMIT_SCRIPT, args);
        call.user = change.user().to_owned();
        call
    }

    /// Several changes of `lease`'s node in one script call (see [`Shared::submit_many_result`]).
    pub(crate) fn submit_many_call<'a>(&self, lease: &NodeLease, changes: impl Iterator<Item = &'a Change>) -> Call {
        let mut args = self.change_args(&lease.epoch, &lease.node);
        args.push(lease.generation.to_string());
        for change in changes {
            args.extend(change_fields(change));
        }
        Call::new(&scripts::SUBMIT_MANY_SCRIPT, args)
    }

    /// The answers to a [`Shared::submit_many_call`], one per change (`users` are theirs, in order, to word the
    /// refusals), or one error for all.
    pub(crate) fn submit_many_result(
        &self,
        epoch: &str,
        value: Value,
        users: &[&str],
    ) -> Result<Vec<Result<Vec<LogEntry>>>> {
        let items = parse::array(value)?;
        let status = items.first().map(parse::text).transpose()?;
        if status.as_deref() != Some("batch") {
            // One refusal for all: the epoch changed.
            let refused = parse::done(Value::Array(items), "").map(|_| ());
            return Err(refused
                .err()
                .unwrap_or_else(|| Error::Malformed("a batch reply without its answers".into())));
        }
        if items.len() != users.len() + 2 {
            return Err(Error::Malformed(format!(
                "{} answers to a batch of {} changes",
                items.len().saturating_sub(2),
                users.len()
            )));
        }
        let mut items = items.into_iter().skip(1);
        let appended = items
            .next()
            .map(|json| parse::text(&json))
            .transpose()?
            .unwrap_or_default();
        let appended = parse::entry_lists(&appended)?;
        Ok(items
            .zip(users)
            .map(|(reply, user)| {
                let (_, place) = parse::done(reply, user)?;
                let (first, count) = match &place[..] {
                    [first, count] => (parse::number(first)?, parse::number(count)?),
                    _ => return Err(parse::malformed("a change's answer without its entries' place")),
                };
                let entries = usize::try_from(first)
                    .ok()
                    .zip(usize::try_from(count).ok())
                    .and_then(|(first, count)| appended.get(first..first.checked_add(count)?))
                    .ok_or_else(|| parse::malformed("a change's entries outside the batch's"))?;
                self.chained(epoch, entries.to_vec())
            })
            .collect())
    }

    pub(crate) fn entries_result(&self, call: &Call, value: Value) -> Result<Vec<LogEntry>> {
        let (_, items) = parse::done(value, &call.user)?;
        self.chained(call.epoch(), items)
    }

    /// The entries a lease's own script (register, renew, release, reap) appended. They are checked against the hash
    /// chain like any read (a fork found is reported, for the node to rebuild), but returned whatever the check says:
    /// the script did what it did, and a node that must rebuild registers again first, which must not fail for it.
    pub(crate) fn housekeeping_result(&self, call: &Call, value: Value) -> Result<Vec<LogEntry>> {
        let (_, items) = parse::done(value, &call.user)?;
        self.recorded(call.epoch(), items)
    }

    /// Entries checked against the hash chain and remembered, but returned even where they break it (reported).
    fn recorded(&self, epoch: &str, items: Vec<Value>) -> Result<Vec<LogEntry>> {
        let parsed = parse::entries(items)?;
        let links = parsed
            .iter()
            .filter_map(|(entry, link)| link.map(|link| (entry.seq, link)));
        let _ = self.chain.check(epoch, links);
        Ok(parsed.into_iter().map(|(entry, _)| entry).collect())
    }

    /// The entries a script's notification carried (`fields`: a JSON array of their field lists), checked against the
    /// hash chain as a read's are, and kept for the node to apply without reading them (see
    /// [`crate::notified`]). Entries that cannot be read or break the chain are not kept: the node reads the
    /// log, which says what it must.
    pub(crate) fn take_notified(&self, epoch: &str, fields: &str) {
        let Ok(items) = parse::entry_lists(fields) else {
            Counters::add(&self.counters.malformed_messages, 1);
            return;
        };
        if let Ok(entries) = self.chained(epoch, items) {
            self.notified.put(epoch, entries);
        }
    }

    /// The entries after `seq` that notifications carried, when they hold the one right after it and no fork waits
    /// for its rebuild; `None`: read the log.
    pub(crate) fn notified_after(&self, seq: u64) -> Option<Vec<LogEntry>> {
        if self.chain.pending() {
            return None;
        }
        self.notified.after(self.epoch().as_str(), seq)
    }

    /// Log entries read in `epoch`, checked against the hash chain this handle has seen (see [`crate::chain`]): a
    /// break is [`Error::Forked`], and none of them is returned.
    fn chained(&self, epoch: &str, items: Vec<Value>) -> Result<Vec<LogEntry>> {
        let parsed = parse::entries(items)?;
        let links = parsed
            .iter()
            .filter_map(|(entry, link)| link.map(|link| (entry.seq, link)));
        self.chain
            .check(epoch, links)
            .map_err(|fork| Error::Forked { seq: fork.seq })?;
        Ok(parsed.into_iter().map(|(entry, _)| entry).collect())
    }

    pub(crate) fn register_call(&self, node: &str) -> Call {
        let mut args = self.change_args(&self.epoch(), node);
        args.push(millis(self.options.lease).to_string());
        args.push(self.instance.clone());
        Call::new(&scripts::REGISTER_SCRIPT, args)
    }

    pub(crate) fn register_result(&self, call: &Call, node: &str, value: Value) -> Result<NodeLease> {
        let (generation, items) = parse::done(value, &call.user)?;
        let lease = NodeLease {
            node: node.to_owned(),
            generation: parse::parse_u64(&generation)?,
            // The epoch the call was made with: the script checked it.
            epoch: Epoch(call.args.first().cloned().unwrap_or_default()),
        };
        // A fork is reported; the registration stands (a node rebuilding after one registers first).
        let unlinked = self.recorded(call.epoch(), items)?.len();
        tracing::info!(
            cluster = self.name,
            node,
            generation = lease.generation,
            unlinked,
            "node registered"
        );
        Ok(lease)
    }

    pub(crate) fn renew_call(&self, lease: &NodeLease) -> Call {
        let mut args = self.change_args(&lease.epoch, &lease.node);
        args.push(lease.generation.to_string());
        args.push(millis(self.options.lease).to_string());
        args.push(self.instance.clone());
        Call::new(&scripts::RENEW_SCRIPT, args)
    }

    pub(crate) fn release_call(&self, lease: &NodeLease) -> Call {
        let mut args = self.change_args(&lease.epoch, &lease.node);
        args.push(lease.generation.to_string());
        Call::new(&scripts::RELEASE_SCRIPT, args)
    }

    pub(crate) fn reap_call(&self, by: &str) -> Call {
        let mut args = self.change_args(&self.epoch(), by);
        args.push(self.grace_ms.load(Ordering::Relaxed).to_string());
        Call::new(&scripts::REAP_SCRIPT, args)
    }

    /// One read of the log: up to [`READ_BATCH`] entries from seq `from` on, with the epoch and the newest seq, as
    /// one transaction (`MULTI`: `GET epoch`, `GET seq`, `XRANGE`). No script: Redis writes the entries straight to
    /// the socket, where a script would copy each of them into Lua and back (half of what a read cost Redis).
    pub(crate) fn read_pipe(&self, from: u64) -> redis::Pipeline {
        Counters::add(&self.counters.log_reads, 1);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("GET")
            .arg(self.keys.epoch())
            .cmd("GET")
            .arg(self.keys.seq())
            .cmd("XRANGE")
            .arg(self.keys.log())
            .arg(format!("{from}-0"))
            .arg("+")
            .arg("COUNT")
            .arg(READ_BATCH);
        pipe
    }

    /// Takes one read's reply (of a [`Shared::read_pipe`] in `epoch`) into a catch-up. A head behind what the caller
    /// had applied means Redis lost writes without losing its epoch: a fork, reported as one (the caller gets
    /// [`Error::Ahead`]).
    pub(crate) fn read_into(&self, catchup: &mut Catchup, epoch: &Epoch, value: Value) -> Result<()> {
        let mut replies = parse::array(value)?.into_iter();
        let (Some(current), Some(head), Some(stream)) = (replies.next(), replies.next(), replies.next()) else {
            return Err(parse::malformed("a read with fewer than three replies"));
        };
        let current = match current {
            Value::Nil => None,
            value => Some(parse::text(&value)?),
        };
        if current.as_deref() != Some(epoch.as_str()) {
            return Err(Error::Refused(Refusal::EpochChanged {
                current: current.map(Epoch),
            }));
        }
        let head = match head {
            Value::Nil => 0,
            value => parse::number(&value)?,
        };
        // XRANGE: `[id, [field, value, …]]` per entry; the fields are what the scripts wrote.
        let items = parse::array(stream)?
            .into_iter()
            .map(|item| {
                let mut parts = parse::array(item)?.into_iter();
                parts
                    .nth(1)
                    .ok_or_else(|| parse::malformed("a log entry without its fields"))
            })
            .collect::<Result<Vec<Value>>>()?;
        let batch = self.chained(epoch.as_str(), items)?;
        catchup.take(head, batch).inspect_err(|error| {
            if let Error::Ahead { after, .. } = error {
                self.chain.report(crate::chain::Fork { seq: *after });
            }
        })
    }

    pub(crate) fn snapshot_call(&self, epoch: &Epoch) -> Call {
        Call::new(&scripts::SNAPSHOT_SCRIPT, vec![epoch.0.clone()])
    }

    /// A snapshot read: the chain starts again from it (what was read before may be a history Redis lost).
    pub(crate) fn snapshot_result(&self, epoch: Epoch, value: Value) -> Result<ClusterSnapshot> {
        let (seq, items) = parse::done(value, "")?;
        let seq = parse::parse_u64(&seq)?;
        let hash = parse::hash_of(&items.first().map(parse::text).transpose()?.unwrap_or_default())?;
        let mut users = Vec::with_capacity(items.len() / 2);
        let mut pairs = items.iter().skip(1);
        while let (Some(name), Some(record)) = (pairs.next(), pairs.next()) {
            users.push(parse::record(parse::text(name)?, &parse::text(record)?)?);
        }
        // Join order: every user joined with a seq of its own, and the record keeps it.
        users.sort_unstable_by_key(|user| user.joined);
        self.chain.start(epoch.as_str(), seq, hash);
        self.notified.clear();
        Ok(ClusterSnapshot {
            epoch,
            seq,
            hash,
            users,
        })
    }

    /// `MGET epoch seq head`: the epoch in Redis (if any), the newest seq and its entry's hash.
    pub(crate) fn head_cmd(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(self.keys.epoch()).arg(self.keys.seq()).arg(self.keys.head());
        cmd
    }

    /// The newest entry's hash from a [`Shared::head_cmd`] reply, if there is one.
    pub(crate) fn head_hash(value: &Value) -> Option<u64> {
        let Value::Array(items) = value else {
            return None;
        };
        crate::chain::parse_hash(&parse::text(items.get(2)?).ok()?)
    }

    pub(crate) fn head_result(value: Value) -> Result<(Option<Epoch>, u64)> {
        let Value::Array(items) = value else {
            return Err(parse::malformed("MGET: not an array"));
        };
        let optional = |value: Option<&Value>| match value {
            None | Some(Value::Nil) => Ok(None),
            Some(value) => parse::text(value).map(Some),
        };
        let epoch = optional(items.first())?.map(Epoch);
        let seq = optional(items.get(1))?
            .map(|seq| parse::parse_u64(&seq))
            .transpose()?
            .unwrap_or(0);
        Ok((epoch, seq))
    }
}

/// Reading the log after a seq, batch by batch: checks that the entries continue exactly where the caller is, so that
/// a trimmed log or a Redis that lost writes is noticed rather than skipped over.
pub(crate) struct Catchup {
    after: u64,
    /// The newest seq when the first batch was read: the catch-up ends there (newer entries are kept if they came
    /// along, but not waited for).
    target: Option<u64>,
    pub(crate) entries: Vec<LogEntry>,
}

impl Catchup {
    pub(crate) fn new(after: u64) -> Catchup {
        Catchup {
            after,
            target: None,
            entries: Vec::new(),
        }
    }

    fn last(&self) -> u64 {
        self.entries.last().map_or(self.after, |entry| entry.seq)
    }

    /// The seq to read from next, or `None` when done.
    pub(crate) fn next_from(&self) -> Option<u64> {
        match self.target {
            Some(target) if self.last() >= target => None,
            _ => Some(self.last() + 1),
        }
    }

    /// Takes one batch read from [`Catchup::next_from`].
    pub(crate) fn take(&mut self, head: u64, batch: Vec<LogEntry>) -> Result<()> {
        let last = self.last();
        if head < last {
            return Err(Error::Ahead { after: last, head });
        }
        let target = *self.target.get_or_insert(head);
        if last >= target {
            return Ok(());
        }
        if batch.first().is_none_or(|entry| entry.seq != last + 1) {
            return Err(Error::Trimmed { after: last, head });
        }
        for entry in batch {
            let expected = self.last() + 1;
            if entry.seq != expected {
                return Err(parse::malformed(&format!(
                    "log entry {} where {expected} was due",
                    entry.seq
                )));
            }
            self.entries.push(entry);
        }
        Ok(())
    }
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// 128 random bits as hex, from the standard library's per-process random hasher keys, the clock and the pid. It
/// only has to be unique, not secret.
fn random_epoch() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let mut epoch = String::with_capacity(32);
    for half in 0..2u8 {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u8(half);
        hasher.write_u128(nanos);
        hasher.write_u32(std::process::id());
        let _ = write!(epoch, "{:016x}", hasher.finish());
    }
    epoch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::LogEvent;

    fn joined(seq: u64) -> LogEntry {
        LogEntry {
            seq,
            event: LogEvent::Joined {
                user: format!("u{seq}"),
            },
            by: "n".into(),
        }
    }

    #[test]
    fn a_catchup_ends_at_the_head_it_first_saw() {
        let mut catchup = Catchup::new(3);
        assert_eq!(catchup.next_from(), Some(4));
        catchup.take(5, vec![joined(4), joined(5)]).unwrap();
        assert_eq!(catchup.next_from(), None);
        assert_eq!(catchup.entries.len(), 2);
    }

    #[test]
    fn nothing_to_read_is_not_a_gap() {
        let mut catchup = Catchup::new(7);
        catchup.take(7, vec![]).unwrap();
        assert_eq!(catchup.next_from(), None);
    }

    #[test]
    fn a_trimmed_log_or_a_redis_behind_the_caller_needs_a_snapshot() {
        let error = Catchup::new(3).take(9, vec![joined(6), joined(7)]).unwrap_err();
        assert!(matches!(error, Error::Trimmed { after: 3, head: 9 }) && error.needs_snapshot());
        let error = Catchup::new(3).take(9, vec![]).unwrap_err();
        assert!(matches!(error, Error::Trimmed { .. }));
        let error = Catchup::new(10).take(9, vec![]).unwrap_err();
        assert!(matches!(error, Error::Ahead { after: 10, head: 9 }) && error.needs_snapshot());
    }

    #[test]
    fn epochs_differ() {
        let (a, b) = (random_epoch(), random_epoch());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
