//! A small log-linear histogram of nanosecond values (about 3% resolution) that merges across tasks and processes.

use serde::{Deserialize, Serialize};

const SUB: u32 = 5; // 32 sub-buckets per power of two
const BUCKETS: usize = (64 - SUB as usize + 1) << SUB;

/// Counts of values, bucketed by magnitude.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

fn index(value: u64) -> usize {
    if value < (1 << SUB) {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros();
    let mantissa = (value >> (exponent - SUB)) & ((1 << SUB) - 1);
    (((exponent - SUB + 1) << SUB) + mantissa as u32) as usize
}

/// The middle of a bucket's range.
fn value_of(index: usize) -> u64 {
    let index = index as u64;
    if index < (1 << SUB) {
        return index;
    }
    let exponent = (index >> SUB) + SUB as u64 - 1;
    let mantissa = index & ((1 << SUB) - 1);
    let low = ((1 << SUB) + mantissa) << (exponent - SUB as u64);
    low + (1 << (exponent - SUB as u64)) / 2
}

/// A histogram as it travels between processes: non-empty buckets only.
#[derive(Serialize, Deserialize, Default, Clone, Debug)]
pub struct Wire {
    buckets: Vec<(u32, u64)>,
    max: u64,
}

impl Histogram {
    /// Records one value.
    pub fn record(&mut self, value: u64) {
        self.counts[index(value)] += 1;
        self.total += 1;
        self.max = self.max.max(value);
    }

    /// How many values were recorded.
    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Adds another histogram's counts to this one.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The value at quantile `q` (0..=1); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        if q >= 1.0 {
            return self.max;
        }
        let rank = ((q * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return value_of(index).min(self.max);
            }
        }
        self.max
    }

    /// The compact form for sending to another process.
    pub fn to_wire(&self) -> Wire {
        Wire {
            buckets: self
                .counts
                .iter()
                .enumerate()
                .filter(|(_, count)| **count > 0)
                .map(|(index, count)| (index as u32, *count))
                .collect(),
            max: self.max,
        }
    }

    /// Rebuilds a histogram from [`Histogram::to_wire`].
    pub fn from_wire(wire: &Wire) -> Histogram {
        let mut histogram = Histogram::default();
        for &(index, count) in &wire.buckets {
            if let Some(slot) = histogram.counts.get_mut(index as usize) {
                *slot += count;
                histogram.total += count;
            }
        }
        histogram.max = wire.max;
        histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_few_percent() {
        let mut histogram = Histogram::default();
        for value in 1..=100_000u64 {
            histogram.record(value * 1000);
        }
        for (q, expected) in [(0.5, 50_000_000.0), (0.99, 99_000_000.0)] {
            let got = histogram.quantile(q) as f64;
            assert!((got - expected).abs() / expected < 0.04, "{q}: {got}");
        }
        assert_eq!(histogram.quantile(1.0), 100_000_000);
        let back = Histogram::from_wire(&histogram.to_wire());
        assert_eq!(back.count(), 100_000);
        assert_eq!(back.quantile(0.5), histogram.quantile(0.5));
        for value in [0, 1, 31, 32, 33, 1 << 40, u64::MAX] {
            let i = index(value);
            assert!(i < BUCKETS);
            let mid = value_of(i) as f64;
            assert!(
                value < 32 || (mid - value as f64).abs() / (value as f64) < 0.04,
                "{value}"
            );
        }
    }
}
