//! Why an event, an action or a change was not applied.

use std::fmt;

/// Why a stream event, a projection action or a server-side change was not applied.
///
/// The models count each of these in their [`StateStats`](crate::StateStats); a change that came from a client is also logged.
///
/// ```
/// use emitter_state::Error;
///
/// let error = Error::Rejected { kind: "play".into(), reason: "it is not your turn".into() };
/// assert_eq!(error.to_string(), "play was rejected: it is not your turn");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// No handler for this type was registered with `when`.
    Unknown {
        /// The event's or action's `type`.
        kind: String,
    },
    /// The payload does not fit the type of its handler.
    Invalid {
        /// The event's or action's `type`.
        kind: String,
        /// What serde said.
        reason: String,
    },
    /// The handler refused it (it returned an `Err`).
    Rejected {
        /// The event's or action's `type`.
        kind: String,
        /// The handler's error, as text.
        reason: String,
    },
    /// The handler, the mapper or the closure of a server-side change panicked. The panic was caught; see the model's
    /// documentation for what it does with a state that a panic may have left half changed.
    Panicked {
        /// What was running: an event or action type, `mapper` or `update`.
        kind: String,
    },
    /// A bound of the model was reached: a stream's history is full, or the atoms have as many keys as allowed.
    Full,
    /// A stream was asked to compact or rotate, and its model has no snapshot event (see
    /// [`StreamModel::compaction`](crate::StreamModel::compaction)).
    NoSnapshot,
    /// The model was used from inside one of its own handlers, its mapper or a `with_state` closure, on the same
    /// thread. Waiting there would deadlock, so the call fails instead.
    Busy,
    /// The change can only be made by the owner of a journaled model's domain (see [`journal`](crate::journal)), and
    /// cannot be sent there: [`Projection::update`](crate::Projection::update) takes a closure. Dispatch an action
    /// (of a type only the server dispatches) instead.
    Journaled,
    /// The model's journal did not take the request: its queue is full, or it cannot reach its store.
    Journal {
        /// What the journal said.
        reason: String,
    },
    /// A projection, or a stream's snapshot, could not be turned into JSON (`serde_json::to_value` failed: a map with
    /// keys that are not strings, say).
    Projection {
        /// What serde said.
        reason: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unknown { kind } => write!(f, "no handler for type {kind}"),
            Error::Invalid { kind, reason } => write!(f, "the payload of {kind} does not fit: {reason}"),
            Error::Rejected { kind, reason } => write!(f, "{kind} was rejected: {reason}"),
            Error::Panicked { kind } => write!(f, "{kind} panicked"),
            Error::Full => f.write_str("the model is full"),
            Error::NoSnapshot => f.write_str("the stream has no snapshot event to compact into"),
            Error::Busy => f.write_str("the model was used from inside its own handler, mapper or with_state"),
            Error::Journaled => f.write_str("only the owner of the journaled domain makes this change"),
            Error::Journal { reason } => write!(f, "the journal did not take the request: {reason}"),
            Error::Projection { reason } => write!(f, "the projection is not JSON: {reason}"),
        }
    }
}

impl std::error::Error for Error {}
