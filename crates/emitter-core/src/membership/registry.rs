//! The users in join order and the connections linked to them: what `users()` lists, who a broadcast reaches, and
//! what a newcomer's snapshot is made of.
//!
//! The registry sits behind one short mutex, the *fan-out lock*. Every frame that goes to more than one connection (a
//! broadcast, and the `krmx/joined|linked|unlinked|left` messages of a membership change) is appended to the fan-out
//! log while holding it, so any two connections that both receive two such frames receive them in the same order. A
//! link takes it too: the newcomer's snapshot and the start of its window in the log are set at one instant, so it
//! never gets a broadcast before its snapshot and never misses one after it. Nothing slow happens under it: an
//! append is a slot in a shared log, and listeners never run while it is held.
//!
//! The registry changes only through [`Registry::join`], [`Registry::link`], [`Registry::unlink`] and
//! [`Registry::leave`], called in the order the membership path decides (see `changes.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use crate::cluster::LinkAddr;
use crate::config::KeepLimits;
use crate::membership::connections::{Connection, Member};
use crate::membership::kept::Kept;
use crate::protocol::{Frame, ServerMessage};
use crate::transport::fanout::{Log, SEGMENT};
use crate::transport::outbox::PushError;
use crate::transport::snapshot::{Snapshot, UserFrames};

/// What a broadcast did: how many linked users got the message queued, and who did not.
///
/// A recipient misses a message only when its connection is closing or is a slow consumer (its queue was full, so the
/// server is closing it); either way that user is about to be unlinked, and a client that relinks gets a fresh
/// snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Broadcast {
    /// How many linked users had the message queued.
    pub delivered: usize,
    /// The users whose connection did not take the message, and why.
    pub undelivered: Vec<(String, PushError)>,
}

/// Where a linked user's connection is: here, or on another node of a cluster.
#[derive(Clone)]
pub(crate) enum Link {
    Local(Arc<Connection>),
    Remote(LinkAddr),
}

impl Link {
    pub(crate) fn local(&self) -> Option<&Arc<Connection>> {
        match self {
            Link::Local(connection) => Some(connection),
            Link::Remote(_) => None,
        }
    }
}

pub(crate) struct UserSlot {
    pub(crate) member: Arc<Member>,
    pub(crate) link: Option<Link>,
    /// `krmx/joined` and `krmx/linked` for this user, serialized once: every newcomer's snapshot reuses them.
    frames: Arc<UserFrames>,
    /// Messages kept while it is unlinked, for its next link.
    kept: Kept,
    /// How many times it was unlinked: a grace period's timer checks that no relink and unlink came in between.
    pub(crate) unlinks: u64,
}

/// The users in join order, each with its link if it has one.
///
/// Besides the users themselves it keeps two indexes, so that nothing a broadcast does walks every user: the users
/// that are unlinked (the ones a kept broadcast is for) and the connections of this process that are linked (the ones
/// whose lag is checked). Both change only where a user's link does.
pub(crate) struct Registry {
    /// Users in join order, keyed by a number that only grows.
    users: BTreeMap<u64, UserSlot>,
    order: HashMap<String, u64>,
    next_order: u64,
    log: Arc<Log>,
    /// How many users are linked.
    linked: usize,
    /// The users (by join order) that are not linked, here or on another node.
    unlinked: BTreeSet<u64>,
    /// The users (by join order) linked to a connection of this process, with it.
    local: BTreeMap<u64, Arc<Connection>>,
    /// The last user of `local` whose lag was checked: the checks go round from there.
    swept: u64,
    /// Users looked at by the broadcast path (kept messages and lag checks), for tests that it stays O(what it is for).
    pub(crate) visits: u64,
    /// Linked users (by join order) whose connection the server is closing: they get nothing more.
    closing: BTreeSet<u64>,
    /// How far behind the log a connection may read before it is closed as a slow consumer.
    max_lag: u64,
    /// The log's bytes when slow consumers were last looked for: they are looked for again once a quarter of a
    /// connection's budget was appended since, so that big broadcasts cannot outrun the check.
    checked_at_bytes: u64,
    /// A quarter of a connection's outbound budget.
    check_every_bytes: u64,
    /// The limits of what is kept for unlinked users; `None` when nothing is.
    keep: Option<KeepLimits>,
    /// Kept messages dropped so far (past a limit, or too old).
    pub(crate) kept_dropped: u64,
}

