//! The server's metrics, for monitoring: what it serves, what it refuses and how long links take, kept per [`Server`]
//! (two servers in one process never share a number) and encoded in the Prometheus text format on demand.
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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::error::Status;
use crate::protocol::Rejection;
use crate::sync::Mutex;
use crate::transport::{CloseReason, TransportClose};
use crate::vocabulary::{NOT_LISTENING, TOO_MANY_CONNECTIONS, TOO_MANY_UNLINKED};
use crate::Server;

/// The `Content-Type` of [`Server::metrics_text`]: the Prometheus text format, version 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// How many stripes a hot counter has: enough that the worker threads of a runtime on a large machine rarely share
/// one.
const STRIPES: usize = 16;

/// Which stripe the current thread adds to: handed out round-robin, once per thread.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    // A thread being torn down has no thread-locals left: it shares stripe 0.
    STRIPE.try_with(|stripe| *stripe).unwrap_or(0)
}

/// One counter on a cache line of its own.
#[derive(Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

/// A counter for the message path: one cell per stripe, summed when scraped.
#[derive(Clone, Default)]
pub(crate) struct StripedCounter(Arc<[Padded; STRIPES]>);

impl StripedCounter {
    pub(crate) fn add(&self, n: u64) {
        self.0[stripe()].0.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.iter().map(|cell| cell.0.load(Ordering::Relaxed)).sum()
    }
}

impl fmt::Debug for StripedCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StripedCounter").field(&self.get()).finish()
    }
}

impl EncodeMetric for StripedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// The most bucket bounds a [`Histogram`] has (plus one bucket past the last bound).
const MAX_BOUNDS: usize = 15;

/// One stripe of a histogram: a count per bucket and the sum of what was observed, on cache lines of its own.
#[derive(Default)]
#[repr(align(128))]
struct HistogramStripe {
    buckets: [AtomicU64; MAX_BOUNDS + 1],
    sum: AtomicU64,
}

struct HistogramInner {
    /// Upper bounds, ascending, in raw units (nanoseconds, frames).
    bounds: &'static [u64],
    /// Raw units per exposed unit: 1e9 for nanoseconds exposed as seconds.
    scale: f64,
    stripes: Box<[HistogramStripe]>,
}

/// A histogram of whole numbers (nanoseconds, frames) with fixed buckets, updated with two atomic adds and no lock:
/// `prometheus-client`'s own histogram takes a mutex per observation, which has no place on the message path.
#[derive(Clone)]
pub(crate) struct Histogram(Arc<HistogramInner>);

