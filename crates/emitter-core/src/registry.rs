//! The users in join order and the connections linked to them: what `users()` lists, what a broadcast walks and what
//! a newcomer's snapshot is made of.
//!
//! The registry sits behind one short mutex, the *fan-out lock*. Every push that goes to more than one connection (a
//! broadcast, and the `krmx/joined|linked|unlinked|left` messages of a membership change) is made while holding it, so
//! any two connections that both receive two such messages receive them in the same order. A link takes it too, so a
//! newcomer's snapshot is queued before any broadcast that counts the newcomer as a recipient. Nothing slow happens
//! under it: pushes only queue shared bytes, and listeners never run while it is held.
//!
//! The registry changes only through [`Registry::join`], [`Registry::link`], [`Registry::unlink`] and
//! [`Registry::leave`], called in the order the membership path decides (see `membership.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::connections::{Connection, Member};
use crate::protocol::{Frame, ServerMessage};
use crate::server::Broadcast;
use crate::transport::{Snapshot, UserFrames};

pub(crate) struct UserSlot {
    pub(crate) member: Arc<Member>,
    pub(crate) link: Option<Arc<Connection>>,
    /// `krmx/joined` and `krmx/linked` for this user, serialized once: every newcomer's snapshot reuses them.
    frames: Arc<UserFrames>,
}

/// The users in join order, each with its link if it has one.
#[derive(Default)]
pub(crate) struct Registry {
    /// Users in join order, keyed by a number that only grows.
    users: BTreeMap<u64, UserSlot>,
    order: HashMap<String, u64>,
    next_order: u64,
}

impl Registry {
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
        let order = self.next_order;
        self.next_order += 1;
        self.order.insert(username.to_owned(), order);
        let slot = UserSlot {
            member: Arc::new(Member::new(username)),
            link: None,
            frames: Arc::new(UserFrames {
                joined: ServerMessage::Joined(username).to_frame(),
                linked: ServerMessage::Linked(username).to_frame(),
            }),
        };
        // The newcomer is not linked, so this reaches exactly the users linked before it joined.
        let _ = self.push_to_linked(&slot.frames.joined, None);
        self.users.insert(order, slot);
    }

    /// Links an unlinked user: the newcomer gets its snapshot of everyone (itself included), then everyone else hears
    /// of the link. Returns the user, or `None` when it does not exist or is linked already.
    pub(crate) fn link(&mut self, username: &str, link: &Arc<Connection>) -> Option<Arc<Member>> {
        let slot = self.user_mut(username).filter(|slot| slot.link.is_none())?;
        slot.link = Some(link.clone());
        let member = slot.member.clone();
        let linked = slot.frames.linked.clone();
        let mut snapshot = Snapshot::with_capacity(self.users.len());
        for slot in self.users.values() {
            snapshot.push(&slot.frames, slot.link.is_some());
        }
        link.push_snapshot(snapshot);
        let _ = self.push_to_linked(&linked, Some(username));
        Some(member)
    }

    /// Unlinks a linked user, telling every linked user (the user's own connection included, as the reference does).
    /// Returns the link it had.
    pub(crate) fn unlink(&mut self, username: &str) -> Option<Arc<Connection>> {
        self.user(username)?.link.as_ref()?;
        let _ = self.push_to_linked(&ServerMessage::Unlinked(username).to_frame(), None);
        self.user_mut(username)?.link.take()
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

    /// Queues a frame for every linked user in join order, except `skip`. Reports who got it and who did not.
    pub(crate) fn push_to_linked(&self, frame: &Frame, skip: Option<&str>) -> Broadcast {
        let mut report = Broadcast::default();
        for slot in self.users.values() {
            let Some(link) = &slot.link else { continue };
            if skip == Some(slot.member.name.as_str()) {
                continue;
            }
            match link.push(frame.clone()) {
                Ok(()) => report.delivered += 1,
                Err(error) => report.undelivered.push((slot.member.name.clone(), error)),
            }
        }
        report
    }
}