impl Registry {
    pub(crate) fn new(log: Arc<Log>, max_lag: usize, budget: usize, keep: Option<KeepLimits>) -> Registry {
        Registry {
            users: BTreeMap::new(),
            order: HashMap::new(),
            next_order: 0,
            log,
            linked: 0,
            unlinked: BTreeSet::new(),
            local: BTreeMap::new(),
            swept: u64::MAX,
            visits: 0,
            closing: BTreeSet::new(),
            max_lag: max_lag as u64,
            checked_at_bytes: 0,
            check_every_bytes: (budget as u64 / 4).max(1),
            keep,
            kept_dropped: 0,
        }
    }

    /// How many users there are, and how many of them are linked.
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.users.len(), self.linked)
    }

    pub(crate) fn user(&self, username: &str) -> Option<&UserSlot> {
        self.order.get(username).and_then(|order| self.users.get(order))
    }

    fn user_mut(&mut self, username: &str) -> Option<&mut UserSlot> {
        let order = self.order.get(username)?;
        self.users.get_mut(order)
    }

    pub(crate) fn slots(&self) -> impl Iterator<Item = &UserSlot> {
        self.users.values()
    }

    /// Adds a user at the end of the join order and tells the linked users.
    pub(crate) fn join(&mut self, username: &str) {
        let frames = Arc::new(UserFrames {
            joined: ServerMessage::Joined(username).to_frame(),
            linked: ServerMessage::Linked(username).to_frame(),
        });
        // The newcomer is not linked, so this reaches exactly the users linked before it joined.
        let _ = self.push_to_linked(&frames.joined, None);
        let order = self.next_order;
        self.next_order += 1;
        self.order.insert(username.to_owned(), order);
        let slot = UserSlot {
            member: Arc::new(Member::new(username)),
            link: None,
            frames,
            kept: Kept::default(),
            unlinks: 0,
        };
        self.users.insert(order, slot);
        self.unlinked.insert(order);
    }

    /// Links an unlinked user: everyone else hears of the link, and the newcomer gets its snapshot of everyone
    /// (itself included) followed by every log entry after the link. Returns the user, or `None` when it does not
    /// exist or is linked already.
    pub(crate) fn link(&mut self, username: &str, connection: &Arc<Connection>) -> Option<Arc<Member>> {
        let order = *self.order.get(username)?;
        let slot = self.users.get_mut(&order).filter(|slot| slot.link.is_none())?;
        slot.link = Some(Link::Local(connection.clone()));
        let member = slot.member.clone();
        let linked = slot.frames.linked.clone();
        self.linked += 1;
        self.unlinked.remove(&order);
        self.local.insert(order, connection.clone());
        let mut snapshot = Snapshot::with_capacity(self.users.len());
        for slot in self.users.values() {
            snapshot.push(&slot.frames, slot.link.is_some());
        }
        // The `krmx/linked` goes to the others; the newcomer's window starts right after it.
        let _ = self.push_to_linked(&linked, Some(username));
        let (from, segment) = self.log.position();
        connection.push_snapshot(snapshot, from);
        // What was kept for the user comes right after its snapshot, before anything newer.
        let limits = self.keep;
        if let Some((limits, slot)) = limits.zip(self.user_mut(username)) {
            let (frames, expired) = slot.kept.take(&limits);
            for frame in frames {
                let _ = connection.push(frame);
            }
            self.kept_dropped += expired;
        }
        connection.outbox.open_window(from, segment);
        Some(member)
    }

    /// Links an unlinked user to a connection of another node: the linked users here hear of it.
    pub(crate) fn link_remote(&mut self, username: &str, link: LinkAddr) -> bool {
        let Some(&order) = self.order.get(username) else {
            return false;
        };
        let Some(slot) = self.users.get_mut(&order).filter(|slot| slot.link.is_none()) else {
            return false;
        };
        slot.link = Some(Link::Remote(link));
        // The node it linked on delivers what it kept for the user; this node's copy is not needed any more.
        slot.kept = Kept::default();
        let linked = slot.frames.linked.clone();
        self.linked += 1;
        self.unlinked.remove(&order);
        let _ = self.push_to_linked(&linked, Some(username));
        true
    }

    /// Unlinks a linked user, telling every linked user (the user's own connection included, as the reference does).
    /// Returns the link it had.
    pub(crate) fn unlink(&mut self, username: &str) -> Option<Link> {
        let order = *self.order.get(username)?;
        self.users.get(&order)?.link.as_ref()?;
        let _ = self.push_to_linked(&ServerMessage::Unlinked(username).to_frame(), None);
        let slot = self.users.get_mut(&order)?;
        slot.unlinks += 1;
        let link = slot.link.take()?;
        if let Link::Local(connection) = &link {
            connection.outbox.close_window(self.log.head());
        }
        self.linked -= 1;
        self.unlinked.insert(order);
        self.local.remove(&order);
        self.closing.remove(&order);
        Some(link)
    }

    /// Removes an unlinked user, telling the linked users. Returns whether it was there to remove.
    pub(crate) fn leave(&mut self, username: &str) -> bool {
        if self.user(username).is_none_or(|slot| slot.link.is_some()) {
            return false;
        }
        let _ = self.push_to_linked(&ServerMessage::Left(username).to_frame(), None);
        if let Some(order) = self.order.remove(username) {
            self.users.remove(&order);
            self.unlinked.remove(&order);
        }
        true
    }

    /// Keeps a message for an unlinked user. `Err` with the user's link when it is linked (meanwhile, or on another
    /// node): send it there instead; `Ok(false)` when the user does not exist or nothing is kept.
    pub(crate) fn keep(&mut self, username: &str, frame: Frame) -> Result<bool, Link> {
        let limits = self.keep;
        let Some(slot) = self.user_mut(username) else {
            return Ok(false);
        };
        if let Some(link) = &slot.link {
            return Err(link.clone());
        }
        let Some(limits) = limits else {
            return Ok(false);
        };
        let dropped = slot.kept.keep(frame, &limits);
        self.kept_dropped += dropped;
        Ok(true)
    }

    /// Keeps a broadcast for every unlinked user but `skip` (only when messages are kept).
    pub(crate) fn keep_for_unlinked(&mut self, frame: &Frame, skip: Option<&str>) {
        let Some(limits) = self.keep else {
            return;
        };
        // Only the unlinked users are looked at: nobody, in the usual case.
        let skipped = skip.and_then(|name| self.order.get(name).copied());
        let mut dropped = 0;
        for order in &self.unlinked {
            self.visits += 1;
            if Some(*order) == skipped {
                continue;
            }
            if let Some(slot) = self.users.get_mut(order) {
                dropped += slot.kept.keep(frame.clone(), &limits);
            }
        }
        self.kept_dropped += dropped;
    }

    /// Notes that the server is closing `username`'s connection, if it is still linked to `connection`: it gets no
    /// more broadcasts, and reports say so.
    pub(crate) fn mark_closing(&mut self, username: &str, connection: &Arc<Connection>) {
        if let Some(&order) = self.order.get(username) {
            let linked_here = self
                .users
                .get(&order)
                .and_then(|slot| slot.link.as_ref()?.local())
                .is_some_and(|link| Arc::ptr_eq(link, connection));
            if linked_here {
                self.closing.insert(order);
            }
        }
    }

    /// Appends a frame for every linked user except `skip` to the fan-out log. Reports how many it is for and which
    /// of them will not get it (their connection is closing). Call `Log::wake` once the fan-out lock is released.
    pub(crate) fn push_to_linked(&mut self, frame: &Frame, skip: Option<&str>) -> Broadcast {
        let skipped = skip.and_then(|name| self.order.get(name).copied());
        let skip_link = skipped.and_then(|order| self.users.get(&order)?.link.as_ref()?.local().map(|link| link.id));
        let skips_a_linked_user =
            skipped.is_some_and(|order| self.users.get(&order).is_some_and(|slot| slot.link.is_some()));
        let seq = self.log.append(frame.clone(), skip_link);
        let undelivered: Vec<(String, PushError)> = self
            .closing
            .iter()
            .filter(|order| Some(**order) != skipped)
            .filter_map(|order| Some((self.users.get(order)?.member.name.clone(), PushError::Closed)))
            .collect();
        let recipients = self.linked - usize::from(skips_a_linked_user);
        let bytes = self.log.bytes();
        let appended = bytes.saturating_sub(self.checked_at_bytes);
        self.checked_at_bytes = bytes;
        self.close_slow_consumers(seq + 1, appended);
        Broadcast {
            delivered: recipients - undelivered.len(),
            undelivered,
        }
    }

    /// Closes the linked connections of this process that are over their outbound budget (more than the allowed lag
    /// behind `head`, or holding more bytes than they may): they are not reading what they are sent, and would keep
    /// the log's old entries alive. Each append checks the next `ceil(linked here / SEGMENT)` of them, going round, so
    /// every one is checked at least once per `SEGMENT` appends (a slow one is caught within `max_lag + SEGMENT`
    /// entries), plus a share for the `appended` bytes, so that every one is also checked at least once per quarter of
    /// a budget appended and big broadcasts cannot outrun the check; no append of a small broadcast walks them all.
    fn close_slow_consumers(&mut self, head: u64, appended: u64) {
        let local = self.local.len() as u64;
        let by_bytes = local.saturating_mul(appended) / self.check_every_bytes;
        let mut budget = local.div_ceil(SEGMENT).saturating_add(by_bytes).min(local);
        while budget > 0 {
            budget -= 1;
            let next = self
                .local
                .range((Bound::Excluded(self.swept), Bound::Unbounded))
                .next()
                .or_else(|| self.local.iter().next());
            let Some((&order, connection)) = next else {
                return;
            };
            self.swept = order;
            self.visits += 1;
            if !self.closing.contains(&order) && connection.outbox.over_budget(head, self.max_lag) {
                let connection = connection.clone();
                tracing::debug!(connection = %connection.id, "too far behind the broadcasts: closing the slow connection");
                connection.close(crate::transport::close_reason::CloseReason::SlowConsumer);
                self.closing.insert(order);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::config::KeepLimits;
    use crate::transport::id::ConnectionId;
    use crate::Server;

    impl Registry {
        /// Whether the indexes agree with the users: `unlinked` lists exactly the users without a link, `local`
        /// exactly the ones linked to a connection of this process (that connection), and `linked` counts the rest.
        fn check_indexes(&self) -> Result<(), String> {
            let unlinked: BTreeSet<u64> = self
                .users
                .iter()
                .filter(|(_, slot)| slot.link.is_none())
                .map(|(order, _)| *order)
                .collect();
            if unlinked != self.unlinked {
                return Err(format!("unlinked index {:?}, users say {unlinked:?}", self.unlinked));
            }
            let local: Vec<(u64, ConnectionId)> = self
                .users
                .iter()
                .filter_map(|(order, slot)| Some((*order, slot.link.as_ref()?.local()?.id)))
                .collect();
            let indexed: Vec<(u64, ConnectionId)> = self.local.iter().map(|(order, c)| (*order, c.id)).collect();
            if local != indexed {
                return Err(format!("local index {indexed:?}, users say {local:?}"));
            }
            if self.linked + self.unlinked.len() != self.users.len() {
                return Err(format!(
                    "{} linked + {} unlinked != {} users",
                    self.linked,
                    self.unlinked.len(),
                    self.users.len()
                ));
            }
            Ok(())
        }
    }

    fn keeping() -> Server {
        let limits = KeepLimits {
            messages: 8,
            bytes: 1 << 16,
            age: Duration::from_secs(60),
        };
        let server = Server::builder()
            .keep_unlinked(limits)
            .max_unlinked_connections(10_000)
            .build();
        server.host().start().unwrap();
        server.host().listening(1).unwrap();
        server
    }

    fn link(server: &Server, username: &str) -> ConnectionId {
        let (id, _outbox) = server.host().connect().unwrap();
        let request = format!(r#"{{"type":"krmx/link","payload":{{"username":"{username}","version":"0.6.0"}}}}"#);
        server.host().receive(id, request.as_bytes());
        id
    }

    /// A broadcast looks at the unlinked users (to keep it for them) and at a slice of the linked connections (their
    /// lag), never at every user: with 600 linked users and 3 unlinked ones, it visits 3 + ceil(600 / 256) of them.
    /// A walk over all users, as before the indexes, visits 603 and fails this.
    #[test]
    fn a_broadcast_visits_the_unlinked_users_and_a_slice_of_the_linked_ones() {
        let server = keeping();
        for n in 0..600 {
            link(&server, &format!("user{n}"));
        }
        for name in ["away1", "away2", "away3"] {
            server.join(name).unwrap();
        }
        assert_eq!(server.inner.registry.lock().counts(), (603, 600));
        let message = crate::protocol::Message::new("news");
        for round in 0..3 {
            let before = server.inner.registry.lock().visits;
            server.broadcast(&message, None).unwrap();
            let visits = server.inner.registry.lock().visits - before;
            assert_eq!(visits, 3 + 3, "broadcast {round} visited {visits} users");
        }
        // Nobody unlinked: only the lag checks remain.
        server.inner.registry.lock().check_indexes().unwrap();
        for name in ["away1", "away2", "away3"] {
            server.kick(name).unwrap();
        }
        let before = server.inner.registry.lock().visits;
        server.broadcast(&message, None).unwrap();
        assert_eq!(server.inner.registry.lock().visits - before, 3);
    }

    /// The lag checks go round: every linked connection is checked at least once per `SEGMENT` appends, so one that
    /// reads nothing is closed within `max_lag + SEGMENT` broadcasts wherever it is in the join order.
    #[test]
    fn every_connection_that_reads_nothing_is_closed_within_a_segment_past_the_lag() {
        let server = Server::builder()
            .outbound_queue(64)
            .max_unlinked_connections(10_000)
            .build();
        server.host().start().unwrap();
        server.host().listening(1).unwrap();
        for n in 0..300 {
            link(&server, &format!("user{n}"));
        }
        let message = crate::protocol::Message::new("news");
        for _ in 0..64 + SEGMENT {
            server.broadcast(&message, None).unwrap();
        }
        // Nobody reads: every one of them is behind by more than 64 now, and was checked since.
        assert_eq!(server.inner.registry.lock().closing.len(), 300);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Link(usize, usize),
        Join(usize),
        Unlink(usize),
        Kick(usize),
        Drop(usize),
        Broadcast(Option<usize>),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0..6usize, 0..6usize).prop_map(|(c, u)| Step::Link(c, u)),
            1 => (0..6usize).prop_map(Step::Join),
            1 => (0..6usize).prop_map(Step::Unlink),
            1 => (0..6usize).prop_map(Step::Kick),
            2 => (0..6usize).prop_map(Step::Drop),
            2 => prop::option::of(0..6usize).prop_map(Step::Broadcast),
        ]
    }

    proptest! {
        /// The indexes of unlinked users and of this process's linked connections agree with the users after every
        /// step of any interleaving of links, joins, unlinks, kicks, closes and broadcasts.
        #[test]
        fn the_indexes_follow_the_users(steps in prop::collection::vec(step(), 1..60)) {
            let server = keeping();
            let mut connections: Vec<Option<ConnectionId>> = vec![None; 6];
            let name = |u: usize| format!("u{u}");
            let message = crate::protocol::Message::new("news");
            for step in steps {
                match step {
                    Step::Link(c, u) => {
                        let id = match connections[c] {
                            Some(id) => id,
                            None => {
                                let (id, _outbox) = server.host().connect().unwrap();
                                connections[c] = Some(id);
                                id
                            }
                        };
                        let request = format!(r#"{{"type":"krmx/link","payload":{{"username":"{}","version":"0.6.0"}}}}"#, name(u));
                        server.host().receive(id, request.as_bytes());
                    }
                    Step::Join(u) => drop(server.join(&name(u))),
                    Step::Unlink(u) => drop(server.unlink(&name(u))),
                    Step::Kick(u) => drop(server.kick(&name(u))),
                    Step::Drop(c) => {
                        if let Some(id) = connections[c].take() {
                            server.host().disconnect(id);
                        }
                    }
                    Step::Broadcast(skip) => drop(server.broadcast(&message, skip.map(name).as_deref())),
                }
                let checked = server.inner.registry.lock().check_indexes();
                prop_assert!(checked.is_ok(), "{:?}", checked);
            }
        }
    }
}
