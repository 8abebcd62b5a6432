//! What a node of a cluster adds: its lease, its round trips to Redis, its resyncs, and what it counts of the
//! messages between nodes.

use std::sync::atomic::{AtomicBool, AtomicU64};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::sync::Mutex;

use super::labels::Label;
use super::striped::Histogram;

/// What a node of a cluster counts that the core cannot see, read when the metrics are scraped (see
/// [`ClusterHost::set_counts`](crate::cluster::ClusterHost::set_counts)).
///
/// ```
/// let counts = emitter_core::cluster::ClusterCounts::new(3, 1).with_catch_ups(2).with_forks(1);
/// assert_eq!((counts.messages_lost, counts.repeats_dropped, counts.catch_ups, counts.forks), (3, 1, 2, 1));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterCounts {
    /// Messages from other nodes that never arrived here.
    pub messages_lost: u64,
    /// Messages from other nodes that arrived twice and were dropped the second time.
    pub repeats_dropped: u64,
    /// Times the node's feed of the cluster's order came back after a drop (on Redis: a resubscription) and the node
    /// read the log to fill what it missed meanwhile.
    pub catch_ups: u64,
    /// Times the node found that the cluster's order forked (its store lost writes the node had applied: a failover
    /// to a replica that missed them) and rebuilt from a snapshot.
    pub forks: u64,
}

impl ClusterCounts {
    /// The message counts so far (and no catch-ups).
    pub fn new(messages_lost: u64, repeats_dropped: u64) -> ClusterCounts {
        ClusterCounts {
            messages_lost,
            repeats_dropped,
            catch_ups: 0,
            forks: 0,
        }
    }

    /// These counts with `catch_ups` catch-ups so far.
    pub fn with_catch_ups(self, catch_ups: u64) -> ClusterCounts {
        ClusterCounts { catch_ups, ..self }
    }

    /// These counts with `forks` forks found so far.
    pub fn with_forks(self, forks: u64) -> ClusterCounts {
        ClusterCounts { forks, ..self }
    }
}

pub(super) type CountsSource = Box<dyn Fn() -> ClusterCounts + Send + Sync>;

/// A cluster node's metrics: exposed only once the server is a node.
pub(super) struct ClusterMetrics {
    pub(super) registry: Registry,
    pub(super) lease_held: Gauge,
    pub(super) lease_age: Gauge<f64, AtomicU64>,
    /// Whether the node holds its lease, as the cluster layer last said.
    pub(super) held: AtomicBool,
    /// When the lease was last renewed: nanoseconds since `Metrics::created`.
    pub(super) renewed_at: AtomicU64,
    pub(super) submit: Histogram,
    pub(super) renew: Histogram,
    pub(super) restarts: Counter,
    pub(super) rebuilds: Counter,
    pub(super) catch_ups: Counter,
    pub(super) forks: Counter,
    pub(super) messages_lost: Counter,
    pub(super) repeats_dropped: Counter,
    /// Messages dropped by fencing (`krmx_cluster_fenced_messages_total{at}`): taken from a connection or about to be
    /// handed to the other nodes while this node's lease was not valid, or from another node's fenced generation.
    pub(super) fenced_received: Counter,
    pub(super) fenced_published: Counter,
    pub(super) fenced_delivered: Counter,
    pub(super) counts: Mutex<Option<CountsSource>>,
}

impl ClusterMetrics {
    pub(super) fn new() -> ClusterMetrics {
        let mut registry = Registry::with_prefix("krmx_cluster");
        let lease_held = Gauge::default();
        let lease_age = Gauge::<f64, AtomicU64>::default();
        let submit = Histogram::seconds();
        let renew = Histogram::seconds();
        let resyncs = Family::<Label, Counter>::default();
        let messages_lost = Counter::default();
        let repeats_dropped = Counter::default();
        registry.register(
            "lease_held",
            "1 while this node holds its lease in the cluster, 0 once it lost it (until it registers again)",
            lease_held.clone(),
        );
        registry.register_with_unit(
            "lease_age",
            "Time since this node last renewed its lease (or registered); it keeps growing while the lease is lost",
            Unit::Seconds,
            lease_age.clone(),
        );
        registry.register_with_unit(
            "submit_duration",
            "How long membership changes submitted to the cluster's sequencer waited for their answer (on Redis: \
             through the node's change queue, many per round trip), failed ones included",
            Unit::Seconds,
            submit.clone(),
        );
        registry.register_with_unit(
            "renew_duration",
            "Round trips of lease renewals (on Redis: one script call each, every third of a lease), failed ones not \
             included: the node's latency to the cluster's store even when nothing changes",
            Unit::Seconds,
            renew.clone(),
        );
        registry.register(
            "resyncs",
            "Times this node resynchronized with the cluster, by kind: restart (started over from a snapshot of the \
             cluster's state, closing its connections: lost lease or lost state), rebuild (caught up from a snapshot, \
             keeping its connections whose links still hold: too far behind the log), catch_up (its feed of the \
             cluster's order came back after a drop, and it read the log for what it missed), fork (the cluster's \
             order forked: its store lost writes this node had applied, and the node started over from a snapshot)",
            resyncs.clone(),
        );
        let restarts = resyncs.get_or_create_owned(&[("kind", "restart")]);
        let rebuilds = resyncs.get_or_create_owned(&[("kind", "rebuild")]);
        let catch_ups = resyncs.get_or_create_owned(&[("kind", "catch_up")]);
        let forks = resyncs.get_or_create_owned(&[("kind", "fork")]);
        registry.register(
            "messages_lost",
            "Messages from other nodes that never arrived here (gaps in their numbers)",
            messages_lost.clone(),
        );
        registry.register(
            "repeats_dropped",
            "Messages from other nodes that arrived twice and were dropped the second time",
            repeats_dropped.clone(),
        );
        let fenced = Family::<Label, Counter>::default();
        registry.register(
            "fenced_messages",
            "Messages dropped because a lease did not back them, by where: received (from a connection of this node \
             while its lease was not valid), published (not handed to the other nodes while its lease was not \
             valid), delivered (from another node's generation that is fenced or older than one seen since)",
            fenced.clone(),
        );
        let fenced_received = fenced.get_or_create_owned(&[("at", "received")]);
        let fenced_published = fenced.get_or_create_owned(&[("at", "published")]);
        let fenced_delivered = fenced.get_or_create_owned(&[("at", "delivered")]);
        ClusterMetrics {
            registry,
            fenced_received,
            fenced_published,
            fenced_delivered,
            lease_held,
            lease_age,
            held: AtomicBool::new(false),
            renewed_at: AtomicU64::new(0),
            submit,
            renew,
            restarts,
            rebuilds,
            catch_ups,
            forks,
            messages_lost,
            repeats_dropped,
            counts: Mutex::new(None),
        }
    }
}
