//! A connection's outgoing frames, as its transport takes them to write.
//!
//! Two sources, merged in the order they were queued:
//! - the connection's **own** frames (replies to its requests, `send`s to its user, its snapshot, the `krmx/left` about
//!   itself), in a short bounded queue. Each is tagged with the fan-out log's head when it was queued;
//! - the **fan-out log** (see `fanout.rs`), read from the connection's own position, within the *windows* in which the
//!   connection was linked: from just after the `krmx/linked` that linked it to just after the `krmx/unlinked` that
//!   unlinked it.
//!
//! An own frame tagged `t` is written after every log entry before `t` that is for this connection, and before every
//! one from `t` on. A backlog therefore costs a connection its position in the log, not an entry per frame.
//!
//! What a connection holds is bounded in bytes by its *budget*: its own frames' bytes plus the log's bytes from the
//! next entry it reads on (`held`). Once it is closing it lets go of the log at once: a slow consumer drops
//! what it had not read from the log; any other closing connection copies what is left in its windows (shared
//! frames, no bytes copied) into its own queue, so that it still gets it before the close frame.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::protocol::Frame;
use crate::sync::Mutex;
use crate::transport::close_reason::CloseReason;
use crate::transport::fanout::{Log, Segment, ENTRY_OVERHEAD};
use crate::transport::id::ConnectionId;
use crate::transport::snapshot::{Snapshot, SnapshotCursor};

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The connection's queue is full: it is not reading fast enough.
    Full,
    /// The connection is closing or closed.
    Closed,
}

/// One connection's outgoing frames, for its transport to take and write. Made by
/// [`Host::connect`](crate::transport::Host::connect).
///
/// Wait with [`ready`](Outbox::ready), then [`take`](Outbox::take) what there is, write it, and repeat; once `take`
/// says the connection is closing, write what it returned and close the socket with the code and reason of its
/// [`close_reason`](Outbox::close_reason).
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

struct Shared {
    id: ConnectionId,
    log: Arc<Log>,
    /// The most own frames that may wait (a snapshot counts as one).
    capacity: usize,
    /// The most bytes the connection may hold: its own frames plus the log from the next entry it reads on.
    budget: u64,
    state: Mutex<State>,
    /// An own frame was queued, a window opened or closed, or closing began.
    changed: Notify,
    /// Closing began.
    closed: Notify,
}

struct State {
    own: VecDeque<Own>,
    /// The bytes of the own frames waiting, each counted with [`ENTRY_OVERHEAD`] (a snapshot as none: its frames are
    /// the registry's, shared).
    own_bytes: u64,
    windows: VecDeque<Window>,
    /// The first log entry not looked at yet.
    cursor: u64,
    /// The segment that holds `cursor`, while the connection reads the log.
    segment: Option<Arc<Segment>>,
    /// Why closing began; `None` until it did.
    closing: Option<CloseReason>,
}

/// An own frame, written once the log before `at` has been.
struct Own {
    at: u64,
    item: Item,
}

enum Item {
    Frame(Frame),
    Snapshot(Snapshot, SnapshotCursor),
}

impl Item {
    /// What it counts against the budget.
    fn size(&self) -> u64 {
        match self {
            Item::Frame(frame) => frame.bytes().len() as u64 + ENTRY_OVERHEAD,
            Item::Snapshot(..) => 0,
        }
    }
}

/// A frame that is ready: an own frame, handed over, or one lent from the log or a snapshot.
enum Ready<'a> {
    Owned(Frame),
    Lent(&'a Frame),
}

impl Ready<'_> {
    fn frame(&self) -> &Frame {
        match self {
            Ready::Owned(frame) => frame,
            Ready::Lent(frame) => frame,
        }
    }

    fn into_owned(self) -> Frame {
        match self {
            Ready::Owned(frame) => frame,
            Ready::Lent(frame) => frame.clone(),
        }
    }
}

/// Log entries `from..until` are for this connection (but those that skip it).
struct Window {
    from: u64,
    until: Option<u64>,
    /// Where to start reading `from`; handed to the reader when it gets there, so that a window does not keep the
    /// log's old segments alive.
    start: Option<Arc<Segment>>,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("connection", &self.shared.id)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    pub(crate) fn new(id: ConnectionId, log: Arc<Log>, capacity: usize, budget: usize) -> Outbox {
        let cursor = log.head();
        Outbox {
            shared: Arc::new(Shared {
                id,
                log,
                capacity,
                budget: budget as u64,
                state: Mutex::new(State {
                    own: VecDeque::new(),
                    own_bytes: 0,
                    windows: VecDeque::new(),
                    cursor,
                    segment: None,
                    closing: None,
                }),
                changed: Notify::new(),
                closed: Notify::new(),
            }),
        }
    }

