//! The server's metrics, for monitoring: what it serves, what it refuses and how long links take, kept per
//! [`Server`](crate::Server) (two servers in one process never share a number) and encoded in the Prometheus text
//! format on demand.
//!
//! Every update is an atomic add or store: nothing here takes a lock where a message passes. The counters the message
//! path bumps for every frame (messages and bytes, in and out) and the queue-depth histogram are *striped*: each
//! thread adds to a cache line of its own, and a scrape sums the stripes, so that cores handling different
//! connections never contend on one counter. The rest are rare (a link, a rejection, a close) and are plain
//! `prometheus-client` counters (an atomic each). Gauges that mirror state the server keeps anyway (open
//! connections, users) are read when scraped rather than kept twice.
//!
//! The names, types and meanings are listed in the book's Operations chapter.

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

pub(crate) mod cluster;
pub(crate) mod health;
mod labels;
mod striped;

pub(crate) use labels::{Cause, Reason};

use cluster::{ClusterMetrics, CountsSource};
use labels::{Label, REFUSALS};
use striped::{Histogram, StripedCounter, DEPTH_BOUNDS, STRIPES};

/// The `Content-Type` of [`Server::metrics_text`]: the Prometheus text format, version 0.0.4.
///
/// [`Server::metrics_text`]: crate::Server::metrics_text
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// One server's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    created: Instant,
    connections_open: Gauge,
    connections_linked: Gauge,
    users: Gauge,
    users_linked: Gauge,
    pub(crate) messages_in: StripedCounter,
    pub(crate) bytes_in: StripedCounter,
    pub(crate) messages_out: StripedCounter,
    pub(crate) bytes_out: StripedCounter,
    pub(crate) queue_depth: Histogram,
    accepted: Counter,
    rejected: Counter,
    /// Invalid messages from linked users, each of which unlinked its user.
    pub(crate) linked_invalid: Counter,
    rejections: Vec<(Reason, Counter)>,
    closes: Vec<(Cause, Counter)>,
    /// Per refusal text (as `Server::refusal` words it), its counter.
    refusals: Vec<(&'static str, Counter)>,
    pub(crate) auth: Histogram,
    pub(crate) link: Histogram,
    cluster: ClusterMetrics,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("krmx");
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let connections_open = gauge(&mut registry, "connections_open", "Open WebSocket connections");
        let connections_linked = gauge(
            &mut registry,
            "connections_linked",
            "Open connections linked to a user (on this server or node)",
        );
        let users = gauge(
            &mut registry,
            "users",
            "Users, linked or not (on a cluster: the whole cluster's, as this node sees it)",
        );
        let users_linked = gauge(
            &mut registry,
            "users_linked",
            "Users linked to a connection (on a cluster: on any node, as this node sees it)",
        );

        let striped = |registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>| {
            let counter = StripedCounter::default();
            match unit {
                Some(unit) => registry.register_with_unit(name, help, unit, counter.clone()),
                None => registry.register(name, help, counter.clone()),
            }
            counter
        };
        let messages_in = striped(
            &mut registry,
            "messages_received",
            "WebSocket text and binary frames received from clients and handed to the server",
            None,
        );
        let bytes_in = striped(
            &mut registry,
            "received",
            "Payload bytes of the frames counted in krmx_messages_received_total (without WebSocket framing)",
            Some(Unit::Bytes),
        );
        let messages_out = striped(
            &mut registry,
            "messages_sent",
            "Frames the transport wrote to client sockets",
            None,
        );
        let bytes_out = striped(
            &mut registry,
            "sent",
            "Payload bytes of the frames counted in krmx_messages_sent_total (without WebSocket framing)",
            Some(Unit::Bytes),
        );
        let queue_depth = Histogram::new(DEPTH_BOUNDS, 1.0, STRIPES);
        registry.register(
            "outbound_queue_depth",
            "Frames a connection's writer found waiting for it when it woke, sampled once per write burst (its own \
             frames plus the broadcasts it had not read; a burst takes at most 1024)",
            queue_depth.clone(),
        );

        let attempts = Family::<Label, Counter>::default();
        registry.register(
            "link_attempts",
            "Link requests decided, by outcome: accepted, or rejected (for any reason in krmx_rejections_total \
             but invalid_message and unlinked_connection)",
            attempts.clone(),
        );
        let accepted = attempts.get_or_create_owned(&[("outcome", "accepted")]);
        let rejected = attempts.get_or_create_owned(&[("outcome", "rejected")]);

        let by_reason = Family::<Label, Counter>::default();
        registry.register(
            "rejections",
            "krmx/rejected messages sent, by reason: the protocol's reasons, app for a reason an authenticate \
             listener gave, cluster_unavailable for a link the cluster could not decide",
            by_reason.clone(),
        );
        let rejections = Reason::ALL
            .iter()
            .map(|reason| (*reason, by_reason.get_or_create_owned(&[("reason", reason.label())])))
            .collect();

        let by_cause = Family::<Label, Counter>::default();
        registry.register(
            "connection_closes",
            "Connections the server closed, by cause: the core's (server_closing, restart, rate_limit, \
             link_deadline, slow_consumer, replaced) and the transport's (oversize, invalid_utf8, protocol_error, \
             no_pong, query_params); closes the client began are not counted",
            by_cause.clone(),
        );
        let closes = Cause::ALL
            .iter()
            .map(|cause| (*cause, by_cause.get_or_create_owned(&[("cause", cause.label())])))
            .collect();

        let linked_invalid = Counter::default();
        registry.register(
            "linked_invalid_messages",
            "Invalid messages from linked users, each of which unlinked its user: not JSON, nested too deep, not an \
             object with a string type, or a krmx/ type clients may not send (an unlinked connection's invalid \
             messages are counted in krmx_rejections_total{reason=\"invalid_message\"})",
            linked_invalid.clone(),
        );

        let by_refusal = Family::<Label, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections refused before they were opened, by reason: not_listening, too_many_connections, \
             too_many_unlinked_connections, origin (a browser's, from a page whose origin is not allowed)",
            by_refusal.clone(),
        );
        let refusals = REFUSALS
            .iter()
            .map(|(why, label)| (*why, by_refusal.get_or_create_owned(&[("reason", *label)])))
            .collect();

        let auth = Histogram::seconds();
        registry.register_with_unit(
            "auth_duration",
            "Time from the authenticate listeners being called to the link attempt being decided (async \
             authentication included)",
            Unit::Seconds,
            auth.clone(),
        );
        let link = Histogram::seconds();
        registry.register_with_unit(
            "link_duration",
            "Time from a link request being received to its connection being linked (waiting for the membership \
             order and authentication included)",
            Unit::Seconds,
            link.clone(),
        );

        Metrics {
            registry,
            created: Instant::now(),
            connections_open,
            connections_linked,
            users,
            users_linked,
            messages_in,
            bytes_in,
            messages_out,
            bytes_out,
            queue_depth,
            accepted,
            rejected,
            linked_invalid,
            rejections,
            closes,
            refusals,
            auth,
            link,
            cluster: ClusterMetrics::new(),
        }
    }

    /// Counts a frame received from a client.
    pub(crate) fn received(&self, bytes: usize) {
        self.messages_in.add(1);
        self.bytes_in.add(bytes as u64);
    }

    /// Counts a `krmx/rejected` sent with `reason`.
    pub(crate) fn rejected(&self, reason: Reason) {
        if let Some((_, counter)) = self.rejections.iter().find(|(kind, _)| *kind == reason) {
            counter.inc();
        }
        if reason.answers_a_link() {
            self.rejected.inc();
        }
    }

    /// Counts an accepted link attempt.
    pub(crate) fn accepted(&self) {
        self.accepted.inc();
    }

    /// Counts a connection refused before it was opened, for `why` (as `Server::refusal` words it).
    pub(crate) fn refused(&self, why: &str) {
        if let Some((_, counter)) = self.refusals.iter().find(|(text, _)| *text == why) {
            counter.inc();
        }
    }

    /// Counts a connection the server closed for `cause`.
    pub(crate) fn closed(&self, cause: Cause) {
        if let Some((_, counter)) = self.closes.iter().find(|(kind, _)| *kind == cause) {
            counter.inc();
        }
    }
}

