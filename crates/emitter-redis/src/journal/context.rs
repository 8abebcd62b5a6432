//! What the tasks of one journal share: its options and counters, and each attached domain's place (its keys, its
//! model, what wakes its owner and its follower). Apart from `mod.rs` so that the owner and follower tasks depend on
//! it, not on the journal handle that starts them.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use emitter_state::journal::{JournalModel, MembershipChange};
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use super::store::DomainKeys;
use crate::cluster::Cluster;

/// Where the membership seqs given to [`Journal::membership`](emitter_state::journal::Journal::membership) come from, which decides whether a seq recorded in
/// Redis by one process means anything to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MembershipSeqs {
    /// The cluster's log (emitter-redis nodes): every process is told every change with the same seq, so a new owner
    /// skips those the old one handled. Seqs of another cluster epoch count as unhandled.
    #[default]
    Cluster,
    /// A counter of this process (one process using Redis as a store): a seq recorded by another process (a previous
    /// run) says nothing about this one's, so every change this process is told of is executed.
    Process,
}

/// How a [`RedisJournal`](super::RedisJournal) behaves. Build it from the defaults:
///
/// ```
/// use std::time::Duration;
/// use emitter_redis::journal::JournalOptions;
///
/// let options = JournalOptions { lease: Duration::from_secs(2), ..JournalOptions::default() };
/// assert_eq!(options.batch, 256);
/// ```
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// How long a domain's owner keeps its lease without renewing, by Redis's clock: when the owner dies, another
    /// process takes the domain over after at most this long. Renewed every third of it. Default: 5 s.
    pub lease: Duration,
    /// How many requests may wait in this process's queue for Redis before [`Journal::submit`](emitter_state::journal::Journal::submit) refuses with
    /// [`JournalError::Full`](emitter_state::journal::JournalError::Full). Default: 65,536.
    pub queue: usize,
    /// How many requests (membership changes and inbox requests) the owner executes and commits in one script call
    /// at most. Default: 256.
    pub batch: usize,
    /// How often a follower reads the log and an owner the inbox without having been notified, so that a lost
    /// notification only delays. Default: 500 ms.
    pub poll_interval: Duration,
    /// How many membership changes each domain remembers for a future owner. Default: 4,096.
    pub membership_ring: usize,
    /// How many of the newest log entries a checkpoint leaves in the log (a follower further behind loads the
    /// checkpoint instead); never any after the newest checkpoint. Default: 10,000.
    pub log_retention: u64,
    /// Where membership seqs come from. Default: [`MembershipSeqs::Cluster`].
    pub membership: MembershipSeqs,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            lease: Duration::from_secs(5),
            queue: 65_536,
            batch: 256,
            poll_interval: Duration::from_millis(500),
            membership_ring: 4_096,
            log_retention: 10_000,
            membership: MembershipSeqs::Cluster,
        }
    }
}

/// Counters of a journal's work since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct JournalStats {
    /// Requests sent to an inbox.
    pub submitted: u64,
    /// Requests whose batch failed (Redis unreachable, a lost reply): dropped, maybe in the inbox.
    pub submit_failures: u64,
    /// Requests refused because the queue was full.
    pub queue_full: u64,
    /// Commits made as an owner.
    pub commits: u64,
    /// Times this process lost a domain's lease (a refused renewal or commit, or no renewal in time).
    pub leases_lost: u64,
    /// Times a follower loaded its replica again because the log no longer continued from it.
    pub reloads: u64,
    /// Commits whose reply was lost (a timeout, a dropped connection), resolved by reading head.
    pub lost_replies: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) submitted: AtomicU64,
    pub(super) submit_failures: AtomicU64,
    pub(super) queue_full: AtomicU64,
    pub(super) commits: AtomicU64,
    pub(super) leases_lost: AtomicU64,
    pub(super) reloads: AtomicU64,
    pub(super) lost_replies: AtomicU64,
}

pub(super) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// What every task of a journal shares; never the journal itself, so that dropping the last handle stops them.
pub(super) struct Ctx {
    pub(super) cluster: Cluster,
    pub(super) options: JournalOptions,
    /// This journal's random token, written with each lease it holds.
    pub(super) token: String,
    /// Turns true when the journal closes.
    pub(super) closing: watch::Receiver<bool>,
    pub(super) counters: Counters,
}

/// A membership change waiting for an owner.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub(super) seq: u64,
    pub(super) change: MembershipChange,
    pub(super) user: String,
}

/// One attached domain.
pub(super) struct Domain {
    pub(super) keys: DomainKeys,
    pub(super) model: Arc<dyn JournalModel>,
    /// New requests or membership changes (for the owner).
    pub(super) work: Notify,
    /// The lease was released (for a process waiting to claim it).
    pub(super) released: Notify,
    /// A commit (for the follower).
    pub(super) committed: Notify,
    pub(super) ring: Mutex<VecDeque<Pending>>,
    /// The n of the replica; `None` until it is loaded.
    pub(super) applied: watch::Sender<Option<u64>>,
    pub(super) owning: AtomicBool,
}

/// 128 random bits as hex: unique per journal, not secret.
pub(super) fn random_token() -> String {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let count = COUNT.fetch_add(1, Ordering::Relaxed);
    let mut token = String::with_capacity(32);
    for half in 0..2u8 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u8(half);
        hasher.write_u128(nanos);
        hasher.write_u64(count);
        hasher.write_u32(std::process::id());
        token.push_str(&format!("{:016x}", hasher.finish()));
    }
    token
}
