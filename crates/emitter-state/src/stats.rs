//! What a model applied and what it turned away, counted.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::Error;

/// What a model has applied and what it turned away so far. Each model counts only what concerns it: a message for
/// another domain is not counted at all.
///
/// ```
/// use emitter_core::Server;
/// use emitter_state::AtomModel;
///
/// let atoms = AtomModel::new().register(&Server::new());
/// assert_eq!(atoms.stats().accepted, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateStats {
    /// Changes applied: atoms set, events appended, actions applied (from clients and from the server's own calls).
    pub accepted: u64,
    /// Messages of the model's type (and domain) without the shape the protocol gives them: no `event` object, an
    /// `optimisticId` that is not a string, an atom that is not a string, number or boolean, …
    pub malformed: u64,
    /// Events or actions of a type without a handler ([`Error::Unknown`]).
    pub unknown: u64,
    /// Payloads that did not fit their handler's type ([`Error::Invalid`]).
    pub invalid: u64,
    /// Events or actions a handler refused ([`Error::Rejected`]).
    pub rejected: u64,
    /// Handlers, mappers or server-side changes that panicked ([`Error::Panicked`]).
    pub panicked: u64,
    /// Changes refused because a bound was reached ([`Error::Full`]).
    pub full: u64,
    /// Atoms a client may not set: with strict key prefixes, a key with a `/` that is not under its own name.
    pub forbidden: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    accepted: AtomicU64,
    malformed: AtomicU64,
    unknown: AtomicU64,
    invalid: AtomicU64,
    rejected: AtomicU64,
    panicked: AtomicU64,
    full: AtomicU64,
    forbidden: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn accepted(&self) {
        bump(&self.accepted);
    }

    pub(crate) fn malformed(&self) {
        bump(&self.malformed);
    }

    pub(crate) fn forbidden(&self) {
        bump(&self.forbidden);
    }

    pub(crate) fn full(&self) {
        bump(&self.full);
    }

    /// Counts the outcome of one change.
    pub(crate) fn outcome(&self, outcome: &Result<(), Error>) {
        match outcome {
            Ok(()) => bump(&self.accepted),
            Err(Error::Unknown { .. }) => bump(&self.unknown),
            Err(Error::Invalid { .. }) => bump(&self.invalid),
            Err(Error::Rejected { .. }) => bump(&self.rejected),
            Err(Error::Panicked { .. }) => bump(&self.panicked),
            Err(Error::Full) => bump(&self.full),
            Err(
                Error::Busy | Error::Projection { .. } | Error::NoSnapshot | Error::Journaled | Error::Journal { .. },
            ) => {}
        }
    }

    pub(crate) fn panicked(&self) {
        bump(&self.panicked);
    }

    pub(crate) fn snapshot(&self) -> StateStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StateStats {
            accepted: read(&self.accepted),
            malformed: read(&self.malformed),
            unknown: read(&self.unknown),
            invalid: read(&self.invalid),
            rejected: read(&self.rejected),
            panicked: read(&self.panicked),
            full: read(&self.full),
            forbidden: read(&self.forbidden),
        }
    }
}
