//! A server as a node of a cluster on Redis: the [`Sequencer`] the core submits its membership changes to, and the
//! task that keeps the node in step (applies what other nodes ordered, delivers their messages, keeps the lease, and
//! rebuilds from a snapshot when it fell behind the log, starts over when it lost its lease or the cluster its state).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use emitter_core::cluster::{Change, LinkAddr, LogEntry, Refused, Sequencer, Submission};
use emitter_core::cluster::{ClusterCounts, ClusterHost};
use emitter_core::protocol::{Frame, Rejection};
use emitter_core::{Error as CoreError, Server};
use parking_lot::RwLock;
use tokio::task::JoinHandle;

use crate::changes::ChangeQueue;
use crate::cluster::{manager, Cluster};
use crate::lease::{KeepAlive, LeaseClock, LeaseLost, Reports};
use crate::types::{check_name, ClusterSnapshot, Error, NodeLease, Refusal, Result};
use crate::wire::blocking::Blocking;
use crate::wire::messages::NodeMessage;
use crate::wire::subscribe::{Notification, Notifications};

/// What the node's place in the log needs (`RedisSequencer::needs_snapshot`): nothing, a rebuild from a snapshot
/// that keeps its connections, or a start over that closes them.
const IN_STEP: u8 = 0;
const REBUILD: u8 = 1;
const START_OVER: u8 = 2;

/// The longest a node waits between attempts to get its place back (register, snapshot) while Redis is away.
const MAX_RETRY: Duration = Duration::from_secs(2);

/// A [`Server`] serving as one node of a cluster on Redis.
///
/// [`Node::start`] makes the server a node before it listens: from then on its membership changes are decided by
/// Redis against the whole cluster, its `users()` are the cluster's, and its sends and broadcasts reach users linked
/// on any node. The node keeps itself in step on a task of its own until the server closes; dropping the handle does
/// not stop it.
///
/// ```no_run
/// use emitter_redis::{Cluster, Node, Options};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let server = emitter_core::Server::new();
/// server.on_link(|u| {
///     // Runs once, on the node the user linked on; the broadcast reaches every node's users.
///     let _ = u.server().broadcast_payload("chat/hello", &u, Some(u.username()));
/// });
/// let cluster = Cluster::connect("redis://127.0.0.1/", "chat", Options::default()).await?;
/// let node = Node::start(&server, cluster, "node-a").await?;
/// emitter_axum::listen(&server, "0.0.0.0:8082").await?;
/// node.stopped().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Node {
    id: String,
    cluster: Cluster,
    task: JoinHandle<()>,
}

impl Node {
    /// Makes `server` the node `id` of `cluster`: registers the node (a new lease; users an earlier process with this
    /// id left linked are unlinked), loads the cluster's users into the server, and starts the task that keeps it in
    /// step. Call it before the server listens.
    ///
    /// Fails when `id` is not a valid name ([`is_valid_name`](crate::is_valid_name)), Redis cannot be reached, or the
    /// server is listening already or is a node already.
    pub async fn start(server: &Server, cluster: Cluster, id: &str) -> Result<Node> {
        check_name(id)?;
        cluster.set_grace_period(server.config().grace_period());
        let clock = LeaseClock::new();
        let sent = Instant::now();
        let lease = cluster.register_node(id).await?;
        let token = clock.install(sent, cluster.options().lease);
        // Subscribed, with Redis's confirmation, before the snapshot: whatever happens after the snapshot is notified.
        // So this first `Subscribed` asks for no catch-up (only a resubscription does), and a node starts in step.
        let mut notifications = cluster.subscribe(id).await?;
        subscribed(&mut notifications, cluster.options()).await?;
        let snapshot = cluster.snapshot().await?;
        let sequencer = Arc::new(RedisSequencer {
            node: id.to_owned(),
            lease: RwLock::new(lease.clone()),
            blocking: cluster.blocking(),
            changes: ChangeQueue::start(cluster.shared.clone(), manager(&cluster.shared).await?),
            cluster: cluster.clone(),
            needs_snapshot: AtomicU8::new(IN_STEP),
            lease_lost: AtomicBool::new(false),
            clock: clock.clone(),
        });
        let host = ClusterHost::of(server);
        let (seq, users) = seed(snapshot);
        host.install(sequencer.clone(), seq, users)
            .map_err(|error| Error::Malformed(format!("cannot make this server a node: {error}")))?;
        let shared = cluster.shared.clone();
        host.set_counts(move || {
            let stats = shared.stats();
            ClusterCounts::new(stats.messages_lost, stats.repeats_dropped)
                .with_catch_ups(stats.resubscriptions)
                .with_forks(shared.chain.forks())
        });
        tracing::info!(
            cluster = cluster.name(),
            node = id,
            generation = lease.generation(),
            seq,
            "node started"
        );
        let keeper = Keeper {
            server: server.clone(),
            alive: keep_alive(&cluster, &host, &sequencer, lease, (clock, token)),
            host,
            cluster: cluster.clone(),
            sequencer,
            notifications,
        };
        let task = tokio::spawn(keeper.run());
        Ok(Node {
            id: id.to_owned(),
            cluster,
            task,
        })
    }

