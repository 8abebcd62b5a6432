//! What the user tasks of one worker process share.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::spec::Spec;
use crate::hist::Histogram;
use crate::window::Board;

/// The latency histogram is split in this many shards, by user, so that receivers rarely wait on each other's lock.
pub(super) const SHARDS: usize = 16;

/// What every user task of a worker process shares: the spec, the counters and histograms the reports add up, the
/// phases' notifications, and each sender's window.
pub(super) struct Shared {
    pub(super) spec: Spec,
    pub(super) link_latency: Mutex<Histogram>,
    pub(super) link_times: Mutex<(u64, u64)>,
    pub(super) link_settled: AtomicU32,
    pub(super) linked: AtomicU32,
    pub(super) link_notify: Notify,
    pub(super) views_complete: AtomicU32,
    pub(super) views_correct: AtomicU32,
    pub(super) views_at: Mutex<u64>,
    pub(super) views_notify: Notify,
    pub(super) latency: Vec<Mutex<Histogram>>,
    pub(super) errors: Mutex<Vec<String>>,
    pub(super) disconnected: AtomicU32,
    pub(super) sent_total: AtomicU64,
    pub(super) senders_done: AtomicU32,
    pub(super) senders_notify: Notify,
    /// Broadcasts received, per local user and sender: `progress[local * senders + sender]`. A sender's window counts
    /// its messages that the slowest local user has not received yet; a user that is gone reads as `u64::MAX`.
    pub(super) progress: Vec<AtomicU64>,
    /// What the other load processes have received, when there are several.
    pub(super) board: Option<Board>,
}

impl Shared {
    /// The shared state of a worker running `spec`, with no user linked yet.
    pub(super) fn new(spec: &Spec) -> Result<Shared, Box<dyn std::error::Error>> {
        let senders = spec.senders.1.saturating_sub(spec.senders.0) as usize;
        Ok(Shared {
            link_latency: Mutex::new(Histogram::default()),
            link_times: Mutex::new((u64::MAX, 0)),
            link_settled: AtomicU32::new(0),
            linked: AtomicU32::new(0),
            link_notify: Notify::new(),
            views_complete: AtomicU32::new(0),
            views_correct: AtomicU32::new(0),
            views_at: Mutex::new(0),
            views_notify: Notify::new(),
            latency: (0..SHARDS).map(|_| Mutex::new(Histogram::default())).collect(),
            errors: Mutex::new(Vec::new()),
            disconnected: AtomicU32::new(0),
            sent_total: AtomicU64::new(0),
            senders_done: AtomicU32::new(0),
            senders_notify: Notify::new(),
            progress: (0..spec.count as usize * senders).map(|_| AtomicU64::new(0)).collect(),
            board: match &spec.board {
                Some(board) => Some(Board::open(board, senders)?),
                None => None,
            },
            spec: spec.clone(),
        })
    }

    pub(super) fn senders(&self) -> usize {
        self.spec.senders.1.saturating_sub(self.spec.senders.0) as usize
    }

    /// The progress slot of local user `index` for messages from `sender`, if `sender` is one.
    pub(super) fn slot(&self, index: u32, sender: u32) -> Option<&AtomicU64> {
        let spec = &self.spec;
        if !(spec.senders.0..spec.senders.1).contains(&sender) || index < spec.first {
            return None;
        }
        let local = (index - spec.first) as usize;
        self.progress
            .get(local * self.senders() + (sender - spec.senders.0) as usize)
    }

    /// How many of `sender`'s messages every local user has received.
    pub(super) fn local_slowest(&self, sender: u32) -> u64 {
        (self.spec.first..self.spec.first + self.spec.count)
            .filter_map(|index| self.slot(index, sender))
            .map(|slot| slot.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }

    /// How many of `sender`'s messages every user has received, in this process and (as last published) the others.
    pub(super) fn slowest(&self, sender: u32) -> u64 {
        let local = self.local_slowest(sender);
        match &self.board {
            Some(board) => local.min(board.remote(sender.saturating_sub(self.spec.senders.0) as usize)),
            None => local,
        }
    }

    /// Publishes this process's progress and reads the others', once a millisecond, until the process ends.
    pub(super) async fn share_progress(self: Arc<Self>) {
        let Some(board) = &self.board else { return };
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failed = false;
        loop {
            tick.tick().await;
            let local: Vec<u64> = (self.spec.senders.0..self.spec.senders.1)
                .map(|sender| self.local_slowest(sender))
                .collect();
            if let Err(error) = board.exchange(&local) {
                // The windows stop opening and the run shows it; say why once.
                if !failed {
                    failed = true;
                    self.error(format!("sharing progress: {error}"));
                }
            }
        }
    }

    /// Takes a user that is gone out of every sender's window.
    pub(super) fn gone(&self, index: u32) {
        for sender in self.spec.senders.0..self.spec.senders.1 {
            if let Some(slot) = self.slot(index, sender) {
                slot.store(u64::MAX, Ordering::Relaxed);
            }
        }
    }

    /// How many of this worker's users send.
    pub(super) fn local_senders(&self) -> u32 {
        let spec = &self.spec;
        let (start, end) = (
            spec.senders.0.max(spec.first),
            spec.senders.1.min(spec.first + spec.count),
        );
        end.saturating_sub(start)
    }

    /// A sender is done sending (or will never send).
    pub(super) fn sender_done(&self, sent: u64) {
        self.sent_total.fetch_add(sent, Ordering::SeqCst);
        if self.senders_done.fetch_add(1, Ordering::SeqCst) + 1 == self.local_senders() {
            self.senders_notify.notify_one();
        }
    }

    pub(super) fn error(&self, message: String) {
        let mut errors = self.errors.lock();
        if errors.len() < 5 {
            errors.push(message);
        }
    }

    pub(super) fn link_settled(&self, done: Option<(u64, u64)>) {
        if let Some((started, finished)) = done {
            self.link_latency.lock().record(finished.saturating_sub(started));
            let mut times = self.link_times.lock();
            times.0 = times.0.min(started);
            times.1 = times.1.max(finished);
            self.linked.fetch_add(1, Ordering::SeqCst);
        }
        if self.link_settled.fetch_add(1, Ordering::SeqCst) + 1 == self.spec.count {
            self.link_notify.notify_one();
        }
    }
}