/// What a scrape reads from the server's own state rather than from counters kept twice.
pub(crate) struct Gauges {
    pub(crate) connections_open: usize,
    pub(crate) connections_linked: usize,
    pub(crate) users: usize,
    pub(crate) users_linked: usize,
    /// Whether the server is a node of a cluster: then its `krmx_cluster_…` metrics follow.
    pub(crate) clustered: bool,
}

impl Metrics {
    /// The metrics in the Prometheus text format, with the gauges as `gauges` says.
    pub(crate) fn encode(&self, gauges: Gauges) -> String {
        let set = |gauge: &Gauge, value: usize| {
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        set(&self.connections_open, gauges.connections_open);
        set(&self.connections_linked, gauges.connections_linked);
        set(&self.users, gauges.users);
        set(&self.users_linked, gauges.users_linked);
        let mut text = String::with_capacity(8 * 1024);
        let mut encoded = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        if encoded.is_ok() && gauges.clustered {
            self.refresh_cluster();
            encoded = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.cluster.registry);
        }
        if let Err(error) = encoded {
            // Writing to a String does not fail; a metric that fails to encode is a bug here.
            tracing::error!(%error, "the metrics could not be encoded");
        }
        text
    }
}

/// What a node reports of its lease and round trips, and its counts read when scraped.
impl Metrics {
    pub(crate) fn observe_renewal(&self, took: Duration) {
        self.cluster.renew.observe_duration(took);
    }