    /// The node's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The cluster handle the node uses (for its [`stats`](Cluster::stats), say).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Resolves once the node stopped: the server closed and the node released its lease (or failed to; then it
    /// expires).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Waits for the first notification of a new subscription, `Subscribed`: Redis confirmed it. Bounded by a few of the
/// subscription's own attempts (each within [`Options::connect_timeout`](crate::Options::connect_timeout) and
/// [`Options::command_timeout`](crate::Options::command_timeout)), so that a node does not start blind to the others.
async fn subscribed(notifications: &mut Notifications, options: &crate::Options) -> Result<()> {
    let limit = (options.connect_timeout + options.command_timeout) * 2;
    match tokio::time::timeout(limit, notifications.next()).await {
        Ok(Some(Notification::Subscribed { .. })) => Ok(()),
        // A subscription says `Subscribed` before anything else (`wire::subscribe`).
        Ok(Some(other)) => Err(Error::Malformed(format!(
            "a new subscription's first notification was not its confirmation: {other:?}"
        ))),
        Ok(None) => Err(Error::Closed),
        Err(_) => Err(Error::Redis(redis::RedisError::from((
            redis::ErrorKind::Io,
            "subscribing to the cluster's notifications timed out",
        )))),
    }
}

/// Keeps the node's lease, telling the server of every renewal (its health and `krmx_cluster_lease_age_seconds`),
/// and stopping the node's serving the moment the lease is lost: changes refused, health 503, connections closed. That
/// is not left to the keeper's task, which may be waiting on Redis (a catch-up caught in the same stall).
fn keep_alive(
    cluster: &Cluster,
    host: &ClusterHost,
    sequencer: &Arc<RedisSequencer>,
    lease: NodeLease,
    clock: (Arc<LeaseClock>, u64),
) -> KeepAlive {
    let renewed = host.clone();
    let (lost, sequencer) = (host.clone(), sequencer.clone());
    let reports = Reports {
        renewed: Box::new(move |round_trip| renewed.lease_renewed(round_trip)),
        lost: Box::new(move || {
            sequencer.lease_lost.store(true, Ordering::SeqCst);
            lost.lease_lost();
            lost.close_connections();
        }),
    };
    cluster.keep_alive_reporting(lease, reports, clock)
}

/// The users of a snapshot, as the core seeds them.
fn seed(snapshot: ClusterSnapshot) -> (u64, Vec<(String, Option<LinkAddr>)>) {
    let users = snapshot.users.into_iter().map(|user| (user.name, user.link)).collect();
    (snapshot.seq, users)
}

/// The core's sequencer, on Redis: every change the core makes on a runtime goes through the node's change queue
/// (batched, never blocks); the blocking handle serves the reads that fill a gap (on a blocking thread) and the
/// changes of a caller without a runtime; messages go through the cluster's publish queue (never blocks).
struct RedisSequencer {
    node: String,
    /// The node's current lease; replaced when the node registers again.
    lease: RwLock<NodeLease>,
    blocking: Blocking,
    changes: ChangeQueue,
    cluster: Cluster,
    /// Set when the log could not continue from where the node is: [`REBUILD`] when the entries it missed were
    /// trimmed (it rebuilds from a snapshot, keeping its connections), [`START_OVER`] when the log is not the one it
    /// followed (Redis lost writes or its state: it starts over).
    needs_snapshot: AtomicU8,
    /// Set while the node has given up its lease and not yet registered again: changes are refused at once rather
    /// than sent with a lease Redis fences (when it answers at all: a paused Redis would hold every closing
    /// connection's unlink, and the thread it runs on, until it wakes).
    lease_lost: AtomicBool,
    /// Until when the lease is valid by this node's clock: the core asks it for every message.
    clock: Arc<LeaseClock>,
}

impl Sequencer for RedisSequencer {
    fn node(&self) -> &str {
        &self.node
    }

