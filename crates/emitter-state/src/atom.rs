//! The Atom model: named values (a string, a number or a boolean) that any linked user may set and every linked user
//! sees.
//!
//! A client sends `atom/set {key, atom}`; the server stores it and sends the same message to every linked user, the
//! sender included. A user who links gets one `atom/set` per stored atom. Nothing else: no history, no validation
//! beyond the type of the value, and the last set wins.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

use emitter_core::{Message, Server};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::domain::Domain;
use crate::journal::{Checkpoint, Committed, Journal, JournalError, JournalModel, MembershipChange, Request};
use crate::journaled::{linked_here, read_request, server_request, Attached, SET};
use crate::registration::{Listeners, Model, Registration, Replica};
use crate::stats::Counters;
use crate::value::Atom;
use crate::wire::{self, AtomSetOut};
use crate::{Error, StateStats};

/// How many keys the atoms may have by default: see [`AtomModel::max_atoms`]. Well below the server's default
/// `outbound_queue` (4,096), which a linking user's catch-up, one message per atom, must fit in.
pub const DEFAULT_MAX_ATOMS: usize = 1_000;

/// The definition of the atoms of a server: its options, before it is registered.
///
/// ```
/// use emitter_core::Server;
/// use emitter_state::AtomModel;
///
/// let server = Server::new();
/// let atoms = AtomModel::new()
///     .strict_key_prefixes(true) // `alice/color` is alice's to set
///     .clear_when_empty(true) // forget everything once the last user left
///     .register(&server);
/// assert!(atoms.keys().is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct AtomModel {
    clear_when_empty: bool,
    strict_key_prefixes: bool,
    max_atoms: usize,
}

impl Default for AtomModel {
    fn default() -> Self {
        AtomModel::new()
    }
}

impl AtomModel {
    /// Atoms that are kept while the server runs, that any user may set, up to [`DEFAULT_MAX_ATOMS`] keys.
    pub fn new() -> AtomModel {
        AtomModel {
            clear_when_empty: false,
            strict_key_prefixes: false,
            max_atoms: DEFAULT_MAX_ATOMS,
        }
    }

    /// Whether every atom is removed when the last user leaves (`server.users()` is empty, unlinked users included),
    /// as the reference's `clearOnEmptyServer`. Off by default.
    pub fn clear_when_empty(mut self, clear: bool) -> Self {
        self.clear_when_empty = clear;
        self
    }

    /// Whether a key with a `/` may only be set by the user whose name comes before its first `/` (only `alice` sets
    /// `alice/color`), as the reference's `strictKeyPrefixes`; a key without a `/` is anyone's. A client's set that
    /// breaks the rule is ignored (logged, and counted in [`StateStats::forbidden`]). Off by default.
    pub fn strict_key_prefixes(mut self, strict: bool) -> Self {
        self.strict_key_prefixes = strict;
        self
    }

    /// How many keys there may be. A client's set of a new key beyond it is ignored (logged, and counted in
    /// [`StateStats::full`]); setting a key that exists always works, and so does [`Atoms::set`] from the server. The
    /// reference has no bound; this one keeps clients from growing the server's memory without end (each set is
    /// bounded by the server's `max_message_size` already). A linking user is sent one message per atom, all at once:
    /// keep the bound below the server's `outbound_queue`, as for [`StreamModel::max_events`](crate::StreamModel::max_events).
    pub fn max_atoms(mut self, max: usize) -> Self {
        self.max_atoms = max;
        self
    }

    /// Starts serving the atoms on `server`: its listeners are registered, and users linked already get the atoms.
    pub fn register(self, server: &Server) -> Atoms {
        let model = Arc::new(self.inner(server, "atoms".to_owned(), None));
        let registration = Arc::new(Registration::new(server, model.clone()));
        Atoms { model, registration }
    }