/// Bounds for latencies, in nanoseconds: 0.1 ms to 10 s.
const LATENCY_BOUNDS: &[u64] = &[
    100_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Bounds for queue depths, in frames: powers of two up to a writer's burst (1024).
const DEPTH_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

impl Histogram {
    fn new(bounds: &'static [u64], scale: f64, stripes: usize) -> Histogram {
        debug_assert!(bounds.len() <= MAX_BOUNDS && bounds.is_sorted());
        Histogram(Arc::new(HistogramInner {
            bounds: &bounds[..bounds.len().min(MAX_BOUNDS)],
            scale,
            stripes: (0..stripes.max(1)).map(|_| HistogramStripe::default()).collect(),
        }))
    }

    /// Latencies, exposed in seconds; one stripe (they are observed on the membership path, a few per link).
    fn seconds() -> Histogram {
        Histogram::new(LATENCY_BOUNDS, 1e9, 1)
    }

    pub(crate) fn observe(&self, value: u64) {
        let inner = &*self.0;
        let stripe = &inner.stripes[stripe() % inner.stripes.len()];
        let bucket = inner.bounds.partition_point(|bound| *bound < value);
        stripe.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        stripe.sum.fetch_add(value, Ordering::Relaxed);
    }

    pub(crate) fn observe_duration(&self, duration: Duration) {
        self.observe(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The count per bucket (past the last bound too) and the sum, over every stripe.
    fn totals(&self) -> ([u64; MAX_BOUNDS + 1], u64) {
        let mut buckets = [0; MAX_BOUNDS + 1];
        let mut sum = 0u64;
        for stripe in self.0.stripes.iter() {
            for (total, bucket) in buckets.iter_mut().zip(&stripe.buckets) {
                *total += bucket.load(Ordering::Relaxed);
            }
            sum = sum.wrapping_add(stripe.sum.load(Ordering::Relaxed));
        }
        (buckets, sum)
    }

    #[cfg(test)]
    pub(crate) fn count(&self) -> u64 {
        self.totals().0.iter().sum()
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("bounds", &self.0.bounds)
            .finish_non_exhaustive()
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let (counts, sum) = self.totals();
        let scale = self.0.scale;
        // Per bucket, not cumulative: the encoder adds them up, and writes `+Inf` with the total.
        let buckets: Vec<(f64, u64)> = self
            .0
            .bounds
            .iter()
            .zip(counts)
            .map(|(bound, count)| (*bound as f64 / scale, count))
            .collect();
        let count = counts.iter().sum();
        encoder.encode_histogram::<NoLabelSet>(sum as f64 / scale, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Why a `krmx/rejected` was sent: a bounded set, so that it can be a label. The protocol's own reasons, `app` for
/// every reason an `authenticate` listener gave (never the text itself: it is the application's and unbounded), and
/// `cluster_unavailable` for a link the cluster could not decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    InvalidMessage,
    InvalidLinkRequest,
    UnlinkedConnection,
    LinkRequestPending,
    InvalidUsername,
    NotAcceptingNewUsers,
    AlreadyLinked,
    VersionMismatch,
    AuthenticationTimeout,
    AuthenticationFailed,
    App,
    ClusterUnavailable,
}

impl Reason {
    const ALL: [Reason; 12] = [
        Reason::InvalidMessage,
        Reason::InvalidLinkRequest,
        Reason::UnlinkedConnection,
        Reason::LinkRequestPending,
        Reason::InvalidUsername,
        Reason::NotAcceptingNewUsers,
        Reason::AlreadyLinked,
        Reason::VersionMismatch,
        Reason::AuthenticationTimeout,
        Reason::AuthenticationFailed,
        Reason::App,
        Reason::ClusterUnavailable,
    ];

    /// The kind of a reason as the client gets it. A reason an `authenticate` listener gave that happens to spell a
    /// protocol reason counts as that reason: the client cannot tell them apart either.
    pub(crate) fn of(reason: &str) -> Reason {
        match Rejection::parse(reason) {
            Rejection::InvalidMessage => Reason::InvalidMessage,
            Rejection::InvalidLinkRequest => Reason::InvalidLinkRequest,
            Rejection::UnlinkedConnection => Reason::UnlinkedConnection,
            Rejection::LinkRequestPending => Reason::LinkRequestPending,
            Rejection::InvalidUsername => Reason::InvalidUsername,
            Rejection::NotAcceptingNewUsers => Reason::NotAcceptingNewUsers,
            Rejection::AlreadyLinked(_) => Reason::AlreadyLinked,
            Rejection::VersionMismatch(_) => Reason::VersionMismatch,
            Rejection::AuthenticationTimeout => Reason::AuthenticationTimeout,
            Rejection::AuthenticationFailed => Reason::AuthenticationFailed,
            Rejection::Custom(_) => Reason::App,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Reason::InvalidMessage => "invalid_message",
            Reason::InvalidLinkRequest => "invalid_link_request",
            Reason::UnlinkedConnection => "unlinked_connection",
            Reason::LinkRequestPending => "link_request_pending",
            Reason::InvalidUsername => "invalid_username",
            Reason::NotAcceptingNewUsers => "not_accepting_new_users",
            Reason::AlreadyLinked => "already_linked",
            Reason::VersionMismatch => "version_mismatch",
            Reason::AuthenticationTimeout => "authentication_timeout",
            Reason::AuthenticationFailed => "authentication_failed",
            Reason::App => "app",
            Reason::ClusterUnavailable => "cluster_unavailable",
        }
    }

    /// Whether it answers a `krmx/link` (and so counts as a rejected link attempt too). The others answer anything
    /// else an unlinked connection sent.
    fn answers_a_link(self) -> bool {
        !matches!(self, Reason::InvalidMessage | Reason::UnlinkedConnection)
    }
}

/// Why a connection was refused before it was opened, as `Server::refusal` words it, and its label.
const REFUSALS: [(&str, &str); 3] = [
    (NOT_LISTENING, "not_listening"),
    (TOO_MANY_CONNECTIONS, "too_many_connections"),
    (TOO_MANY_UNLINKED, "too_many_unlinked_connections"),
];

/// Why the server closed a connection, for the closes it counts: the core's reasons and the transport's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The core asked the transport to close it (counted once, for the reason that stands).
    Core(CloseReason),
    /// The transport closed it on its own account (counted by the transport).
    Transport(TransportClose),
}

impl Cause {
    /// Every cause, as the label values of `krmx_connection_closes_total`, in the order they are exposed.
    const ALL: [Cause; 11] = [
        Cause::Core(CloseReason::ServerClosing),
        Cause::Core(CloseReason::Restart),
        Cause::Core(CloseReason::RateLimit),
        Cause::Core(CloseReason::LinkDeadline),
        Cause::Core(CloseReason::SlowConsumer),
        Cause::Core(CloseReason::Replaced),
        Cause::Transport(TransportClose::Oversize),
        Cause::Transport(TransportClose::InvalidUtf8),
        Cause::Transport(TransportClose::ProtocolError),
        Cause::Transport(TransportClose::NoPong),
        Cause::Transport(TransportClose::QueryParams),
    ];

    fn label(self) -> &'static str {
        match self {
            Cause::Core(CloseReason::ServerClosing) => "server_closing",
            Cause::Core(CloseReason::Restart) => "restart",
            Cause::Core(CloseReason::RateLimit) => "rate_limit",
            Cause::Core(CloseReason::LinkDeadline) => "link_deadline",
            Cause::Core(CloseReason::SlowConsumer) => "slow_consumer",
            Cause::Core(CloseReason::Replaced) => "replaced",
            Cause::Transport(TransportClose::Oversize) => "oversize",
            Cause::Transport(TransportClose::InvalidUtf8) => "invalid_utf8",
            Cause::Transport(TransportClose::ProtocolError) => "protocol_error",
            Cause::Transport(TransportClose::NoPong) => "no_pong",
            Cause::Transport(TransportClose::QueryParams) => "query_params",
        }
    }
}

type Label = [(&'static str, &'static str); 1];

/// What a node of a cluster counts that the core cannot see, read when the metrics are scraped (see
/// [`ClusterHost::set_counts`](crate::ClusterHost::set_counts)).
///
/// ```
/// let counts = emitter_core::ClusterCounts::new(3, 1).with_catch_ups(2);
/// assert_eq!((counts.messages_lost, counts.repeats_dropped, counts.catch_ups), (3, 1, 2));
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
}

impl ClusterCounts {
    /// The message counts so far (and no catch-ups).
    pub fn new(messages_lost: u64, repeats_dropped: u64) -> ClusterCounts {
        ClusterCounts {
            messages_lost,
            repeats_dropped,
            catch_ups: 0,
        }
    }

    /// These counts with `catch_ups` catch-ups so far.
    pub fn with_catch_ups(self, catch_ups: u64) -> ClusterCounts {
        ClusterCounts { catch_ups, ..self }
    }
}

type CountsSource = Box<dyn Fn() -> ClusterCounts + Send + Sync>;

/// A cluster node's metrics: exposed only once the server is a node.
struct ClusterMetrics {
    registry: Registry,
    lease_held: Gauge,
    lease_age: Gauge<f64, AtomicU64>,
    /// Whether the node holds its lease, as the cluster layer last said.
    held: AtomicBool,
    /// When the lease was last renewed: nanoseconds since [`Metrics::created`].
    renewed_at: AtomicU64,
    submit: Histogram,
    renew: Histogram,
    restarts: Counter,
    catch_ups: Counter,
    messages_lost: Counter,
    repeats_dropped: Counter,
    counts: Mutex<Option<CountsSource>>,
}

impl ClusterMetrics {
    fn new() -> ClusterMetrics {
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
            "Round trips of membership changes submitted to the cluster's sequencer (on Redis: one script call on \
             the blocking connection), failed ones included",
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
             cluster's state: lost lease, lost state, or too far behind the log), catch_up (its feed of the \
             cluster's order came back after a drop, and it read the log for what it missed)",
            resyncs.clone(),
        );
        let restarts = resyncs.get_or_create_owned(&[("kind", "restart")]);
        let catch_ups = resyncs.get_or_create_owned(&[("kind", "catch_up")]);
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
        ClusterMetrics {
            registry,
            lease_held,
            lease_age,
            held: AtomicBool::new(false),
            renewed_at: AtomicU64::new(0),
            submit,
            renew,
            restarts,
            catch_ups,
            messages_lost,
            repeats_dropped,
            counts: Mutex::new(None),
        }
    }
}

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

        let by_refusal = Family::<Label, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections refused before they were opened, by reason: not_listening, too_many_connections, \
             too_many_unlinked_connections",
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

    // ---- a cluster node ------------------------------------------------------------------------------------------

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

    pub(crate) fn resynced(&self) {
        self.cluster.restarts.inc();
    }

    pub(crate) fn set_counts(&self, source: CountsSource) {
        *self.cluster.counts.lock() = Some(source);
    }

    /// Brings the scrape-time values of a cluster node up to date.
    fn refresh_cluster(&self) {
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
        }
    }
}

