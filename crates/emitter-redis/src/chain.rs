//! The log's hash chain, as a node checks it: a log that forked is found out, never applied silently.
//!
//! Redis replication is asynchronous: a replica promoted after the primary died (Sentinel, managed Redis) may have
//! missed the primary's last writes, and then hands out the same seqs again, with other entries. A node that applied
//! the lost entries would skip the new ones as already applied and keep a different view under the same seq. So each
//! entry carries a hash chained to the one before (written by the scripts, see [`crate::script::scripts`]), and this
//! handle remembers the hashes of the recent entries it has read (and of the snapshot it started from). Every entry,
//! notification and head read from Redis is checked against them: an entry whose seq is known must have the same
//! hash, and the entry after a known one must chain onto it. A break is a [`Fork`]: the caller gets
//! [`Error::Forked`](crate::Error::Forked) instead of the entries, the fork is counted and logged, and the node
//! rebuilds from a snapshot.
//!
//! Entries older than the window ([`WINDOW`] seqs) are not checked: a node that far behind finds the new history by
//! the next entry it reads, which chains onto an entry it knows.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// How many of the newest hashes a handle remembers.
pub(crate) const WINDOW: usize = 4096;

/// Where an entry sits in the chain: the hash of the entry before it and its own (`0` before the first entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Link {
    pub(crate) prev: u64,
    pub(crate) hash: u64,
}

/// A break in the chain: Redis's history at `seq` is not the one this handle read before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fork {
    pub(crate) seq: u64,
}

/// The hashes a handle has seen, in one epoch (a new epoch starts a new chain).
#[derive(Default)]
struct Seen {
    epoch: String,
    hashes: BTreeMap<u64, u64>,
}

impl Seen {
    fn in_epoch(&mut self, epoch: &str) -> &mut BTreeMap<u64, u64> {
        if self.epoch != epoch {
            self.epoch = epoch.to_owned();
            self.hashes.clear();
        }
        &mut self.hashes
    }
}

/// One handle's view of the chain, its fork count, and the signal a node's keeper waits on.
#[derive(Default)]
pub(crate) struct Chain {
    seen: Mutex<Seen>,
    forks: AtomicU64,
    /// A fork was found and no snapshot read since: further breaks are the same fork, not counted again.
    pending: AtomicBool,
    forked: Notify,
}

impl Chain {
    /// Starts again from a snapshot at `seq` whose entry hashed to `hash`: everything seen before is forgotten (it
    /// may belong to a history Redis no longer has).
    pub(crate) fn start(&self, epoch: &str, seq: u64, hash: u64) {
        let mut seen = self.seen.lock();
        let hashes = seen.in_epoch(epoch);
        hashes.clear();
        hashes.insert(seq, hash);
        self.pending.store(false, Ordering::SeqCst);
    }

    /// Checks entries read in `epoch` (in seq order) against what was seen before, and remembers them. On a break
    /// nothing is remembered, the fork is reported, and returned.
    pub(crate) fn check(
        &self,
        epoch: &str,
        entries: impl IntoIterator<Item = (u64, Link)> + Clone,
    ) -> Result<(), Fork> {
        let mut seen = self.seen.lock();
        let hashes = seen.in_epoch(epoch);
        let mut previous: Option<(u64, u64)> = None;
        for (seq, link) in entries.clone() {
            let known = hashes.get(&seq).copied();
            let before = match previous {
                Some((prev_seq, prev_hash)) if prev_seq + 1 == seq => Some(prev_hash),
                _ => seq.checked_sub(1).and_then(|prev| hashes.get(&prev).copied()),
            };
            if known.is_some_and(|hash| hash != link.hash) || before.is_some_and(|hash| hash != link.prev) {
                drop(seen);
                return Err(self.report(Fork { seq }));
            }
            previous = Some((seq, link.hash));
        }
        for (seq, link) in entries {
            hashes.insert(seq, link.hash);
        }
        while hashes.len() > WINDOW {
            hashes.pop_first();
        }
        Ok(())
    }

    /// Checks that the entry at `seq` hashed to `hash` (a notification of a new seq, a read of the head), when this
    /// handle knows that seq.
    pub(crate) fn check_head(&self, epoch: &str, seq: u64, hash: u64) -> Result<(), Fork> {
        let mut seen = self.seen.lock();
        let known = seen.in_epoch(epoch).get(&seq).copied();
        drop(seen);
        match known {
            Some(known) if known != hash => Err(self.report(Fork { seq })),
            _ => Ok(()),
        }
    }