    /// Starts serving the atoms on `server` through `journal` (see [`journal`](crate::journal)), as `domain` there
    /// (the wire has no domain for atoms: any name the other models do not use). On a cluster each node registers
    /// them with its node's journal: the domain's owner decides each set (the bound, and
    /// [`clear_when_empty`](AtomModel::clear_when_empty) from its node's `users()`), once per cluster; every node
    /// keeps a replica and sends each set to its own linked users, and a user who links there the atoms.
    ///
    /// On the returned [`Atoms`], [`set`](Atoms::set) queues the set for the owner: `Ok` means queued.
    ///
    /// Fails when the journal does not take the domain (attached already, say): nothing stays registered then.
    pub fn register_journaled(
        self,
        server: &Server,
        domain: impl Into<String>,
        journal: Arc<dyn Journal>,
    ) -> Result<Atoms, JournalError> {
        let attached = Attached::new(journal.clone(), server);
        let model = Arc::new(self.inner(server, domain.into(), Some(attached)));
        let registration = Registration::journaled(server, model.clone(), journal)?;
        Ok(Atoms {
            model,
            registration: Arc::new(registration),
        })
    }

    fn inner(self, server: &Server, domain: String, journaling: Option<Attached<Owner>>) -> AtomsModel {
        let queue = server.config().outbound_queue();
        if self.max_atoms >= queue {
            tracing::warn!(
                max_atoms = self.max_atoms,
                outbound_queue = queue,
                "as many atoms as allowed do not fit a linking user's queue, whose connection would then be closed"
            );
        }
        AtomsModel {
            domain,
            options: self,
            atoms: Domain::new(Held::default()),
            counters: Counters::default(),
            journaling,
        }
    }
}

struct AtomsModel {
    /// With a journal, its name there.
    domain: String,
    options: AtomModel,
    /// The atoms (with a journal: the replica), and the users (with a journal: linked on this node) who got them.
    atoms: Domain<Held>,
    counters: Counters,
    journaling: Option<Attached<Owner>>,
}

/// The owner's atoms, and how many changes it made since its last checkpoint.
#[derive(Default)]
struct Owner {
    atoms: BTreeMap<String, Atom>,
    since: usize,
}

/// How many changes a journal keeps beside a checkpoint of the atoms, which is the whole map.
const CHECKPOINT_EVERY: usize = 100;

/// One committed change of the atoms: a set, or a clear.
#[derive(Serialize, Deserialize)]
struct Change {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    atom: Option<Atom>,
    #[serde(default)]
    clear: bool,
}

/// What the atoms' lock holds.
#[derive(Default)]
struct Held {
    atoms: BTreeMap<String, Atom>,
    /// The linked users that got the atoms since they linked; each set goes to them, and only to them.
    audience: HashSet<String>,
}

impl AtomsModel {
    /// Stores and sends to every caught-up user, with the atoms held: a user who links meanwhile gets either this
    /// message or the new value in its catch-up, exactly once.
    fn set(&self, server: &Server, held: &mut Held, key: &str, atom: Atom) {
        // One send per caught-up user rather than a broadcast: a broadcast would also reach a user who linked a moment
        // ago and whose catch-up, still to come, holds this value too.
        let out = AtomSetOut { key, atom: &atom };
        held.audience.retain(|username| {
            let sent = server.send_payload(username, wire::ATOM_SET, &out);
            if let Err(error) = &sent {
                // The connection is gone or going; its next link starts over.
                tracing::debug!(username, key, %error, "could not send an atom");
            }
            sent.is_ok()
        });
        held.atoms.insert(key.to_owned(), atom);
        self.counters.accepted();
    }
}

impl Listeners for AtomsModel {
    fn link(&self, server: &Server, username: &str) {
        let _ = self.atoms.with_mut(|held| {
            for (key, atom) in &held.atoms {
                if let Err(error) = server.send_payload(username, wire::ATOM_SET, &AtomSetOut { key, atom }) {
                    // The connection is gone or going; its next link starts over.
                    tracing::debug!(username, %error, "could not send the atoms");
                    return;
                }
            }
            held.audience.insert(username.to_owned());
        });
    }

    fn unlink(&self, _server: &Server, username: &str) {
        let _ = self.atoms.with_mut(|held| held.audience.remove(username));
    }

    fn leave(&self, server: &Server, username: &str) {
        let _ = self.atoms.with_mut(|held| {
            held.audience.remove(username);
            if self.options.clear_when_empty && server.users().is_empty() {
                held.atoms.clear();
            }
        });
    }

