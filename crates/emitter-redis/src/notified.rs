//! The entries the scripts' notifications carried (see [`crate::script::scripts`]): a node in step applies them
//! from here instead of reading them back from the log, which was most of what Redis spent on reads.
//!
//! Entries are kept only when they are checked against the hash chain (as a read's are) and follow on from the ones
//! kept before, in one epoch; anything else starts the store over. A read is still made whenever the store does not
//! hold the very next entry a caller needs (a lost notification, a big script that left its entries out, a node
//! further behind), and while a fork found is waiting for its rebuild.

use std::collections::VecDeque;

use parking_lot::Mutex;

use crate::types::LogEntry;

/// How many of the newest notified entries are kept at most.
const KEEP: usize = 4096;

/// The newest entries notified, in seq order without gaps, in one epoch.
pub(crate) struct Notified {
    recent: Mutex<Recent>,
    /// [`KEEP`], or the log's retention where that is less: a node further behind than the log keeps rebuilds from
    /// a snapshot, as [`Options::log_retention`](crate::Options::log_retention) says, whatever it was notified.
    keep: usize,
}

#[derive(Default)]
struct Recent {
    epoch: String,
    entries: VecDeque<LogEntry>,
}

impl Notified {
    /// A store for a log that keeps `retention` entries.
    pub(crate) fn new(retention: u64) -> Notified {
        Notified {
            recent: Mutex::default(),
            keep: usize::try_from(retention).map_or(KEEP, |retention| retention.min(KEEP)),
        }
    }

    /// Keeps `entries` (in seq order, checked against the chain) notified in `epoch`.
    pub(crate) fn put(&self, epoch: &str, entries: Vec<LogEntry>) {
        let mut recent = self.recent.lock();
        let follows = recent.epoch == epoch
            && match (recent.entries.back(), entries.first()) {
                (Some(last), Some(first)) => first.seq == last.seq + 1,
                _ => true,
            };
        if !follows {
            recent.entries.clear();
            epoch.clone_into(&mut recent.epoch);
        }
        recent.entries.extend(entries);
        let excess = recent.entries.len().saturating_sub(self.keep);
        recent.entries.drain(..excess);
    }

    /// The entries after `seq` in `epoch`, when the store holds the one right after it; `None`: read the log.
    pub(crate) fn after(&self, epoch: &str, seq: u64) -> Option<Vec<LogEntry>> {
        let recent = self.recent.lock();
        let first = recent.entries.front()?.seq;
        if recent.epoch != epoch || first > seq + 1 || recent.entries.back()?.seq <= seq {
            return None;
        }
        let skip = usize::try_from(seq + 1 - first).ok()?;
        Some(recent.entries.iter().skip(skip).cloned().collect())
    }

    /// Forgets everything (a snapshot was read: what was notified before may be a history Redis no longer has).
    pub(crate) fn clear(&self) {
        self.recent.lock().entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::LogEvent;

    fn entries(seqs: std::ops::RangeInclusive<u64>) -> Vec<LogEntry> {
        seqs.map(|seq| LogEntry {
            seq,
            event: LogEvent::Joined {
                user: format!("u{seq}"),
            },
            by: "n".into(),
        })
        .collect()
    }

    fn seqs(entries: Option<Vec<LogEntry>>) -> Option<Vec<u64>> {
        entries.map(|entries| entries.iter().map(|entry| entry.seq).collect())
    }

    #[test]
    fn serves_what_follows_on_and_nothing_else() {
        let notified = Notified::new(100);
        assert_eq!(seqs(notified.after("e", 0)), None, "nothing notified");
        notified.put("e", entries(3..=4));
        notified.put("e", entries(5..=6));
        assert_eq!(seqs(notified.after("e", 2)), Some(vec![3, 4, 5, 6]));
        assert_eq!(seqs(notified.after("e", 4)), Some(vec![5, 6]));
        assert_eq!(seqs(notified.after("e", 1)), None, "seq 2 was not notified: read it");
        assert_eq!(seqs(notified.after("e", 6)), None, "nothing newer: read");
        assert_eq!(seqs(notified.after("f", 2)), None, "another epoch");
        // A notification lost in between: the store starts over from the new entries.
        notified.put("e", entries(9..=9));
        assert_eq!(seqs(notified.after("e", 6)), None);
        assert_eq!(seqs(notified.after("e", 8)), Some(vec![9]));
        notified.clear();
        assert_eq!(seqs(notified.after("e", 8)), None);
    }

    #[test]
    fn keeps_the_newest_only() {
        let notified = Notified::new(100_000);
        notified.put("e", entries(1..=(KEEP as u64 + 10)));
        assert_eq!(seqs(notified.after("e", 0)), None, "the oldest are gone");
        assert_eq!(notified.after("e", 10).map(|entries| entries.len()), Some(KEEP));
        // No more than the log keeps.
        let notified = Notified::new(10);
        notified.put("e", entries(1..=30));
        assert_eq!(seqs(notified.after("e", 19)), None);
        assert_eq!(notified.after("e", 20).map(|entries| entries.len()), Some(10));
    }
}