    /// Queues an own frame. Refused when the connection is closing, or when its queue is full.
    pub(crate) fn push(&self, frame: Frame) -> Result<(), PushError> {
        self.enqueue(Item::Frame(frame), None)
    }

    /// Queues the newcomer's snapshot, to be written at log position `at` (where its window starts).
    pub(crate) fn push_snapshot(&self, snapshot: Snapshot, at: u64) -> Result<(), PushError> {
        self.enqueue(Item::Snapshot(snapshot, SnapshotCursor::default()), Some(at))
    }

    fn enqueue(&self, item: Item, at: Option<u64>) -> Result<(), PushError> {
        let mut state = self.shared.state.lock();
        if state.closing.is_some() {
            return Err(PushError::Closed);
        }
        if state.own.len() >= self.shared.capacity {
            return Err(PushError::Full);
        }
        let size = item.size();
        // One frame always fits an empty queue, so that a message larger than the budget still reaches a reader that
        // keeps up.
        if !state.own.is_empty() && self.held(&state) + size > self.shared.budget {
            return Err(PushError::Full);
        }
        let at = at.unwrap_or_else(|| self.shared.log.head());
        state.own_bytes += size;
        state.own.push_back(Own { at, item });
        drop(state);
        self.shared.changed.notify_one();
        Ok(())
    }

    /// The connection was linked: log entries from `from` on are for it, until [`close_window`](Outbox::close_window).
    pub(crate) fn open_window(&self, from: u64, segment: Arc<Segment>) {
        let mut state = self.shared.state.lock();
        if state.closing.is_some() {
            return;
        }
        state.windows.push_back(Window {
            from,
            until: None,
            start: Some(segment),
        });
        drop(state);
        self.shared.changed.notify_one();
    }

    /// The connection was unlinked: log entries from `until` on are not for it.
    pub(crate) fn close_window(&self, until: u64) {
        let mut state = self.shared.state.lock();
        if let Some(window) = state.windows.back_mut() {
            window.until.get_or_insert(until);
        }
        drop(state);
        self.shared.changed.notify_one();
    }

    /// Starts closing for `reason`: nothing more is queued, and what the log gets from now on is not for this
    /// connection. The first reason given is the one the connection closes for.
    pub(crate) fn close(&self, reason: CloseReason) {
        let head = self.shared.log.head();
        let mut state = self.shared.state.lock();
        if state.closing.is_some() {
            return;
        }
        state.closing = Some(reason);
        if let Some(window) = state.windows.back_mut() {
            window.until.get_or_insert(head);
        }
        self.let_go_of_the_log(&mut state, reason, head);
        drop(state);
        self.shared.changed.notify_one();
        self.shared.closed.notify_waiters();
    }

    /// Makes a closing connection hold nothing of the log: a slow consumer drops what it had not read there (it is
    /// cut for not reading it); any other keeps the frames left in its windows in its own queue, in their order among
    /// its own frames, so that it still gets them before the close frame.
    fn let_go_of_the_log(&self, state: &mut State, reason: CloseReason, head: u64) {
        if state.windows.is_empty() && state.segment.is_none() {
            return;
        }
        if reason != CloseReason::SlowConsumer {
            let mut left = Vec::new();
            self.take_locked(state, head, |ready| {
                left.push(ready.into_owned());
                true
            });
            for frame in left.into_iter().rev() {
                state.own.push_front(Own {
                    at: 0,
                    item: Item::Frame(frame),
                });
            }
            state.own_bytes = state.own.iter().map(|own| own.item.size()).sum();
        }
        state.windows.clear();
        state.segment = None;
        state.cursor = head;
    }

    /// The bytes this connection holds: its own frames, and the log's from the next entry it reads for its window.
    fn held(&self, state: &State) -> u64 {
        let Some(window) = state.windows.front() else {
            return state.own_bytes;
        };
        let at = state.cursor.max(window.from);
        let before = state
            .segment
            .as_ref()
            .or(window.start.as_ref())
            .and_then(|segment| segment.find(at))
            .and_then(|segment| Some(segment.get(at)?.bytes_before));
        // Nothing appended at `at` yet: nothing unread.
        let log = before.map_or(0, |before| self.shared.log.bytes().saturating_sub(before));
        state.own_bytes + log
    }