    fn message(&self, server: &Server, username: &str, message: &Message) -> bool {
        let Some(set) = wire::atom_set(message).ours(wire::ATOM_SET, None, username, &self.counters) else {
            return false;
        };
        if self.options.strict_key_prefixes && is_foreign(set.key, username) {
            tracing::warn!(username, key = set.key, "an atom/set of another user's key was dropped");
            self.counters.forbidden();
            return true;
        }
        let _ = self.atoms.with_mut(|held| {
            if held.atoms.len() >= self.options.max_atoms && !held.atoms.contains_key(set.key) {
                tracing::warn!(
                    username,
                    key = set.key,
                    max = self.options.max_atoms,
                    "an atom/set of a new key was dropped: the atoms are full"
                );
                self.counters.full();
                return;
            }
            self.set(server, held, set.key, set.atom);
        });
        true
    }

    fn caught_up(&self, username: &str) -> bool {
        self.atoms
            .with(|held| held.audience.contains(username))
            .unwrap_or(false)
    }
}

impl AtomsModel {
    /// Sends `username` every atom; whether every send went.
    fn send_all(&self, server: &Server, atoms: &BTreeMap<String, Atom>, username: &str) -> bool {
        for (key, atom) in atoms {
            if let Err(error) = server.send_payload_here(username, wire::ATOM_SET, &AtomSetOut { key, atom }) {
                tracing::debug!(username, %error, "could not send the atoms");
                return false;
            }
        }
        true
    }

    /// The atoms after `checkpoint` and the changes `after` it.
    fn restored(checkpoint: Option<&Checkpoint>, after: &[Committed]) -> Result<BTreeMap<String, Atom>, String> {
        let mut atoms = match checkpoint {
            Some(checkpoint) => BTreeMap::deserialize(&checkpoint.state).map_err(|error| error.to_string())?,
            None => BTreeMap::new(),
        };
        for committed in after {
            let change = Change::deserialize(&committed.change).map_err(|error| error.to_string())?;
            step(&mut atoms, change);
        }
        Ok(atoms)
    }

    /// Runs a request on the owner's atoms; the change to commit, if any.
    fn execute_on(&self, owner: &mut Owner, request: &Request) -> Option<Change> {
        let change = match request {
            Request::Message { user, text } => {
                let (message, _) = read_request(text)?;
                let set = if user == SNAPSHOT_USER && message.kind == SET {
                    // The server's own: no rule applies.
                    let payload = message.payload.as_ref()?;
                    (
                        payload.get("key")?.as_str()?.to_owned(),
                        Atom::from_value(payload.get("atom")?)?,
                    )
                } else {
                    let wire::Incoming::Ours(set) = wire::atom_set(&message) else {
                        return None;
                    };
                    if self.options.strict_key_prefixes && is_foreign(set.key, user) {
                        return None;
                    }
                    if owner.atoms.len() >= self.options.max_atoms && !owner.atoms.contains_key(set.key) {
                        tracing::warn!(
                            username = user,
                            key = set.key,
                            max = self.options.max_atoms,
                            "an atom/set of a new key was dropped: the atoms are full"
                        );
                        self.counters.full();
                        return None;
                    }
                    (set.key.to_owned(), set.atom)
                };
                self.counters.accepted();
                Change {
                    key: Some(set.0),
                    atom: Some(set.1),
                    clear: false,
                }
            }
            Request::Membership {
                change: MembershipChange::Leave,
                ..
            } => {
                let server = self.journaling.as_ref()?.server.upgrade()?;
                if !self.options.clear_when_empty || !server.users().is_empty() {
                    return None;
                }
                Change {
                    key: None,
                    atom: None,
                    clear: true,
                }
            }
            Request::Membership { .. } => return None,
        };
        owner.since += 1;
        Some(change)
    }
}

/// Who sets an atom from the server side, in a request: never a client's username under the default rule.
const SNAPSHOT_USER: &str = crate::SNAPSHOT_DISPATCHER;

/// Applies a committed change to `atoms`; the set it made, if any.
fn step(atoms: &mut BTreeMap<String, Atom>, change: Change) -> Option<(String, Atom)> {
    if change.clear {
        atoms.clear();
    }
    let (key, atom) = (change.key?, change.atom?);
    atoms.insert(key.clone(), atom.clone());
    Some((key, atom))
}

