//! The fan-out log: every frame with more than one recipient (broadcasts, and the `krmx/joined|linked|unlinked|left`
//! messages), once, in the one order every recipient sees.
//!
//! A broadcast appends one entry; it does not touch its recipients. Each connection's outbox reads the log from its
//! own position, within the windows in which its connection was linked (see `outbox.rs`). So a broadcast costs the
//! same for 10 users as for 10,000, the work of handing each recipient its frame is done by that recipient's writer
//! (on whichever core runs it), and a backlog costs a connection a position in the log rather than an entry per frame.
//!
//! Entries live in fixed-size segments chained by shared pointers. Appending happens under the registry's fan-out
//! lock; reading takes no lock at all: a reader holds the segment it reads, which keeps that segment and every later
//! one alive, and a segment is freed once no reader holds it or an earlier one. A reader's backlog in bytes is the
//! log's [`bytes`](Log::bytes) less its next entry's [`bytes_before`](Entry::bytes_before); the registry bounds it
//! by each connection's outbound budget (what a reader keeps alive is that, plus the entries it already read in its
//! segment: fewer than [`SEGMENT`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::Notify;

use crate::protocol::Frame;
use crate::sync::Mutex;
use crate::transport::id::ConnectionId;

/// Entries per segment.
pub(crate) const SEGMENT: u64 = 256;

/// What an entry costs beyond its frame's bytes (its slot in a segment and the frame's shared header), counted so
/// that a flood of tiny frames spends a budget too.
pub(crate) const ENTRY_OVERHEAD: u64 = 64;

/// One frame for every connection linked when it was appended, except `skip`.
pub(crate) struct Entry {
    pub(crate) frame: Frame,
    pub(crate) skip: Option<ConnectionId>,
    /// The log's [`bytes`](Log::bytes) before this entry was appended.
    pub(crate) bytes_before: u64,
}

pub(crate) struct Segment {
    first: u64,
    slots: Box<[OnceLock<Entry>]>,
    next: OnceLock<Arc<Segment>>,
}

impl Drop for Segment {
    /// Frees the segments after this one that nothing else holds one at a time, rather than by recursion (a chain as
    /// long as a stalled reader let the log grow would overflow the stack).
    fn drop(&mut self) {
        let mut next = self.next.take();
        while let Some(segment) = next {
            next = match Arc::try_unwrap(segment) {
                Ok(mut segment) => segment.next.take(),
                // Someone else holds the rest of the chain: it is theirs to free.
                Err(_) => None,
            };
        }
    }
}

impl Segment {
    fn new(first: u64) -> Arc<Segment> {
        Arc::new(Segment {
            first,
            slots: (0..SEGMENT).map(|_| OnceLock::new()).collect(),
            next: OnceLock::new(),
        })
    }

    /// The segment that holds `seq`, this one or a later one, if it exists yet.
    pub(crate) fn find(self: &Arc<Segment>, seq: u64) -> Option<Arc<Segment>> {
        let mut segment = self.clone();
        while seq >= segment.first + SEGMENT {
            segment = segment.next.get()?.clone();
        }
        Some(segment)
    }

    /// The number of the first entry after this segment.
    pub(crate) fn end(&self) -> u64 {
        self.first + SEGMENT
    }

    /// The entry `seq`, if this segment holds it and it was appended.
    pub(crate) fn get(&self, seq: u64) -> Option<&Entry> {
        let index = seq.checked_sub(self.first)?;
        self.slots.get(usize::try_from(index).ok()?)?.get()
    }
}

/// The log. Append under the fan-out lock only.
pub(crate) struct Log {
    tail: Mutex<Arc<Segment>>,
    /// The number of the next entry: every entry before it can be read.
    head: AtomicU64,
    /// The bytes appended so far, each entry counted as its frame's bytes plus [`ENTRY_OVERHEAD`].
    bytes: AtomicU64,
    /// Wakes the writers waiting for something new in the log.
    appended: Notify,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            tail: Mutex::new(Segment::new(0)),
            head: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            appended: Notify::new(),
        }
    }
}

impl Log {
    /// Appends an entry and returns its number. Readers see it once this returns; call [`wake`](Log::wake) after
    /// the fan-out lock is released.
    pub(crate) fn append(&self, frame: Frame, skip: Option<ConnectionId>) -> u64 {
        let mut tail = self.tail.lock();
        let seq = self.head.load(Ordering::Acquire);
        let bytes = self.bytes.load(Ordering::Acquire);
        if seq == tail.first + SEGMENT {
            let next = Segment::new(seq);
            // Linked before it is published: a reader that sees the new head can always find its segment.
            let _ = tail.next.set(next.clone());
            *tail = next;
        }
        let size = frame.bytes().len() as u64 + ENTRY_OVERHEAD;
        let _ = tail.slots[(seq - tail.first) as usize].set(Entry {
            frame,
            skip,
            bytes_before: bytes,
        });
        self.bytes.store(bytes + size, Ordering::Release);
        self.head.store(seq + 1, Ordering::Release);
        seq
    }

