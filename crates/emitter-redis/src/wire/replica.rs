//! A node's copy of `users`, kept by applying the log strictly in seq order.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::types::{ClusterSnapshot, Epoch, LogEntry, LogEvent, UserRecord};

/// The registry as the log describes it: users in join order with their links, at one seq of one epoch. It is the
/// specification of how entries apply (the core keeps its own registry and applies the same entries the same way),
/// and what tests and tools compare against [`Cluster::snapshot`](crate::Cluster::snapshot).
///
/// ```
/// use emitter_redis::wire::{LinkAddr, LogEntry, LogEvent, Replica, ReplicaError};
///
/// let mut replica = Replica::empty();
/// let joined = LogEntry { seq: 1, event: LogEvent::Joined { user: "alice".into() }, by: "n1".into() };
/// let link = LinkAddr { node: "n1".into(), generation: 1, connection: 7 };
/// let linked = LogEntry { seq: 2, event: LogEvent::Linked { user: "alice".into(), link: link.clone() }, by: "n1".into() };
/// assert_eq!(replica.apply(&linked), Err(ReplicaError::Gap { expected: 1, got: 2 })); // out of order: refused
/// assert_eq!(replica.apply(&joined), Ok(true));
/// assert_eq!(replica.apply(&linked), Ok(true));
/// assert_eq!(replica.apply(&linked), Ok(false)); // already applied (it came back from the log): skipped
/// assert_eq!(replica.user("alice").and_then(|user| user.link.clone()), Some(link));
/// assert_eq!(replica.seq(), 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replica {
    epoch: Option<Epoch>,
    seq: u64,
    /// Users by join seq: iterating gives the join order.
    users: BTreeMap<u64, UserRecord>,
    index: HashMap<String, u64>,
}

/// Why an entry cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaError {
    /// The entry is not the next one: read the entries in between from the log first.
    Gap {
        /// The seq due next.
        expected: u64,
        /// The entry's seq.
        got: u64,
    },
    /// The entry does not fit the state (a join of an existing user, a link of a linked one, …): the replica and the
    /// log disagree, and the replica must be rebuilt from a snapshot.
    Inconsistent {
        /// The entry's seq.
        seq: u64,
        /// What did not fit.
        reason: &'static str,
    },
}

impl fmt::Display for ReplicaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicaError::Gap { expected, got } => write!(f, "entry {got} while {expected} is due"),
            ReplicaError::Inconsistent { seq, reason } => write!(f, "entry {seq} does not apply: {reason}"),
        }
    }
}

impl std::error::Error for ReplicaError {}

impl Replica {
    /// No users, at seq 0 (before the first entry of any epoch).
    pub fn empty() -> Replica {
        Replica::default()
    }

    /// The state a snapshot describes.
    pub fn from_snapshot(snapshot: ClusterSnapshot) -> Replica {
        let mut replica = Replica {
            epoch: Some(snapshot.epoch),
            seq: snapshot.seq,
            ..Replica::default()
        };
        for user in snapshot.users {
            replica.index.insert(user.name.clone(), user.joined);
            replica.users.insert(user.joined, user);
        }
        replica
    }

    /// The epoch of the snapshot it was made from, if it was.
    pub fn epoch(&self) -> Option<&Epoch> {
        self.epoch.as_ref()
    }

    /// The last seq applied.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// A user by name.
    pub fn user(&self, name: &str) -> Option<&UserRecord> {
        self.index.get(name).and_then(|joined| self.users.get(joined))
    }

    /// Every user, in join order.
    pub fn users(&self) -> Vec<UserRecord> {
        self.users.values().cloned().collect()
    }

    /// Applies the next entry: `Ok(true)`. An entry at or before [`seq`](Self::seq) was applied already and is
    /// skipped: `Ok(false)` (so a submit's entries and the same entries read from the log can both be fed in).
    pub fn apply(&mut self, entry: &LogEntry) -> Result<bool, ReplicaError> {
        if entry.seq <= self.seq {
            return Ok(false);
        }
        if entry.seq != self.seq + 1 {
            return Err(ReplicaError::Gap {
                expected: self.seq + 1,
                got: entry.seq,
            });
        }
        let inconsistent = |reason| ReplicaError::Inconsistent { seq: entry.seq, reason };
        match &entry.event {
            LogEvent::Joined { user } => {
                if self.index.contains_key(user) {
                    return Err(inconsistent("join of an existing user"));
                }
                self.index.insert(user.clone(), entry.seq);
                self.users.insert(
                    entry.seq,
                    UserRecord {
                        name: user.clone(),
                        joined: entry.seq,
                        link: None,
                    },
                );
            }
            LogEvent::Linked { user, link } => {
                let record = self
                    .record(user)
                    .ok_or_else(|| inconsistent("link of an unknown user"))?;
                if record.link.is_some() {
                    return Err(inconsistent("link of a linked user"));
                }
                record.link = Some(link.clone());
            }
            LogEvent::Unlinked { user, link, .. } => {
                let record = self
                    .record(user)
                    .ok_or_else(|| inconsistent("unlink of an unknown user"))?;
                if record.link.as_ref() != Some(link) {
                    return Err(inconsistent("unlink of a link the user does not have"));
                }
                record.link = None;
            }
            LogEvent::Left { user } => {
                let joined = *self
                    .index
                    .get(user)
                    .ok_or_else(|| inconsistent("leave of an unknown user"))?;
                if self.users.get(&joined).is_some_and(|record| record.link.is_some()) {
                    return Err(inconsistent("leave of a linked user"));
                }
                self.index.remove(user);
                self.users.remove(&joined);
            }
        }
        self.seq = entry.seq;
        Ok(true)
    }

    fn record(&mut self, name: &str) -> Option<&mut UserRecord> {
        let joined = self.index.get(name)?;
        self.users.get_mut(joined)
    }
}