impl Model for AtomsModel {
    const KIND: &'static str = "atoms";

    fn domain(&self) -> &str {
        &self.domain
    }
}

impl Replica for AtomsModel {
    fn wants(&self, username: &str, message: &Message) -> bool {
        let Some(set) = wire::atom_set(message).ours(wire::ATOM_SET, None, username, &self.counters) else {
            return false;
        };
        if self.options.strict_key_prefixes && is_foreign(set.key, username) {
            tracing::warn!(username, key = set.key, "an atom/set of another user's key was dropped");
            self.counters.forbidden();
            return false;
        }
        true
    }

    fn owner_hears(&self, change: MembershipChange) -> bool {
        change == MembershipChange::Leave && self.options.clear_when_empty
    }

    fn link_here(&self, server: &Server, username: &str) {
        let _ = self.atoms.with_mut(|held| {
            if self.send_all(server, &held.atoms, username) {
                held.audience.insert(username.to_owned());
            }
        });
    }

    fn unlink_here(&self, username: &str) {
        let _ = self.atoms.with_mut(|held| held.audience.remove(username));
    }
}

impl JournalModel for AtomsModel {
    fn own(&self, checkpoint: Option<&Checkpoint>, after: &[Committed]) -> Result<(), String> {
        let attached = self.journaling.as_ref().ok_or("not journaled")?;
        let atoms = Self::restored(checkpoint, after)?;
        *attached.owner.lock() = Some(Owner { atoms, since: 0 });
        Ok(())
    }

    fn execute(&self, request: &Request) -> Option<Value> {
        let attached = self.journaling.as_ref()?;
        let mut owner = attached.owner.lock();
        let owner = owner.get_or_insert_with(Owner::default);
        let change = self.execute_on(owner, request)?;
        if change.clear {
            owner.atoms.clear();
        }
        if let (Some(key), Some(atom)) = (&change.key, &change.atom) {
            owner.atoms.insert(key.clone(), atom.clone());
        }
        serde_json::to_value(change).ok()
    }

    fn checkpoint(&self) -> Option<Value> {
        let attached = self.journaling.as_ref()?;
        let mut owner = attached.owner.lock();
        let owner = owner.as_mut().filter(|owner| owner.since >= CHECKPOINT_EVERY)?;
        owner.since = 0;
        serde_json::to_value(&owner.atoms).ok()
    }

    fn disown(&self) {
        if let Some(attached) = &self.journaling {
            *attached.owner.lock() = None;
        }
    }

    fn load(&self, checkpoint: Option<&Checkpoint>, after: &[Committed]) -> Result<(), String> {
        let attached = self.journaling.as_ref().ok_or("not journaled")?;
        let restored = Self::restored(checkpoint, after)?;
        let server = attached.server.upgrade();
        self.atoms
            .with_mut(|held| {
                held.atoms = restored;
                let Some(server) = server else { return };
                // Everyone linked here gets the atoms again (the last value wins: twice is harmless).
                held.audience.clear();
                for username in linked_here(&server) {
                    if self.send_all(&server, &held.atoms, &username) {
                        held.audience.insert(username);
                    }
                }
            })
            .map_err(|error| error.to_string())
    }

    fn apply(&self, committed: &Committed) {
        let Some(attached) = &self.journaling else { return };
        let change = match Change::deserialize(&committed.change) {
            Ok(change) => change,
            Err(error) => {
                return tracing::error!(domain = self.domain, n = committed.n, %error, "a committed change of another form was skipped")
            }
        };
        let Some(server) = attached.server.upgrade() else {
            return;
        };
        let _ = self.atoms.with_mut(|held| {
            let Some((key, atom)) = step(&mut held.atoms, change) else {
                return;
            };
            let out = AtomSetOut { key: &key, atom: &atom };
            held.audience.retain(|username| {
                let sent = server.send_payload_here(username, wire::ATOM_SET, &out);
                if let Err(error) = &sent {
                    tracing::debug!(username, %error, "could not send an atom");
                }
                sent.is_ok()
            });
        });
    }
}