    fn owns(&self, link: &LinkAddr) -> bool {
        self.lease.read().owns(link)
    }

    fn lease_valid(&self) -> bool {
        self.clock.is_valid() && !self.lease_lost.load(Ordering::SeqCst)
    }

    fn submit(&self, change: Change) -> std::result::Result<Vec<LogEntry>, Refused> {
        if self.lease_lost.load(Ordering::SeqCst) {
            return Err(Refused::Unavailable(Refusal::Fenced.to_string()));
        }
        let lease = self.lease.read().clone();
        self.blocking.submit(&lease, change).map_err(refused)
    }

    fn submit_async(&self, changes: Vec<Change>) -> Vec<Submission> {
        if self.lease_lost.load(Ordering::SeqCst) {
            let fenced = || {
                Box::pin(std::future::ready(Err(Refused::Unavailable(
                    Refusal::Fenced.to_string(),
                ))))
            };
            return changes.iter().map(|_| fenced() as Submission).collect();
        }
        let lease = self.lease.read().clone();
        self.changes
            .submit(&lease, changes)
            .into_iter()
            .map(|answer| Box::pin(async move { answer.wait().await.map_err(refused) }) as Submission)
            .collect()
    }

    fn entries_after(&self, seq: u64) -> std::result::Result<Vec<LogEntry>, String> {
        // What the notifications carried, when they hold what comes next: no read.
        if let Some(entries) = self.cluster.shared.notified_after(seq) {
            return Ok(entries);
        }
        self.blocking.entries_after(seq).map_err(|error| {
            match error {
                Error::Trimmed { .. } => self.needs_snapshot.store(REBUILD, Ordering::SeqCst),
                Error::Ahead { .. } | Error::Forked { .. } | Error::Refused(Refusal::EpochChanged { .. }) => {
                    self.needs_snapshot.store(START_OVER, Ordering::SeqCst)
                }
                _ => {}
            }
            error.to_string()
        })
    }

    fn publish_broadcast(&self, after: u64, skip: Option<&str>, frame: &Frame) {
        let lease = self.lease.read();
        if let Err(error) = self
            .cluster
            .publish_broadcast(&lease, after, skip, frame.bytes().clone())
        {
            tracing::warn!(%error, "a broadcast could not be handed to the other nodes");
        }
    }

    fn publish_kept(&self, user: &str, after: u64, frame: &Frame) {
        let lease = self.lease.read();
        if let Err(error) = self.cluster.publish_kept(&lease, after, user, frame.bytes().clone()) {
            tracing::warn!(%error, user, "a message kept for an unlinked user could not be handed to the other nodes");
        }
    }