    pub(crate) fn lease_renewed(&self) {
        let now = u64::try_from(self.created.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.cluster.renewed_at.store(now, Ordering::Relaxed);
        self.cluster.held.store(true, Ordering::SeqCst);
    }

    pub(crate) fn lease_lost(&self) {
        self.cluster.held.store(false, Ordering::SeqCst);
    }

    pub(crate) fn lease_held(&self) -> bool {
        self.cluster.held.load(Ordering::SeqCst)
    }

    pub(crate) fn observe_submit(&self, took: Duration) {
        self.cluster.submit.observe_duration(took);
    }

    /// A message from one of this node's connections dropped: the node's lease was not valid.
    pub(crate) fn fenced_received(&self) {
        self.cluster.fenced_received.inc();
    }

    /// A message not handed to the other nodes: the node's lease was not valid.
    pub(crate) fn fenced_published(&self) {
        self.cluster.fenced_published.inc();
    }

    /// Another node's message dropped: its generation is fenced, or older than one seen since.
    pub(crate) fn fenced_delivered(&self) {
        self.cluster.fenced_delivered.inc();
    }

    pub(crate) fn resynced(&self) {
        self.cluster.restarts.inc();
    }

    pub(crate) fn rebuilt(&self) {
        self.cluster.rebuilds.inc();
    }

    pub(crate) fn set_counts(&self, source: CountsSource) {
        *self.cluster.counts.lock() = Some(source);
    }

    /// Brings the scrape-time values of a cluster node up to date.
    pub(super) fn refresh_cluster(&self) {
        let cluster = &self.cluster;
        cluster.lease_held.set(i64::from(cluster.held.load(Ordering::SeqCst)));
        let now = self.created.elapsed();
        let renewed = Duration::from_nanos(cluster.renewed_at.load(Ordering::Relaxed));
        cluster.lease_age.set(now.saturating_sub(renewed).as_secs_f64());
        let counts = cluster.counts.lock().as_ref().map(|source| source());
        if let Some(counts) = counts {
            cluster
                .messages_lost
                .inner()
                .store(counts.messages_lost, Ordering::Relaxed);
            cluster
                .repeats_dropped
                .inner()
                .store(counts.repeats_dropped, Ordering::Relaxed);
            cluster.catch_ups.inner().store(counts.catch_ups, Ordering::Relaxed);
            cluster.forks.inner().store(counts.forks, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cluster::{Change, ClusterCounts, ClusterHost, LinkAddr, LogEntry, Refused, Sequencer};
    use crate::error::Status;
    use crate::protocol::Frame;
    use crate::Health;
    use crate::Server;

    #[test]
    fn histogram_buckets_are_upper_bounds_and_the_rest_counts_in_inf() {
        let histogram = Histogram::new(DEPTH_BOUNDS, 1.0, 4);
        for value in [0, 1, 2, 3, 1024, 5000] {
            histogram.observe(value);
        }
        let (buckets, sum) = histogram.totals();
        assert_eq!(&buckets[..4], &[2, 1, 1, 0], "0 and 1 are le=1, 2 is le=2, 3 is le=4");
        assert_eq!(buckets[10], 1, "1024 is le=1024");
        assert_eq!(buckets[11], 1, "5000 is past the last bound");
        assert_eq!(sum, 6030);
        assert_eq!(histogram.count(), 6);
    }

    #[test]
    fn striped_counters_add_up_across_threads() {
        let counter = StripedCounter::default();
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        counter.add(1);
                    }
                });
            }
        });
        assert_eq!(counter.get(), 8000);
    }

    #[test]
    fn reasons_are_the_kinds_never_the_text() {
        assert_eq!(Reason::of("invalid username"), Reason::InvalidUsername);
        assert_eq!(
            Reason::of("user ann is already linked to a connection"),
            Reason::AlreadyLinked
        );
        assert_eq!(Reason::of("banned for a week"), Reason::App);
        assert!(Reason::ALL.iter().all(|reason| !reason.label().contains(' ')));
    }

    /// A sequencer that decides nothing: enough to make a server a node.
    struct Nowhere;

    impl Sequencer for Nowhere {
        fn node(&self) -> &str {
            "nowhere"
        }
        fn owns(&self, _: &LinkAddr) -> bool {
            false
        }
        fn submit(&self, _: Change) -> Result<Vec<LogEntry>, Refused> {
            Err(Refused::Unavailable("nowhere".to_owned()))
        }
        fn entries_after(&self, _: u64) -> Result<Vec<LogEntry>, String> {
            Ok(Vec::new())
        }
        fn publish_broadcast(&self, _: u64, _: Option<&str>, _: &Frame) {}
        fn publish_send(&self, _: &LinkAddr, _: &str, _: u64, _: &Frame) {}
        fn publish_kept(&self, _: &str, _: u64, _: &Frame) {}
    }

    #[test]
    fn a_node_is_healthy_only_while_it_holds_its_lease() {
        let plain = Server::new();
        assert!(
            !plain.metrics_text().contains("krmx_cluster_"),
            "not a node: no cluster metrics"
        );

        let server = Server::new();
        let host = ClusterHost::of(&server);
        host.install(Arc::new(Nowhere), 0, Vec::new()).unwrap();
        server.host().start().unwrap();
        server.host().listening(1).unwrap();
        assert_eq!(
            server.health(),
            Health::Healthy,
            "installing counts as holding a fresh lease"
        );
        assert!(server.metrics_text().contains("\nkrmx_cluster_lease_held 1\n"));

        host.lease_lost();
        assert_eq!(server.health(), Health::LeaseLost);
        assert_eq!(server.health().to_string(), "this node lost its cluster lease");
        let text = server.metrics_text();
        assert!(text.contains("\nkrmx_cluster_lease_held 0\n"), "{text}");

        host.set_counts(|| ClusterCounts::new(7, 2).with_catch_ups(4).with_forks(3));
        host.restart(0, Vec::new());
        assert_eq!(server.health(), Health::Healthy, "a restart follows a new registration");
        let text = server.metrics_text();
        for line in [
            "krmx_cluster_lease_held 1",
            "krmx_cluster_resyncs_total{kind=\"restart\"} 1",
            "krmx_cluster_resyncs_total{kind=\"catch_up\"} 4",
            "krmx_cluster_resyncs_total{kind=\"fork\"} 3",
            "krmx_cluster_messages_lost_total 7",
            "krmx_cluster_repeats_dropped_total 2",
        ] {
            assert!(text.contains(&format!("\n{line}\n")), "no {line} in\n{text}");
        }

        // A membership change goes to the sequencer: its round trip is timed, refused or not.
        assert!(server.join("ann").is_err());
        assert!(server
            .metrics_text()
            .contains("\nkrmx_cluster_submit_duration_seconds_count 1\n"));
        drop(server.close());
        assert_eq!(server.health(), Health::NotListening(Status::Closed));
    }
}