/// Whether a server is fit to serve, as a load balancer's health check asks (see [`Server::health`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// It is listening (and, on a cluster, holds its lease).
    Healthy,
    /// It is not listening: not started yet, closing, or closed.
    NotListening(Status),
    /// It is a node of a cluster that lost its lease: it closed its connections and refuses links until it has
    /// registered again.
    LeaseLost,
}

impl Health {
    /// Whether it is [`Healthy`](Health::Healthy).
    ///
    /// ```
    /// assert!(emitter_core::Health::Healthy.is_healthy());
    /// assert!(!emitter_core::Health::LeaseLost.is_healthy());
    /// ```
    pub fn is_healthy(self) -> bool {
        self == Health::Healthy
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Healthy => f.write_str("ok"),
            Health::NotListening(status) => write!(f, "the server is {status}"),
            Health::LeaseLost => f.write_str("this node lost its cluster lease"),
        }
    }
}

impl Server {
    /// The server's metrics in the Prometheus text format (version 0.0.4; serve it with
    /// [`METRICS_CONTENT_TYPE`]). Every metric is this server's own: another server in the same process has its
    /// own numbers. A node of a cluster adds its `krmx_cluster_…` metrics. `emitter-axum` serves it at
    /// `GET /metrics`; the book's Operations chapter lists every metric.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// let text = server.metrics_text();
    /// assert!(text.contains("\nkrmx_connections_open 0\n"));
    /// assert!(text.contains("krmx_rejections_total{reason=\"app\"} 0"));
    /// ```
    pub fn metrics_text(&self) -> String {
        let metrics = &self.inner.metrics;
        metrics
            .connections_open
            .set(i64::try_from(self.inner.connections.open()).unwrap_or(i64::MAX));
        metrics
            .connections_linked
            .set(i64::try_from(self.inner.connections.linked()).unwrap_or(i64::MAX));
        let (users, linked) = self.inner.registry.lock().counts();
        metrics.users.set(i64::try_from(users).unwrap_or(i64::MAX));
        metrics.users_linked.set(i64::try_from(linked).unwrap_or(i64::MAX));
        let mut text = String::with_capacity(8 * 1024);
        let mut encoded = prometheus_client::encoding::prometheus_text::encode(&mut text, &metrics.registry);
        if encoded.is_ok() && self.sequencer().is_some() {
            metrics.refresh_cluster();
            encoded = prometheus_client::encoding::prometheus_text::encode(&mut text, &metrics.cluster.registry);
        }
        if let Err(error) = encoded {
            // Writing to a String does not fail; a metric that fails to encode is a bug here.
            tracing::error!(%error, "the metrics could not be encoded");
        }
        text
    }