    /// The number the next entry will get, and a segment to start reading it from.
    pub(crate) fn position(&self) -> (u64, Arc<Segment>) {
        let tail = self.tail.lock();
        (self.head.load(Ordering::Acquire), tail.clone())
    }

    /// The number of the next entry: every entry before it can be read.
    pub(crate) fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// The bytes appended so far (frames plus [`ENTRY_OVERHEAD`] each); less an entry's
    /// [`bytes_before`](Entry::bytes_before), a reader's backlog from that entry on.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// Wakes the writers waiting on [`appended`](Log::appended).
    pub(crate) fn wake(&self) {
        self.appended.notify_waiters();
    }

    pub(crate) fn appended(&self) -> &Notify {
        &self.appended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u64) -> Frame {
        Frame::encode(&n).expect("a number serializes")
    }

    #[test]
    fn entries_are_found_across_segments() {
        let log = Log::default();
        let (start, segment) = log.position();
        assert_eq!(start, 0);
        for n in 0..3 * SEGMENT + 5 {
            assert_eq!(log.append(frame(n), None), n);
        }
        assert_eq!(log.head(), 3 * SEGMENT + 5);
        for n in [0, 1, SEGMENT - 1, SEGMENT, 2 * SEGMENT + 7, 3 * SEGMENT + 4] {
            let holder = segment.find(n).unwrap();
            assert_eq!(holder.get(n).unwrap().frame, frame(n));
        }
        assert!(segment.find(4 * SEGMENT).is_none(), "not appended yet");
    }

    #[test]
    fn a_reader_keeps_what_it_has_not_read() {
        let log = Log::default();
        let (_, first) = log.position();
        for n in 0..2 * SEGMENT {
            log.append(frame(n), None);
        }
        // Nothing but the reader holds the first segment (the log holds only its tail, and links point forward), and
        // the reader's segment keeps the chain after it alive.
        assert_eq!(Arc::strong_count(&first), 1);
        let later = first.find(SEGMENT + 3).unwrap();
        drop(first);
        assert_eq!(later.get(SEGMENT + 3).unwrap().frame, frame(SEGMENT + 3));
    }

    #[test]
    fn each_entry_knows_the_bytes_before_it() {
        let log = Log::default();
        let (_, first) = log.position();
        let size = frame(7).bytes().len() as u64 + ENTRY_OVERHEAD;
        for n in 0..SEGMENT + 1 {
            log.append(frame(n % 10), None);
        }
        assert_eq!(first.get(0).unwrap().bytes_before, 0);
        assert_eq!(log.bytes(), (SEGMENT + 1) * size);
        let second = first.find(SEGMENT).unwrap();
        assert_eq!(second.get(SEGMENT).unwrap().bytes_before, SEGMENT * size);
    }

    #[test]
    fn a_chain_of_a_million_segments_is_dropped_without_recursion() {
        // Segments without slots, so that the chain costs memory for its links only; dropping it recursively would
        // overflow the test thread's stack long before the end.
        let empty = |first: u64, next: Option<Arc<Segment>>| {
            let segment = Segment {
                first,
                slots: Box::new([]),
                next: OnceLock::new(),
            };
            if let Some(next) = next {
                let _ = segment.next.set(next);
            }
            Arc::new(segment)
        };
        let mut head = empty(1_000_000, None);
        let tail = Arc::downgrade(&head);
        for first in (0..1_000_000).rev() {
            head = empty(first, Some(head));
        }
        assert!(tail.upgrade().is_some());
        drop(head);
        assert!(tail.upgrade().is_none(), "the whole chain was freed");
    }

    #[test]
    fn dropping_a_segment_leaves_a_chain_someone_else_holds() {
        let log = Log::default();
        let (_, first) = log.position();
        for n in 0..3 * SEGMENT {
            log.append(frame(n), None);
        }
        let middle = first.find(SEGMENT).unwrap();
        drop(first);
        assert_eq!(
            middle
                .find(2 * SEGMENT + 1)
                .unwrap()
                .get(2 * SEGMENT + 1)
                .unwrap()
                .frame,
            frame(2 * SEGMENT + 1)
        );
    }
}