    /// Whether this connection is past its budget: more than `max_lag` log entries behind `head`, or holding more
    /// bytes than its budget. Such a connection is a slow consumer.
    pub(crate) fn over_budget(&self, head: u64, max_lag: u64) -> bool {
        let state = self.shared.state.lock();
        let lag = if state.windows.is_empty() {
            0
        } else {
            head.saturating_sub(state.cursor)
        };
        lag > max_lag || self.held(&state) > self.shared.budget
    }

    /// Moves up to `max` frames that are ready, in order, into `into`. Returns whether the connection is closing:
    /// then write what was taken (taking until nothing is left) and close the socket.
    pub fn take(&self, into: &mut Vec<Frame>, max: usize) -> bool {
        let head = self.shared.log.head();
        let mut state = self.shared.state.lock();
        if into.len() < max {
            self.take_locked(&mut state, head, |ready| {
                into.push(ready.into_owned());
                into.len() < max
            });
        }
        state.closing.is_some()
    }

    /// Hands the frames that are ready, in order, to `each`, until it returns `false` (it took that frame and wants
    /// no more now) or nothing more is ready. Returns whether the connection is closing: then write what was taken
    /// (taking until nothing is left) and close the socket.
    ///
    /// For a transport that copies each frame into its write buffer: the frames are lent, not cloned, so that
    /// delivering a broadcast costs no reference-count change on the bytes every recipient shares. `each` runs with
    /// this connection's queue locked (nothing else waits on that lock but pushes to this one connection): copy, do
    /// not block.
    pub fn take_each(&self, mut each: impl FnMut(&Frame) -> bool) -> bool {
        let head = self.shared.log.head();
        let mut state = self.shared.state.lock();
        self.take_locked(&mut state, head, |ready| each(ready.frame()));
        state.closing.is_some()
    }

