//! Keeping a node's lease: renewing it, reaping dead nodes on the side, and saying when the lease is lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant, MissedTickBehavior};

use crate::cluster::Cluster;
use crate::types::{Epoch, Error, NodeLease, Refusal};

impl Cluster {
    /// Keeps `lease` alive: renews it every third of [`Options::lease`](crate::Options::lease), reaps dead nodes
    /// every [`Options::reap_interval`](crate::Options::reap_interval), and reports when the lease is lost. Stops
    /// when dropped.
    pub fn keep_alive(&self, lease: NodeLease) -> KeepAlive {
        let clock = LeaseClock::new();
        let token = clock.install(std::time::Instant::now(), self.options().lease);
        KeepAlive::start(self.clone(), lease, None, (clock, token))
    }

    /// [`keep_alive`](Cluster::keep_alive), calling `reports.renewed` after every successful renewal and
    /// `reports.lost` the moment the lease is lost (whatever the node is busy with), and keeping `clock` with the token
    /// [`LeaseClock::install`] gave for this lease (extended by every renewal, revoked when the lease is lost).
    pub(crate) fn keep_alive_reporting(
        &self,
        lease: NodeLease,
        reports: Reports,
        clock: (Arc<LeaseClock>, u64),
    ) -> KeepAlive {
        KeepAlive::start(self.clone(), lease, Some(reports), clock)
    }
}

/// Until when a node may act on its lease, by its own monotonic clock: the start of its last successful renewal (or
/// registration) plus the lease, less a safety margin ([`LeaseClock::margin`]). Redis started the lease no earlier
/// than the call was sent, so the node stops no later than Redis fences it, whatever the call's round trip was. A
/// pause (a stopped process, a GC or VM stall) runs the clock out while nothing renews: when the node wakes, the first
/// thing that asks finds the lease not valid, before any timer or task has noticed.
#[derive(Debug)]
pub(crate) struct LeaseClock {
    base: std::time::Instant,
    /// Nanoseconds after `base` until which the lease is valid; 0 while it is not. Read for every message.
    until: AtomicU64,
    /// Which lease's keeper may move `until`: the one [`install`](LeaseClock::install)ed last. A replaced keeper
    /// still running (its abort is not immediate) then cannot revoke, or extend, its successor's lease.
    current: Mutex<u64>,
}

impl LeaseClock {
    /// A clock with no valid lease yet.
    pub(crate) fn new() -> Arc<LeaseClock> {
        Arc::new(LeaseClock {
            base: std::time::Instant::now(),
            until: AtomicU64::new(0),
            current: Mutex::new(0),
        })
    }

    /// What is taken off the lease: a fifth of it, for clock rates that differ between the node and Redis and for the
    /// time between a check and the effect it allows.
    pub(crate) fn margin(lease: Duration) -> Duration {
        lease / 5
    }

    /// A new lease, made by a call sent at `sent`: valid until `sent + lease - margin`. Returns the token its keeper
    /// moves the clock with; an earlier lease's keeper no longer can.
    pub(crate) fn install(&self, sent: std::time::Instant, lease: Duration) -> u64 {
        let mut current = self.current.lock();
        *current += 1;
        self.store(sent, lease);
        *current
    }

    /// The lease of `token` was renewed by a call sent at `sent`.
    pub(crate) fn renewed(&self, token: u64, sent: std::time::Instant, lease: Duration) {
        let current = self.current.lock();
        if *current == token {
            self.store(sent, lease);
        }
    }

    /// The lease of `token` is lost: not valid any more.
    pub(crate) fn lost(&self, token: u64) {
        let current = self.current.lock();
        if *current == token {
            self.until.store(0, Ordering::SeqCst);
        }
    }

    /// The node gives up whatever lease it holds (it starts over): not valid until a new one is installed.
    pub(crate) fn revoke(&self) {
        let _current = self.current.lock();
        self.until.store(0, Ordering::SeqCst);
    }

    fn store(&self, sent: std::time::Instant, lease: Duration) {
        let until = sent.saturating_duration_since(self.base) + lease.saturating_sub(Self::margin(lease));
        let until = u64::try_from(until.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.until.store(until, Ordering::SeqCst);
    }

    /// Whether the lease is valid now.
    pub(crate) fn is_valid(&self) -> bool {
        let now = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        now < self.until.load(Ordering::SeqCst)
    }
}

/// Why a node's lease is lost. In every case the node must stop serving (close its connections; its users are, or are
/// about to be, unlinked by the log), then register again to serve anew.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseLost {
    /// Redis refused the renewal: the lease ran out (the node, or Redis, paused past it), was released, or a newer
    /// registration of the same node id took it over.
    Fenced,
    /// The cluster state in Redis is gone or was recreated.
    EpochChanged {
        /// The epoch Redis has now, if any.
        current: Option<Epoch>,
    },
    /// No renewal succeeded for a whole lease (Redis unreachable or too slow): by Redis's clock the lease may be over,
    /// so the node must act as if it were.
    Unreachable,
}