    fn publish_send(&self, to: &LinkAddr, user: &str, after: u64, frame: &Frame) {
        let lease = self.lease.read();
        if let Err(error) = self
            .cluster
            .publish_send(&lease, &to.node, after, user, frame.bytes().clone())
        {
            tracing::warn!(%error, user, "a message could not be handed to the user's node");
        }
    }
}

/// How a refusal from Redis reads to the core: a link's refusals as the reasons a client gets, a method's as the
/// method's errors, word for word as in one process.
fn refused(error: Error) -> Refused {
    match error {
        Error::Refused(refusal) => match refusal {
            Refusal::AlreadyLinked { user } => Refused::Rejected(Rejection::AlreadyLinked(user)),
            Refusal::NotAcceptingNewUsers => Refused::Rejected(Rejection::NotAcceptingNewUsers),
            Refusal::JoinExistingUser => Refused::Failed(CoreError::JoinExistingUser),
            Refusal::UnlinkUnknownUser => Refused::Failed(CoreError::UnlinkUnknownUser),
            Refusal::UnlinkUnlinkedUser => Refused::Failed(CoreError::UnlinkUnlinkedUser),
            Refusal::KickUnknownUser => Refused::Failed(CoreError::KickUnknownUser),
            // The connection's user was unlinked meanwhile (kicked, linked elsewhere): nothing left to undo.
            Refusal::NotLinkedHere => Refused::Failed(CoreError::UnlinkUnlinkedUser),
            other => Refused::Unavailable(other.to_string()),
        },
        other => Refused::Unavailable(other.to_string()),
    }
}

/// The task that keeps a node in step.
struct Keeper {
    server: Server,
    host: ClusterHost,
    cluster: Cluster,
    sequencer: Arc<RedisSequencer>,
    alive: KeepAlive,
    notifications: Notifications,
}

impl Keeper {
    async fn run(mut self) {
        // Closed, not closing: while the server closes, its own users' unlinks still go through the cluster.
        let closed = self.server.wait_for_close();
        tokio::pin!(closed);
        let shared = self.cluster.shared.clone();
        loop {
            tokio::select! {
                _ = &mut closed => break,
                lost = self.alive.wait_lost() => self.start_over(Some(lost)).await,
                // Found by any read of this node's (a submit's answer, a gap fill, a notification, the keeper's own).
                _ = shared.chain.forked() => if shared.chain.pending() {
                    self.rebuild_after_fork().await;
                },
                // A gap the core could not fill while applying (its read failed): rebuilt or started over, as the
                // failed read said. Not while closing: start_over gives up then, and the request would stand (and
                // spin) until closed.
                () = self.host.resync_needed(), if self.server.status() < emitter_core::Status::Closing => {
                    self.resync().await;
                }
                notification = self.notifications.next() => match notification {
                    None => break,
                    Some(notification) => self.handle(notification).await,
                },
            }
        }
        let lease = self.sequencer.lease.read().clone();
        match self.cluster.release(&lease).await {
            Ok(_) => tracing::info!(node = lease.node(), "node released its lease"),
            Err(error) => tracing::warn!(node = lease.node(), %error, "could not release the lease; it will expire"),
        }
    }

    async fn handle(&mut self, notification: Notification) {
        match notification {
            // A resubscription (the first one is awaited at start): notifications were lost while it was away.
            Notification::Subscribed { .. } => self.catch_up(u64::MAX).await,
            Notification::Seq(seq) if seq > self.host.applied() => self.catch_up(seq).await,
            Notification::Seq(_) => {}
            // A notice the subscriber queued before this node started over (the keep-alive noticed the same restart
            // first) is old news: starting over again would close the connections that just relinked.
            Notification::EpochChanged { .. } if self.in_current_epoch().await => {}
            Notification::EpochChanged { .. } => self.start_over(None).await,
            Notification::Broadcast(message) => self.deliver(message, true).await,
            Notification::Send(message) => self.deliver(message, false).await,
        }
    }

    /// Whether Redis holds the epoch of this node's lease: then the node has started over in it already.
    async fn in_current_epoch(&self) -> bool {
        let leased = self.sequencer.lease.read().epoch().clone();
        matches!(self.cluster.head().await, Ok((Some(epoch), _)) if epoch == leased)
    }

