//! A connection's outgoing queue: bounded, and waking its writer once per burst rather than once per frame.
//!
//! The core pushes into it under its fan-out lock, once per recipient of every broadcast, so pushing must be cheap:
//! a short mutex and, only when the queue goes from empty to not empty, one wake-up. The writer takes everything
//! queued at once and writes it with one flush.

use std::collections::VecDeque;
use std::sync::Arc;

use emitter_core::protocol::Frame;
use emitter_core::transport::{ConnectionSink, PushError, Snapshot};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// One entry: a frame, or a newcomer's snapshot, which counts as one entry however many frames it holds.
pub(crate) enum Outgoing {
    One(Frame),
    Snapshot(Snapshot),
}

struct Entries {
    queued: VecDeque<Outgoing>,
    closing: bool,
}

pub(crate) struct Queue {
    entries: Mutex<Entries>,
    capacity: usize,
    /// Something was queued into an empty queue, or closing began.
    changed: Notify,
    /// Closing began (for a writer that must give up a blocked write).
    closed: Notify,
}

impl Queue {
    pub(crate) fn new(capacity: usize) -> Queue {
        Queue {
            entries: Mutex::new(Entries {
                queued: VecDeque::new(),
                closing: false,
            }),
            capacity,
            changed: Notify::new(),
            closed: Notify::new(),
        }
    }

    fn enqueue(&self, entry: Outgoing) -> Result<(), PushError> {
        let mut entries = self.entries.lock();
        if entries.closing {
            return Err(PushError::Closed);
        }
        if entries.queued.len() >= self.capacity {
            return Err(PushError::Full);
        }
        let was_empty = entries.queued.is_empty();
        entries.queued.push_back(entry);
        drop(entries);
        if was_empty {
            // Stores a permit if the writer is busy, so the wake-up is never lost.
            self.changed.notify_one();
        }
        Ok(())
    }

    /// Moves everything queued into `into` (which the writer keeps, to reuse its allocation). Returns whether the
    /// connection is closing.
    pub(crate) fn take(&self, into: &mut VecDeque<Outgoing>) -> bool {
        let mut entries = self.entries.lock();
        std::mem::swap(&mut entries.queued, into);
        entries.closing
    }

    /// Resolves when something was queued into an empty queue or closing began (maybe spuriously: check `take`).
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Resolves once closing began.
    pub(crate) async fn closed(&self) {
        loop {
            let notified = self.closed.notified();
            if self.entries.lock().closing {
                return;
            }
            notified.await;
        }
    }
}

/// The core's end of a connection's queue; the writer holds the other.
pub(crate) struct QueueSink(pub(crate) Arc<Queue>);

impl ConnectionSink for QueueSink {
    fn push(&self, frame: Frame) -> Result<(), PushError> {
        self.0.enqueue(Outgoing::One(frame))
    }

    fn push_snapshot(&self, snapshot: Snapshot) -> Result<(), PushError> {
        self.0.enqueue(Outgoing::Snapshot(snapshot))
    }

    fn close(&self) {
        self.0.entries.lock().closing = true;
        self.0.changed.notify_one();
        self.0.closed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Frame {
        Frame::encode(text)
    }

    #[test]
    fn bounded_and_closable() {
        let queue = Arc::new(Queue::new(2));
        let sink = QueueSink(queue.clone());
        assert_eq!(sink.push(frame("a")), Ok(()));
        assert_eq!(sink.push(frame("b")), Ok(()));
        assert_eq!(sink.push(frame("d")), Err(PushError::Full));
        let mut taken = VecDeque::new();
        assert!(!queue.take(&mut taken));
        assert_eq!(taken.len(), 2);
        sink.close();
        assert_eq!(sink.push(frame("e")), Err(PushError::Closed));
        taken.clear();
        assert!(queue.take(&mut taken));
    }

    #[tokio::test]
    async fn one_wake_per_burst_and_none_lost() {
        let queue = Arc::new(Queue::new(8));
        let sink = QueueSink(queue.clone());
        sink.push(frame("a")).unwrap();
        sink.push(frame("b")).unwrap();
        // The first push into the empty queue left a permit: this returns at once.
        tokio::time::timeout(std::time::Duration::from_secs(1), queue.changed())
            .await
            .unwrap();
        let mut taken = VecDeque::new();
        queue.take(&mut taken);
        assert_eq!(taken.len(), 2);
        sink.push(frame("c")).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), queue.changed())
            .await
            .unwrap();
        let closed = queue.closed();
        sink.close();
        tokio::time::timeout(std::time::Duration::from_secs(1), closed)
            .await
            .unwrap();
    }
}
