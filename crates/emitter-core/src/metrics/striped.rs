//! Counters and histograms for the message path: each update one or two atomic adds, on cache lines per thread
//! (*stripes*), summed when scraped; `prometheus-client`'s own histogram takes a mutex per observation.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// How many stripes a hot counter has: enough that the worker threads of a runtime on a large machine rarely share
/// one.
pub(super) const STRIPES: usize = 16;

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
pub(super) const DEPTH_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

impl Histogram {
    pub(super) fn new(bounds: &'static [u64], scale: f64, stripes: usize) -> Histogram {
        debug_assert!(bounds.len() <= MAX_BOUNDS && bounds.is_sorted());
        Histogram(Arc::new(HistogramInner {
            bounds: &bounds[..bounds.len().min(MAX_BOUNDS)],
            scale,
            stripes: (0..stripes.max(1)).map(|_| HistogramStripe::default()).collect(),
        }))
    }

    /// Latencies, exposed in seconds; one stripe (they are observed on the membership path, a few per link).
    pub(super) fn seconds() -> Histogram {
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
    pub(super) fn totals(&self) -> ([u64; MAX_BOUNDS + 1], u64) {
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