    /// Applies what the other nodes ordered, up to `seq` at least (all there is: `u64::MAX`); starts over when the
    /// log cannot continue from here.
    async fn catch_up(&mut self, seq: u64) {
        // The notifications carried what comes next, up to `seq`: applied here, with no thread hop.
        if let Some(entries) = self.cluster.shared.notified_after(self.host.applied()) {
            if entries.last().is_some_and(|entry| entry.seq >= seq) && self.host.apply_in_step(entries) {
                return;
            }
        }
        let host = self.host.clone();
        let caught_up = tokio::task::spawn_blocking(move || host.catch_up_to(seq)).await;
        match caught_up {
            Ok(Ok(())) => {}
            Ok(Err(error)) => match self.sequencer.needs_snapshot.swap(IN_STEP, Ordering::SeqCst) {
                IN_STEP => tracing::warn!(%error, "could not read the cluster's order; retrying on the next notice"),
                // Found by the read that failed (see `crate::chain`): logged and counted there.
                _ if self.cluster.shared.chain.pending() => self.rebuild_after_fork().await,
                REBUILD => {
                    tracing::warn!(%error, "this node fell behind the cluster's log: rebuilding from a snapshot");
                    self.rebuild().await;
                }
                _ => {
                    tracing::warn!(%error, "the cluster's order cannot continue from this node's place");
                    self.start_over(None).await;
                }
            },
            Err(error) => tracing::error!(%error, "catching up panicked"),
        }
    }

    /// Puts the node back in step after a read of the log failed: from a snapshot after a fork or a trimmed log
    /// (keeping the connections whose links hold), by starting over otherwise.
    async fn resync(&mut self) {
        if self.cluster.shared.chain.pending() {
            return self.rebuild_after_fork().await;
        }
        match self.sequencer.needs_snapshot.swap(IN_STEP, Ordering::SeqCst) {
            REBUILD => self.rebuild().await,
            _ => self.start_over(None).await,
        }
    }

    /// The entries this node missed were trimmed from the log: takes the cluster's state from a snapshot, keeping the
    /// connections whose links still hold ([`ClusterHost::rebuild`]). A snapshot that fails is tried again on the
    /// next notice (the catch-up fails the same way); one refused for a new epoch starts the node over.
    async fn rebuild(&mut self) {
        match self.cluster.snapshot().await {
            Ok(snapshot) => {
                let host = self.host.clone();
                let (seq, users) = seed(snapshot);
                if let Err(error) = tokio::task::spawn_blocking(move || host.rebuild(seq, users)).await {
                    tracing::error!(%error, "rebuilding from a snapshot panicked");
                }
            }
            Err(Error::Refused(Refusal::EpochChanged { .. })) => self.start_over(None).await,
            Err(error) => {
                tracing::warn!(%error, "could not read a snapshot to rebuild from; retrying on the next notice")
            }
        }
    }

    /// Delivers another node's message, in the order its origin sent them: one at a time. Waits for the node to have
    /// applied what the origin had applied, so a message never overtakes the membership change before it.
    async fn deliver(&mut self, message: NodeMessage, broadcast: bool) {
        let Some(frame) = Frame::from_node(message.body) else {
            tracing::warn!(
                origin = message.origin,
                "a message from another node is not UTF-8: dropped"
            );
            return;
        };
        let host = self.host.clone();
        let after = message.after;
        let user = message.user;
        let keep = message.keep;
        let (origin, generation) = (message.origin, message.generation);
        let deliver = move || {
            if host.applied() < after {
                // What the origin had applied first, so that the check below knows what the origin knew.
                let _ = host.catch_up_to(after);
            }
            // A generation of its node that the cluster fenced, or one older than a generation seen since: it spoke
            // past its lease, maybe for a user linked elsewhere by now.
            if !host.admits(&origin, generation) {
                return;
            }
            match (broadcast, user) {
                (true, Some(user)) if keep => host.deliver_kept(after, &user, frame),
                (true, skip) => host.deliver_broadcast(after, skip.as_deref(), frame),
                (false, Some(user)) => host.deliver_send(after, &user, frame),
                (false, None) => tracing::warn!("a message from another node names no user: dropped"),
            }
        };
        if self.host.applied() >= after {
            deliver(); // the usual case: nothing to wait for, so no thread hop
        } else if let Err(error) = tokio::task::spawn_blocking(deliver).await {
            tracing::error!(%error, "delivering a message panicked");
        }
    }