    /// Reports that Redis's history is not the one this handle applied, found some other way (the head is behind a
    /// seq this handle read: Redis lost writes): counted and signalled like a break in the chain.
    pub(crate) fn report(&self, fork: Fork) -> Fork {
        if self.pending.swap(true, Ordering::SeqCst) {
            return fork; // found again before the rebuild: the same fork
        }
        self.forks.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            seq = fork.seq,
            "the cluster's log forked: redis no longer has the history this node applied (a failover that lost \
             writes?); rebuilding from a snapshot"
        );
        self.forked.notify_one();
        fork
    }

    /// Whether a fork was found and no snapshot has been read since: the node must rebuild.
    pub(crate) fn pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    /// Forks found so far (one per rebuild they call for, however many reads found it).
    pub(crate) fn forks(&self) -> u64 {
        self.forks.load(Ordering::Relaxed)
    }

    /// Resolves at the next fork reported (or at once, for one reported since the last wait).
    pub(crate) async fn forked(&self) {
        self.forked.notified().await;
    }
}

/// A hash as the scripts write it: up to 16 hex digits (`0`: before the first entry).
pub(crate) fn parse_hash(text: &str) -> Option<u64> {
    u64::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(prev: u64, hash: u64) -> Link {
        Link { prev, hash }
    }

    #[test]
    fn a_chain_that_follows_on_passes_and_one_that_breaks_is_a_fork() {
        let chain = Chain::default();
        chain.start("e", 2, 20);
        assert_eq!(chain.check("e", [(3, link(20, 30)), (4, link(30, 40))]), Ok(()));
        // The same entries again (a catch-up after a submit's answer): known, same hashes.
        assert_eq!(chain.check("e", [(4, link(30, 40))]), Ok(()));
        assert_eq!(chain.check_head("e", 4, 40), Ok(()));
        // Seq 4 again with another entry: Redis lost the one this handle read.
        assert_eq!(chain.check("e", [(4, link(30, 41))]), Err(Fork { seq: 4 }));
        assert!(chain.pending());
        assert_eq!(chain.check_head("e", 3, 31), Err(Fork { seq: 3 }));
        // A new entry that does not chain onto the last one read.
        assert_eq!(chain.check("e", [(5, link(99, 50))]), Err(Fork { seq: 5 }));
        // Inside one read too.
        assert_eq!(
            chain.check("e", [(5, link(40, 50)), (6, link(51, 60))]),
            Err(Fork { seq: 6 })
        );
        assert_eq!(
            chain.forks(),
            1,
            "one fork until a snapshot is read, however often it is found"
        );
        // Nothing of a refused read was remembered: seq 5 is still unknown.
        assert_eq!(chain.check("e", [(5, link(40, 55))]), Ok(()));
        // A snapshot starts over; the next break is a new fork.
        chain.start("e", 9, 90);
        assert!(!chain.pending());
        assert_eq!(chain.check_head("e", 9, 91), Err(Fork { seq: 9 }));
        assert_eq!(chain.forks(), 2);
    }

    #[test]
    fn a_new_epoch_or_a_snapshot_starts_a_new_chain() {
        let chain = Chain::default();
        chain.start("e", 0, 0);
        assert_eq!(chain.check("e", [(1, link(0, 10))]), Ok(()));
        assert_eq!(chain.check("f", [(1, link(0, 11))]), Ok(()));
        chain.start("f", 7, 70);
        assert_eq!(chain.check_head("f", 1, 12), Ok(()), "forgotten at the snapshot");
        assert_eq!(chain.check("f", [(8, link(70, 80))]), Ok(()));
        assert_eq!(chain.forks(), 0);
    }

    #[test]
    fn the_window_is_bounded() {
        let chain = Chain::default();
        chain.start("e", 0, 0);
        for seq in 1..=(WINDOW as u64 + 10) {
            assert_eq!(chain.check("e", [(seq, link(seq - 1, seq))]), Ok(()));
        }
        assert_eq!(chain.seen.lock().hashes.len(), WINDOW);
        assert_eq!(parse_hash("00ff"), Some(255));
        assert_eq!(parse_hash("zz"), None);
    }
}
