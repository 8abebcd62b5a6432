//! Keeping a node's lease: renewing it, reaping dead nodes on the side, and saying when the lease is lost.

use std::time::Duration;

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
        KeepAlive::start(self.clone(), lease, None)
    }

    /// [`keep_alive`](Cluster::keep_alive), calling `on_renewed` after every successful renewal.
    pub(crate) fn keep_alive_reporting(&self, lease: NodeLease, on_renewed: OnRenewed) -> KeepAlive {
        KeepAlive::start(self.clone(), lease, Some(on_renewed))
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

/// Called after every successful renewal, with its round trip; must not block.
pub(crate) type OnRenewed = Box<dyn Fn(Duration) + Send + Sync>;

impl KeepAlive {
    pub(crate) fn start(cluster: Cluster, lease: NodeLease, on_renewed: Option<OnRenewed>) -> KeepAlive {
        let (report, state) = watch::channel(None);
        let task = tokio::spawn(keep(cluster, lease.clone(), report, on_renewed));
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
    on_renewed: Option<OnRenewed>,
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
                            if let Some(renewed) = &on_renewed {
                                renewed(sent.elapsed());
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
    tracing::error!(
        cluster = cluster.name(),
        node = lease.node(),
        generation = lease.generation(),
        ?lost,
        "lease lost: this node must stop serving"
    );
    let _ = report.send(Some(lost));
}