    /// Whether the server is fit to serve: listening, and on a cluster, holding its lease. `emitter-axum` answers
    /// `GET /health` with it (200, or 503 with the reason).
    ///
    /// ```
    /// use emitter_core::{Health, Server, Status};
    ///
    /// let server = Server::new();
    /// assert_eq!(server.health(), Health::NotListening(Status::Initializing));
    /// assert!(!server.health().is_healthy());
    /// ```
    pub fn health(&self) -> Health {
        match self.status() {
            Status::Listening if self.sequencer().is_some() && !self.inner.metrics.lease_held() => Health::LeaseLost,
            Status::Listening => Health::Healthy,
            status => Health::NotListening(status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Change, Entry, LinkAddr, Refused, Sequencer};
    use crate::protocol::Frame;

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
        fn submit(&self, _: Change) -> Result<Vec<Entry>, Refused> {
            Err(Refused::Unavailable("nowhere".to_owned()))
        }
        fn entries_after(&self, _: u64) -> Result<Vec<Entry>, String> {
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
        let host = server.cluster_host();
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

        host.set_counts(|| ClusterCounts::new(7, 2).with_catch_ups(4));
        host.restart(0, Vec::new());
        assert_eq!(server.health(), Health::Healthy, "a restart follows a new registration");
        let text = server.metrics_text();
        for line in [
            "krmx_cluster_lease_held 1",
            "krmx_cluster_resyncs_total{kind=\"restart\"} 1",
            "krmx_cluster_resyncs_total{kind=\"catch_up\"} 4",
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