    /// The cluster's log forked (see [`crate::chain`]): this node applied entries Redis no longer has, so its view
    /// may differ from every other node's under the same seqs. Rebuilds from a snapshot: for now by starting over
    /// (a new lease, its connections closed, their clients relink), the one way this crate has to replace the
    /// node's state; the fork was logged and counted (`krmx_cluster_resyncs_total{kind="fork"}`) where it was found.
    async fn rebuild_after_fork(&mut self) {
        self.sequencer.needs_snapshot.store(IN_STEP, Ordering::SeqCst);
        self.start_over(None).await;
    }

    /// The node lost its place (its lease, or the cluster's state, or the part of the order it had not applied):
    /// gets a new lease and starts over from a snapshot, closing this node's connections (their clients relink and
    /// get a fresh snapshot). Retries until it succeeds or the server closes.
    async fn start_over(&mut self, lost: Option<LeaseLost>) {
        let mut epoch_changed = matches!(lost, Some(LeaseLost::EpochChanged { .. }));
        // No lease, no serving: nothing taken from the connections or handed to the other nodes from now on, and the
        // sockets closed now, not once Redis is back, and in any case before the node registers again (a new
        // registration unlinks this node's users everywhere, and they may link elsewhere at once). Health says so
        // until the node has registered again and restarted.
        self.sequencer.lease_lost.store(true, Ordering::SeqCst);
        self.sequencer.clock.revoke();
        if lost.is_some() || epoch_changed {
            self.host.lease_lost();
        }
        self.host.close_connections();
        self.sequencer.blocking.reset();
        let mut wait = Duration::from_millis(50);
        loop {
            if self.server.status() >= emitter_core::Status::Closing {
                return;
            }
            match self.rejoin(epoch_changed).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%error, "could not rejoin the cluster; retrying");
                    epoch_changed |= matches!(error, Error::Refused(Refusal::EpochChanged { .. }));
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_RETRY);
                }
            }
        }
    }

    async fn rejoin(&mut self, epoch_changed: bool) -> Result<()> {
        let (epoch, _) = self.cluster.head().await?;
        if epoch_changed || epoch.as_ref() != Some(&self.cluster.epoch()) {
            self.cluster.reopen().await?;
        }
        // Every connection was closed before this (see `start_over`): none speaks with the old lease once the new
        // registration has unlinked its users.
        let sent = Instant::now();
        let lease = self.cluster.register_node(&self.sequencer.node).await?;
        // A need for a snapshot noticed before this one (a catch-up of the core's in the old state) is met by it.
        self.sequencer.needs_snapshot.store(IN_STEP, Ordering::SeqCst);
        let snapshot = self.cluster.snapshot().await?;
        let host = self.host.clone();
        let (seq, users) = seed(snapshot);
        // Restarted (its connections closed) before the new lease is used: a link made with it is never closed by
        // the restart. Until then, links are refused as the old lease's.
        let _ = tokio::task::spawn_blocking(move || host.restart(seq, users)).await;
        *self.sequencer.lease.write() = lease.clone();
        let token = self.sequencer.clock.install(sent, self.cluster.options().lease);
        self.sequencer.lease_lost.store(false, Ordering::SeqCst);
        let clock = (self.sequencer.clock.clone(), token);
        self.alive = keep_alive(&self.cluster, &self.host, &self.sequencer, lease, clock);
        tracing::warn!(
            node = self.sequencer.node,
            seq,
            "node started over from the cluster's state"
        );
        Ok(())
    }
}