/// Whether `key` is under another user's prefix: it has a `/` and does not start with `<username>/`.
fn is_foreign(key: &str, username: &str) -> bool {
    key.contains('/') && !key.strip_prefix(username).is_some_and(|rest| rest.starts_with('/'))
}

/// The atoms served on one server: read and set them from the server side. Cheap to clone; clones share the atoms.
///
/// ```
/// use emitter_core::Server;
/// use emitter_state::{Atom, AtomModel};
///
/// let server = Server::new();
/// let atoms = AtomModel::new().register(&server);
/// atoms.set(&server, "round", 1).unwrap(); // stored, and sent to every linked user
/// assert_eq!(atoms.get("round"), Some(Atom::from(1)));
/// ```
#[derive(Clone)]
pub struct Atoms {
    model: Arc<AtomsModel>,
    registration: Arc<Registration>,
}

impl fmt::Debug for Atoms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Atoms")
            .field("options", &self.model.options)
            .finish_non_exhaustive()
    }
}

impl Atoms {
    /// The atom of `key`, if it is set.
    pub fn get(&self, key: &str) -> Option<Atom> {
        self.model
            .atoms
            .with(|held| held.atoms.get(key).cloned())
            .ok()
            .flatten()
    }

    /// Every key, in order.
    pub fn keys(&self) -> Vec<String> {
        self.model
            .atoms
            .with(|held| held.atoms.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Every atom, by key.
    pub fn all(&self) -> BTreeMap<String, Atom> {
        self.model.atoms.with(|held| held.atoms.clone()).unwrap_or_default()
    }

    /// Runs `f` on the atoms, with them held: no atom is set meanwhile, and what `f` sends (a `server.send`) reaches
    /// each user in order with the `atom/set` messages, after every set made before. An [`Atoms::set`] from inside `f`
    /// fails with [`Error::Busy`].
    ///
    /// ```
    /// use emitter_core::Server;
    /// use emitter_state::AtomModel;
    ///
    /// let server = Server::new();
    /// let atoms = AtomModel::new().register(&server);
    /// atoms.set(&server, "ready", true).unwrap();
    /// let count = atoms.with_atoms(|atoms| atoms.len()).unwrap();
    /// assert_eq!(count, 1);
    /// assert!(atoms.with_atoms(|_| atoms.set(&server, "nested", 1)).unwrap().is_err()); // Busy
    /// ```
    pub fn with_atoms<R>(&self, f: impl FnOnce(&BTreeMap<String, Atom>) -> R) -> Result<R, Error> {
        self.model.atoms.with(|held| f(&held.atoms))
    }

    /// Sets `key` to `atom` and sends it to every linked user, as a client's `atom/set` would; neither the key rule
    /// nor the bound applies to the server. Fails with [`Error::Busy`] only when called from inside
    /// [`with_atoms`](Atoms::with_atoms). On journaled atoms ([`register_journaled`](AtomModel::register_journaled))
    /// the set is queued for the owner: `Ok` means queued ([`Error::Journal`] when the journal refuses it).
    pub fn set(&self, server: &Server, key: &str, atom: impl Into<Atom>) -> Result<(), Error> {
        let atom = atom.into();
        if let Some(attached) = &self.model.journaling {
            let text = server_request(SET, json!({ "key": key, "atom": atom }));
            return attached.submit(&self.model.domain, SNAPSHOT_USER, text);
        }
        self.model
            .atoms
            .with_mut(|held| self.model.set(server, held, key, atom))
    }

    /// What the atoms applied and turned away so far.
    pub fn stats(&self) -> StateStats {
        self.model.counters.snapshot()
    }

    /// Stops serving the atoms on the server: no listener of theirs runs again. The atoms stay readable here.
    pub fn unregister(&self) {
        self.registration.unregister();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_foreign_key_has_a_slash_and_another_name_before_it() {
        assert!(!is_foreign("color", "alice"));
        assert!(!is_foreign("alice/color", "alice"));
        assert!(!is_foreign("alice/a/b", "alice"));
        assert!(is_foreign("bob/color", "alice"));
        assert!(is_foreign("alicex/color", "alice"));
        assert!(is_foreign("/color", "alice"));
        assert!(is_foreign("al/ice", "alice"));
    }
}
