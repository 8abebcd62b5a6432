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
use std::sync::Arc;

use crate::cluster::LinkAddr;
use crate::membership::connections::{Connection, Member};
use crate::membership::kept::Kept;
use crate::protocol::{Frame, ServerMessage};
use crate::server::config::KeepLimits;
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
pub(crate) struct Registry {
    /// Users in join order, keyed by a number that only grows.
    users: BTreeMap<u64, UserSlot>,
    order: HashMap<String, u64>,
    next_order: u64,
    log: Arc<Log>,
    /// How many users are linked.
    linked: usize,
    /// Linked users (by join order) whose connection the server is closing: they get nothing more.
    closing: BTreeSet<u64>,
    /// How far behind the log a connection may read before it is closed as a slow consumer.
    max_lag: u64,
    /// The limits of what is kept for unlinked users; `None` when nothing is.
    keep: Option<KeepLimits>,
    /// Kept messages dropped so far (past a limit, or too old).
    pub(crate) kept_dropped: u64,
}

impl Registry {
    pub(crate) fn new(log: Arc<Log>, max_lag: usize, keep: Option<KeepLimits>) -> Registry {
        Registry {
            users: BTreeMap::new(),
            order: HashMap::new(),
            next_order: 0,
            log,
            linked: 0,
            closing: BTreeSet::new(),
            max_lag: max_lag as u64,
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
    }

    /// Links an unlinked user: everyone else hears of the link, and the newcomer gets its snapshot of everyone
    /// (itself included) followed by every log entry after the link. Returns the user, or `None` when it does not
    /// exist or is linked already.
    pub(crate) fn link(&mut self, username: &str, connection: &Arc<Connection>) -> Option<Arc<Member>> {
        let slot = self.user_mut(username).filter(|slot| slot.link.is_none())?;
        slot.link = Some(Link::Local(connection.clone()));
        let member = slot.member.clone();
        let linked = slot.frames.linked.clone();
        self.linked += 1;
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
        let Some(slot) = self.user_mut(username).filter(|slot| slot.link.is_none()) else {
            return false;
        };
        slot.link = Some(Link::Remote(link));
        // The node it linked on delivers what it kept for the user; this node's copy is not needed any more.
        slot.kept = Kept::default();
        let linked = slot.frames.linked.clone();
        self.linked += 1;
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
        if self.linked == self.users.len() {
            // Nobody is unlinked (the usual case): the broadcast costs no walk over the users.
            return;
        }
        let mut dropped = 0;
        for slot in self.users.values_mut() {
            if slot.link.is_none() && Some(slot.member.name.as_str()) != skip {
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
        if (seq + 1) % SEGMENT == 0 {
            self.close_slow_consumers(seq + 1);
        }
        Broadcast {
            delivered: recipients - undelivered.len(),
            undelivered,
        }
    }

    /// Closes the linked connections that read the log more than the allowed lag behind `head`: they are not reading
    /// what they are sent, and would keep the log's old entries alive. Run once per log segment.
    fn close_slow_consumers(&mut self, head: u64) {
        let mut slow = Vec::new();
        for (order, slot) in &self.users {
            if let Some(link) = slot.link.as_ref().and_then(Link::local) {
                if link.outbox.lag(head) > self.max_lag && !self.closing.contains(order) {
                    slow.push((*order, link.clone()));
                }
            }
        }
        for (order, connection) in slow {
            tracing::debug!(connection = %connection.id, "too far behind the broadcasts: closing the slow connection");
            connection.close(crate::transport::close_reason::CloseReason::SlowConsumer);
            self.closing.insert(order);
        }
    }
}