/// A running lease keeper, from [`Cluster::keep_alive`]. Renews every third of the lease; counts the lease as lost
/// on a refusal, or when no renewal has succeeded for a whole lease measured from when that renewal was *sent* (Redis
/// started the new lease no earlier than that, so the node gives up no later than Redis does, clock rates aside).
/// Stops when dropped; dropping does not release the lease (see [`Cluster::release`]).
#[derive(Debug)]
pub struct KeepAlive {
    lease: NodeLease,
    state: watch::Receiver<Option<LeaseLost>>,
    task: JoinHandle<()>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a lease keeper tells its node; neither may block.
pub(crate) struct Reports {
    /// After every successful renewal, with its round trip.
    pub(crate) renewed: Box<dyn Fn(Duration) + Send + Sync>,
    /// Once, when the lease is lost: the node stops serving at once, even while its own task waits on Redis.
    pub(crate) lost: Box<dyn Fn() + Send + Sync>,
}

impl KeepAlive {
    pub(crate) fn start(
        cluster: Cluster,
        lease: NodeLease,
        reports: Option<Reports>,
        clock: (Arc<LeaseClock>, u64),
    ) -> KeepAlive {
        let (report, state) = watch::channel(None);
        let task = tokio::spawn(keep(cluster, lease.clone(), report, reports, clock));
        KeepAlive { lease, state, task }
    }

    /// The lease it keeps.
    pub fn lease(&self) -> &NodeLease {
        &self.lease
    }

    /// Why the lease is lost, or `None` while it is held.
    pub fn lost(&self) -> Option<LeaseLost> {
        self.state.borrow().clone()
    }

    /// Waits until the lease is lost.
    pub async fn wait_lost(&mut self) -> LeaseLost {
        loop {
            if let Some(lost) = self.state.borrow_and_update().clone() {
                return lost;
            }
            if self.state.changed().await.is_err() {
                // The keeper is gone without a verdict (its runtime is shutting down): nothing renews any more.
                return LeaseLost::Unreachable;
            }
        }
    }
}

async fn keep(
    cluster: Cluster,
    lease: NodeLease,
    report: watch::Sender<Option<LeaseLost>>,
    reports: Option<Reports>,
    (clock, token): (Arc<LeaseClock>, u64),
) {
    let options = cluster.options().clone();
    let every = (options.lease / 3).max(Duration::from_millis(1));
    let mut renew = tokio::time::interval(every);
    renew.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The lease was made just before this started: the first renewal is due a third of a lease from now.
    renew.tick().await;
    // Without reaping, the branch below is disabled; the interval only needs to exist.
    let mut reap = tokio::time::interval(options.reap_interval.unwrap_or(Duration::from_secs(3600)));
    reap.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut held_until = Instant::now() + options.lease;
    // Every call races the local end of the lease: a renewal stuck behind a stalled Redis must not keep the node
    // serving past the point where Redis may already have fenced it.
    let lost = loop {
        tokio::select! {
            _ = renew.tick() => {
                let sent = Instant::now();
                tokio::select! {
                    result = cluster.renew(&lease) => match result {
                        Ok(()) => {
                            held_until = sent + options.lease;
                            clock.renewed(token, sent.into_std(), options.lease);
                            if let Some(reports) = &reports {
                                (reports.renewed)(sent.elapsed());
                            }
                        }
                        Err(Error::Refused(Refusal::Fenced)) => break LeaseLost::Fenced,
                        Err(Error::Refused(Refusal::EpochChanged { current })) => {
                            break LeaseLost::EpochChanged { current }
                        }
                        Err(error) => {
                            tracing::warn!(cluster = cluster.name(), node = lease.node(), %error, "renewing the lease failed");
                        }
                    },
                    () = sleep_until(held_until) => break LeaseLost::Unreachable,
                }
            }
            _ = reap.tick(), if options.reap_interval.is_some() => {
                tokio::select! {
                    result = cluster.reap_dead_nodes(lease.node()) => if let Err(error) = result {
                        tracing::debug!(cluster = cluster.name(), %error, "reaping failed");
                    },
                    () = sleep_until(held_until) => break LeaseLost::Unreachable,
                }
            }
            () = sleep_until(held_until) => break LeaseLost::Unreachable,
        }
    };
    clock.lost(token);
    if let Some(reports) = &reports {
        (reports.lost)();
    }
    tracing::error!(
        cluster = cluster.name(),
        node = lease.node(),
        generation = lease.generation(),
        ?lost,
        "lease lost: this node must stop serving"
    );
    let _ = report.send(Some(lost));
}