    /// [`take_each`](Outbox::take_each), with the state locked; own frames are handed over, log entries lent.
    fn take_locked(&self, state: &mut State, head: u64, mut each: impl FnMut(Ready<'_>) -> bool) {
        let mut more = true;
        while more {
            // An own frame whose turn has come: every log entry before its tag has been looked at.
            if let Some(own) = state.own.front_mut() {
                if own.at <= state.cursor {
                    match &mut own.item {
                        Item::Frame(_) => {
                            if let Some(Own {
                                item: Item::Frame(frame),
                                ..
                            }) = state.own.pop_front()
                            {
                                state.own_bytes = state
                                    .own_bytes
                                    .saturating_sub(frame.bytes().len() as u64 + ENTRY_OVERHEAD);
                                more = each(Ready::Owned(frame));
                            }
                        }
                        Item::Snapshot(snapshot, cursor) => match snapshot.next(cursor) {
                            Some(frame) => more = each(Ready::Lent(frame)),
                            None => {
                                state.own.pop_front();
                                if state.own.is_empty() {
                                    // A link's reply and snapshot are all most connections ever queue of their own:
                                    // an idle connection (the many, after a link storm) keeps no room for more.
                                    state.own = VecDeque::new();
                                }
                            }
                        },
                    }
                    continue;
                }
            }
            // Then the log, up to the next own frame's turn.
            let limit = state.own.front().map_or(head, |own| own.at.min(head));
            if state.cursor >= limit {
                break;
            }
            let Some(window) = state.windows.front_mut() else {
                // Not linked: nothing in the log is for this connection.
                state.cursor = limit;
                state.segment = None;
                continue;
            };
            if state.cursor < window.from {
                state.cursor = window.from.min(limit);
                continue;
            }
            if window.until.is_some_and(|until| state.cursor >= until) {
                state.windows.pop_front();
                state.segment = None;
                continue;
            }
            let Some(start) = state.segment.take().or_else(|| window.start.take()) else {
                // Cannot happen: a window is entered with its start.
                tracing::error!(connection = %self.shared.id, "fan-out window without a start");
                state.windows.pop_front();
                continue;
            };
            // Most entries are in the segment the last one was in: keep it as it is, rather than clone it (and drop
            // the old handle) once per entry, on a count every reader of the log shares.
            let segment = if start.get(state.cursor).is_some() {
                start
            } else if let Some(segment) = start.find(state.cursor) {
                segment
            } else {
                // Cannot happen: every entry before the head is in a linked segment.
                tracing::error!(connection = %self.shared.id, "fan-out log entry missing");
                state.segment = Some(start);
                break;
            };
            // The run of entries in this segment and this window, before the next own frame's turn: read without
            // looking at the rest again per entry (a storm's writer takes hundreds at a time).
            let end = limit.min(window.until.unwrap_or(u64::MAX)).min(segment.end());
            while more && state.cursor < end {
                if let Some(entry) = segment.get(state.cursor) {
                    if entry.skip != Some(self.shared.id) {
                        more = each(Ready::Lent(&entry.frame));
                    }
                }
                state.cursor += 1;
            }
            state.segment = Some(segment);
        }
    }

    /// Every frame that is ready now, in order: [`take`](Outbox::take) without a bound, repeated until it finds
    /// nothing more. For a reader that need not bound its batches, such as a test that drives the core without
    /// sockets; a transport writing to a socket takes bounded batches instead.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// server.host().start().unwrap();
    /// server.host().listening(4321).unwrap();
    /// let (_id, outbox) = server.host().connect().unwrap();
    /// assert!(outbox.take_all().is_empty()); // nothing is sent before a link request
    /// ```
    pub fn take_all(&self) -> Vec<Frame> {
        let mut frames = Vec::new();
        loop {
            let before = frames.len();
            self.take(&mut frames, usize::MAX);
            if frames.len() == before {
                return frames;
            }
        }
    }

    /// Whether [`take`](Outbox::take) may have something now, and whether new log entries could be for this
    /// connection.
    fn peek(&self) -> (bool, bool) {
        let head = self.shared.log.head();
        let state = self.shared.state.lock();
        let reads_log = !state.windows.is_empty();
        let work = state.closing.is_some() || !state.own.is_empty() || (reads_log && state.cursor < head);
        (work, reads_log)
    }

    /// Resolves when [`take`](Outbox::take) may have something to return, or closing began. It may resolve
    /// spuriously: `take` then returns nothing.
    pub async fn ready(&self) {
        let mut woken_by_log = false;
        loop {
            let own = self.shared.changed.notified();
            let log = self.shared.log.appended().notified();
            tokio::pin!(own, log);
            // Registered before looking, so that nothing queued in between is missed.
            own.as_mut().enable();
            log.as_mut().enable();
            let (work, reads_log) = self.peek();
            if work {
                if woken_by_log {
                    // A broadcast woke every linked writer at once. Letting the scheduler run what else is ready
                    // first (in a link storm: the other links in flight, each appending to the log) means each
                    // writer then takes several entries and writes them in one system call, rather than one call
                    // per entry: the call, and the loopback delivery it runs, is most of what a delivery costs.
                    tokio::task::yield_now().await;
                }
                return;
            }
            if reads_log {
                tokio::select! {
                    () = own => return,
                    () = log => woken_by_log = true,
                }
            } else {
                own.await;
                return;
            }
        }
    }

    /// Resolves once closing began: a writer that is blocked on a socket the peer does not read gives way to it.
    pub async fn closed(&self) {
        loop {
            let closed = self.shared.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.shared.state.lock().closing.is_some() {
                return;
            }
            closed.await;
        }
    }

    /// Whether closing began.
    pub fn is_closing(&self) -> bool {
        self.shared.state.lock().closing.is_some()
    }

    /// Why the core closes this connection, once closing began: send its [`code`](CloseReason::code) and
    /// [`text`](CloseReason::text) in the close frame. `None` while the connection is open.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.state.lock().closing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::fanout::SEGMENT;
    use crate::transport::snapshot::UserFrames;

    fn frame(n: u64) -> Frame {
        Frame::encode(&n).expect("a number serializes")
    }

    fn sized(bytes: usize) -> Frame {
        Frame::encode(&"x".repeat(bytes)).expect("a string serializes")
    }

    /// A linked outbox on a fresh log, and a handle on the log segment it starts reading from.
    fn linked(budget: usize) -> (Arc<Log>, Outbox, std::sync::Weak<Segment>) {
        let log = Arc::new(Log::default());
        let outbox = Outbox::new(ConnectionId(1), log.clone(), usize::MAX, budget);
        let (from, segment) = log.position();
        let first = Arc::downgrade(&segment);
        outbox.open_window(from, segment);
        (log, outbox, first)
    }

    #[test]
    fn a_drained_snapshot_leaves_no_room_behind() {
        let (log, outbox, _) = linked(100_000);
        let user = Arc::new(UserFrames {
            joined: frame(1),
            linked: frame(2),
        });
        let mut snapshot = Snapshot::with_capacity(1);
        snapshot.push(&user, true);
        assert_eq!(outbox.push(frame(0)), Ok(()));
        assert_eq!(outbox.push_snapshot(snapshot, log.head()), Ok(()));
        assert!(outbox.shared.state.lock().own.capacity() > 0);
        let taken: Vec<_> = outbox.take_all().iter().map(|f| f.bytes().to_vec()).collect();
        assert_eq!(taken, [&b"0"[..], b"1", b"2"]);
        assert_eq!(
            outbox.shared.state.lock().own.capacity(),
            0,
            "an idle connection keeps no queue room"
        );
        // And the queue still works afterwards.
        assert_eq!(outbox.push(frame(3)), Ok(()));
        assert_eq!(outbox.take_all().len(), 1);
    }

    #[test]
    fn own_frames_are_bounded_in_bytes_but_one_always_fits() {
        let (_log, outbox, _) = linked(1_000);
        assert_eq!(
            outbox.push(sized(2_000)),
            Ok(()),
            "one frame fits an empty queue, whatever its size"
        );
        assert_eq!(outbox.push(sized(10)), Err(PushError::Full));
        assert_eq!(outbox.take_all().len(), 1);
        assert_eq!(outbox.push(sized(600)), Ok(()));
        assert_eq!(outbox.push(sized(600)), Err(PushError::Full));
    }

    #[test]
    fn unread_broadcasts_count_against_the_budget() {
        let (log, outbox, _) = linked(100_000);
        assert!(!outbox.over_budget(log.head(), u64::MAX));
        for _ in 0..50 {
            log.append(sized(1_000), None);
        }
        assert!(!outbox.over_budget(log.head(), u64::MAX));
        for _ in 0..50 {
            log.append(sized(1_000), None);
        }
        assert!(outbox.over_budget(log.head(), u64::MAX), "100 KiB of broadcasts unread");
        assert!(outbox.over_budget(log.head(), 10), "and more than 10 entries behind");
        outbox.take_all();
        assert!(!outbox.over_budget(log.head(), u64::MAX), "read: nothing held");
    }

    /// Five broadcasts, an own frame, then a segment's worth more: what a reader that read nothing has waiting.
    fn backlog(log: &Log, outbox: &Outbox) -> Frame {
        for n in 0..5 {
            log.append(frame(n), None);
        }
        let own = Frame::encode("own").expect("a string serializes");
        outbox.push(own.clone()).unwrap();
        for n in 5..SEGMENT + 5 {
            log.append(frame(n), None);
        }
        own
    }

    #[test]
    fn a_closing_connection_keeps_what_was_left_for_it_but_not_the_log() {
        let (log, outbox, first) = linked(usize::MAX);
        let own = backlog(&log, &outbox);
        assert!(first.upgrade().is_some(), "the reader keeps the log alive");
        outbox.close(CloseReason::ServerClosing);
        assert!(first.upgrade().is_none(), "a closing connection holds no log segment");
        let mut expected: Vec<Frame> = (0..5).map(frame).collect();
        expected.push(own);
        expected.extend((5..SEGMENT + 5).map(frame));
        assert_eq!(outbox.take_all(), expected, "everything, in order, before the close");
    }

    #[test]
    fn take_each_lends_what_take_moves_in_the_same_order_and_stops_when_asked() {
        let (log, outbox, _) = linked(usize::MAX);
        let (twin_log, twin, _) = linked(usize::MAX);
        let own = backlog(&log, &outbox);
        assert_eq!(backlog(&twin_log, &twin), own);
        let mut lent = Vec::new();
        // Three at a time, as a writer whose buffer fills up would.
        loop {
            let before = lent.len();
            outbox.take_each(|frame| {
                lent.push(frame.as_str().to_owned());
                lent.len() - before < 3
            });
            if lent.len() == before {
                break;
            }
            assert!(lent.len() - before <= 3, "it stopped when asked");
        }
        let moved: Vec<String> = twin.take_all().iter().map(|frame| frame.as_str().to_owned()).collect();
        assert_eq!(lent, moved);
        assert_eq!(lent.len(), SEGMENT as usize + 6);
    }

    #[test]
    fn a_slow_consumer_drops_the_broadcasts_it_did_not_read() {
        let (log, outbox, first) = linked(usize::MAX);
        let own = backlog(&log, &outbox);
        outbox.close(CloseReason::SlowConsumer);
        assert!(first.upgrade().is_none(), "a slow consumer holds no log segment");
        assert_eq!(
            outbox.take_all(),
            vec![own],
            "its own frames still go out before the close"
        );
    }
}
