//! The Stream model: a state derived from a log of events, which every client folds itself.
//!
//! A client appends an event (`{type, payload?}`) with `stream/append`. The server reads the payload into the Rust
//! type of the event's handler and runs the handler on its own copy of the state; if it applies, the event is added to
//! the history and sent to every caught-up linked user, the sender included, with the sender's username as the
//! dispatcher. A user who links gets the whole history, one `stream/append` per event, after its snapshot. Clients run
//! the same handlers (in TypeScript) on the events in the order received, so every client's state equals the server's.
//!
//! A long-lived stream folds its history into one *snapshot* event when it is full (or when the app says so), so that
//! it runs for ever in bounded memory: see [`StreamModel::compaction`] and [`AtLimit`].

use std::collections::HashSet;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use emitter_core::{Message, Server};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::delta::json_len;
use crate::domain::Domain;
use crate::handlers::{Handlers, Outcome};
use crate::journal::{Checkpoint, Committed, Journal, JournalError, JournalModel, MembershipChange, Request};
use crate::journaled::{linked_here, read_request, server_request, Journaling, COMPACT, ROTATE};
use crate::registration::{Listeners, Model, Registration, Replica};
use crate::stats::Counters;
use crate::wire::{self, Echo, StreamAppendOut};
use crate::{Error, StateStats};

/// How many events a stream's history holds by default: see [`StreamModel::max_events`]. Well below the server's
/// default `outbound_queue` (4,096), which a linking user's catch-up, one message per event, must fit in.
pub const DEFAULT_MAX_EVENTS: usize = 1_000;
/// How many bytes of events (serialized) a stream's history holds by default: see [`StreamModel::max_history_bytes`].
pub const DEFAULT_MAX_HISTORY_BYTES: usize = 16 << 20;
/// The dispatcher of a snapshot event (see [`StreamModel::compaction`]). It is never a username under the default
/// username rule (which wants a letter first), so a client can tell it from any user's event.
pub const SNAPSHOT_DISPATCHER: &str = "@server";

/// What a stream does with an event that its full history has no room for (see [`StreamModel::at_limit`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AtLimit {
    /// The event is refused ([`Error::Full`]), and so is every later one: the history stays exactly what the clients
    /// folded. The default, and the only choice for a stream without [`compaction`](StreamModel::compaction).
    #[default]
    Refuse,
    /// The history is first compacted into one snapshot event of the state (see
    /// [`compaction`](StreamModel::compaction)); then the event is handled as usual. Linked clients are sent nothing
    /// for the compaction (their state is already that state); a client that links later gets the snapshot event and
    /// the events after it. The stream accepts events for ever, in bounded memory.
    Compact,
}

/// How a stream turns its state into the payload of a snapshot event.
type Snapshot<S> = Box<dyn Fn(&S) -> Result<Value, serde_json::Error> + Send + Sync>;

/// The snapshot event of a stream: its type, and how to make its payload.
struct Compaction<S> {
    kind: String,
    snapshot: Snapshot<S>,
}

/// The definition of a stream: its initial state, a handler per event type, and the bounds of its history.
///
/// ```
/// use emitter_core::Server;
/// use emitter_state::StreamModel;
///
/// #[derive(Default)]
/// struct Counter { value: i64, claimed_by: Option<String> }
///
/// let server = Server::new();
/// let counter = StreamModel::new(Counter::default())
///     .when("increment", |counter: &mut Counter, dispatcher: &str, by: i64| {
///         if counter.claimed_by.as_deref().is_some_and(|owner| owner != dispatcher) {
///             return Err("claimed by someone else");
///         }
///         counter.value += by;
///         Ok(())
///     })
///     .when("claim", |counter: &mut Counter, dispatcher: &str, (): ()| {
///         counter.claimed_by.get_or_insert_with(|| dispatcher.to_owned());
///     })
///     .register(&server, "counter");
/// assert_eq!(counter.with_state(|counter| counter.value), Ok(0));
/// ```
pub struct StreamModel<S> {
    initial: S,
    handlers: Handlers<S>,
    max_events: usize,
    max_bytes: usize,
    at_limit: AtLimit,
    compaction: Option<Compaction<S>>,
}

impl<S> fmt::Debug for StreamModel<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamModel")
            .field("max_events", &self.max_events)
            .field("max_history_bytes", &self.max_bytes)
            .field("at_limit", &self.at_limit)
            .field("snapshot", &self.compaction.as_ref().map(|compaction| &compaction.kind))
            .finish_non_exhaustive()
    }
}

impl<S: Send + 'static> StreamModel<S> {
    /// A stream that starts at `initial`, with no event types yet.
    pub fn new(initial: S) -> Self {
        StreamModel {
            initial,
            handlers: Handlers::default(),
            max_events: DEFAULT_MAX_EVENTS,
            max_bytes: DEFAULT_MAX_HISTORY_BYTES,
            at_limit: AtLimit::Refuse,
            compaction: None,
        }
    }

    /// Handles events of type `kind`, whose payload is read into a `T` first (a missing payload reads as JSON
    /// `null`, so `()` and `Option<_>` take events without one). The handler gets the state, the dispatcher's
    /// username and the payload, and returns `()` or a `Result` (see [`Outcome`]).
    ///
    /// An event whose payload does not fit, or that the handler refuses with `Err`, is not added to the history and
    /// not sent to anyone. A handler that refuses must leave the state unchanged: the event never reaches the
    /// clients, so a change it made would be the server's alone.
    ///
    /// ```
    /// use emitter_state::StreamModel;
    ///
    /// // Events `{"type": "move", "payload": [x, y]}` and `{"type": "undo"}`.
    /// let path = StreamModel::new(Vec::<(i32, i32)>::new())
    ///     .when("move", |path: &mut Vec<(i32, i32)>, _: &str, to: (i32, i32)| path.push(to))
    ///     .when("undo", |path: &mut Vec<(i32, i32)>, _: &str, (): ()| {
    ///         path.pop().map(|_| ()).ok_or("nothing to undo")
    ///     });
    /// # drop(path);
    /// ```
    ///
    /// # Panics
    ///
    /// If `kind` has a handler already, or is the type of the snapshot event.
    pub fn when<T, O, F>(mut self, kind: &str, handler: F) -> Self
    where
        T: DeserializeOwned,
        O: Outcome,
        F: Fn(&mut S, &str, T) -> O + Send + Sync + 'static,
    {
        assert!(
            self.compaction
                .as_ref()
                .is_none_or(|compaction| compaction.kind != kind),
            "type {kind} is the snapshot event's"
        );
        self.handlers.add(kind, handler);
        self
    }

    /// Lets the stream fold its history into one *snapshot event*: `{"type": kind, "payload": snapshot(&state)}`,
    /// dispatched by [`SNAPSHOT_DISPATCHER`]. Compacting replaces the whole history with that one event, so the
    /// history a linking user is sent is the snapshot and the events since. It happens when the history is full under
    /// [`AtLimit::Compact`], and when the app calls [`Stream::compact`] or [`Stream::rotate`].
    ///
    /// The snapshot event is an ordinary `stream/append` on the wire, so a reference client (`@krmx/state`) takes it
    /// as it is, provided its model has a handler of `kind` that makes its state from the payload: with `snapshot`
    /// giving the state as the client holds it, `.when(kind, z.any(), (_state, _dispatcher, snapshot) => snapshot)`
    /// (a handler that returns a value replaces the state). A client model without that handler ignores the event
    /// (an unknown type) and would fold only the events after it: give every client model the handler before turning
    /// compaction on. The server has no handler of `kind` (its state is already the snapshot's), so a client that
    /// appends an event of that type is refused as [`Error::Unknown`].
    ///
    /// ```
    /// use emitter_core::Server;
    /// use emitter_state::{AtLimit, StreamModel};
    ///
    /// let server = Server::new();
    /// let total = StreamModel::new(0_i64)
    ///     .when("add", |total: &mut i64, _: &str, n: i64| *total += n)
    ///     .compaction("snapshot", |total: &i64| *total) // the client's state is the number itself
    ///     .at_limit(AtLimit::Compact)
    ///     .register(&server, "total");
    /// # drop(total);
    /// ```
    ///
    /// # Panics
    ///
    /// If `kind` has a handler (registered with [`when`](StreamModel::when)).
    pub fn compaction<T, F>(mut self, kind: &str, snapshot: F) -> Self
    where
        T: Serialize,
        F: Fn(&S) -> T + Send + Sync + 'static,
    {
        assert!(!self.handlers.has(kind), "type {kind} already has a handler");
        self.compaction = Some(Compaction {
            kind: kind.to_owned(),
            snapshot: Box::new(move |state| serde_json::to_value(snapshot(state))),
        });
        self
    }

    /// What the stream does with an event that its full history (see [`max_events`](StreamModel::max_events) and
    /// [`max_history_bytes`](StreamModel::max_history_bytes)) has no room for. Default [`AtLimit::Refuse`]: today's
    /// behaviour, nothing sent to anyone, every later event refused too. [`AtLimit::Compact`] needs
    /// [`compaction`](StreamModel::compaction): the history is folded into one snapshot event, and the event is then
    /// handled as usual. Either way the history stays within its bounds.
    ///
    /// # Panics
    ///
    /// [`register`](StreamModel::register) panics for [`AtLimit::Compact`] on a model without
    /// [`compaction`](StreamModel::compaction): a mistake in the model's definition, found when it is built.
    pub fn at_limit(mut self, policy: AtLimit) -> Self {
        self.at_limit = policy;
        self
    }

    /// How many events the history may hold (default [`DEFAULT_MAX_EVENTS`]).
    ///
    /// The history is what a linking user is sent to rebuild the state: a client that missed the first events would
    /// fold a different state, so the history is never cut short. What happens once it is full is the
    /// [`at_limit`](StreamModel::at_limit) policy's: by default new events are refused (logged at warn and counted in
    /// [`StateStats::full`]; a client's optimistic copy of a refused event expires after its `optimisticSeconds`);
    /// with [`AtLimit::Compact`] the history is folded into one snapshot event, and the stream goes on. The
    /// reference's history grows without end. With compaction, keep the bound at 2 or more (the snapshot takes one).
    ///
    /// A linking user is sent the history one message per event, all at once, and a connection whose queue holds more
    /// than the server's `outbound_queue` (4,096 by default) is closed as a slow consumer. So keep the bound (with the
    /// other models' catch-ups) below it, or raise it with `Server::builder().outbound_queue(..)`; `register` logs a
    /// warning when the bound alone does not fit.
    pub fn max_events(mut self, max: usize) -> Self {
        self.max_events = max;
        self
    }

    /// How many bytes of events, serialized, the history may hold (default [`DEFAULT_MAX_HISTORY_BYTES`]); full
    /// works as in [`max_events`](StreamModel::max_events). A full history's catch-up must also fit the server's
    /// `outbound_budget` (4 MiB by default): raise it with `Server::builder().outbound_budget(..)` for long histories.
    pub fn max_history_bytes(mut self, max: usize) -> Self {
        self.max_bytes = max;
        self
    }

    /// Starts serving the stream on `server` as `domain`: its listeners are registered, and users linked already get
    /// the history (empty, unless the server appended events before).
    ///
    /// # Panics
    ///
    /// With [`AtLimit::Compact`] and no [`compaction`](StreamModel::compaction).
    pub fn register(self, server: &Server, domain: impl Into<String>) -> Stream<S> {
        let domain = domain.into();
        let model = Arc::new(self.inner(server, domain, None));
        let registration = Arc::new(Registration::new(server, model.clone()));
        Stream { model, registration }
    }

    /// Checks the definition, and makes the model.
    fn inner(self, server: &Server, domain: String, journaling: Option<Journaling<Log<S>, S>>) -> StreamInner<S> {
        assert!(
            self.at_limit != AtLimit::Compact || self.compaction.is_some(),
            "stream {domain}: AtLimit::Compact needs a snapshot event, given with StreamModel::compaction"
        );
        if self.at_limit == AtLimit::Compact && self.max_events < 2 {
            tracing::warn!(
                domain,
                max_events = self.max_events,
                "a compacted history is its snapshot event alone, with no room for an event: every event will be refused"
            );
        }
        let queue = server.config().outbound_queue();
        if self.max_events >= queue {
            tracing::warn!(
                domain,
                max_events = self.max_events,
                outbound_queue = queue,
                "a full history does not fit a linking user's queue, whose connection would then be closed"
            );
        }
        // Its clients' events are echoed as sent, members in the order sent (see `wire::stream_append`).
        server.keep_raw_payload(wire::STREAM_APPEND);
        StreamInner {
            domain,
            handlers: self.handlers,
            max_events: self.max_events,
            max_bytes: self.max_bytes,
            at_limit: self.at_limit,
            compaction: self.compaction,
            log: Domain::new(Log::new(self.initial)),
            counters: Counters::default(),
            journaling,
        }
    }
}

impl<S: Serialize + DeserializeOwned + Send + 'static> StreamModel<S> {
    /// Starts serving the stream on `server` as `domain` through `journal` (see [`journal`](crate::journal)): on a
    /// cluster, each node registers it with its node's journal, and the domain's owner runs the handlers and decides
    /// what joins the history (and compacts it at the limit, under [`AtLimit::Compact`]), once per cluster; every
    /// node folds the committed events into its replica, and echoes each event to its own users, exactly as the
    /// dispatcher sent it. The state crosses the journal as JSON, with serde (in a checkpoint after a compaction, and
    /// in [`Stream::rotate`]).
    ///
    /// On the returned [`Stream`], [`append`](Stream::append), [`compact`](Stream::compact) and
    /// [`rotate`](Stream::rotate) queue the change for the owner: `Ok` means queued, and what the owner made of it
    /// reaches the users (and [`history`](Stream::history)) once committed.
    ///
    /// Fails when the journal does not take the domain (attached already, say): nothing stays registered then.
    ///
    /// # Panics
    ///
    /// As [`register`](StreamModel::register).
    pub fn register_journaled(
        self,
        server: &Server,
        domain: impl Into<String>,
        journal: Arc<dyn Journal>,
    ) -> Result<Stream<S>, JournalError> {
        let journaling = Journaling::new(journal.clone(), server, &self.initial)?;
        let model = Arc::new(self.inner(server, domain.into(), Some(journaling)));
        let registration = Registration::journaled(server, model.clone(), journal)?;
        Ok(Stream {
            model,
            registration: Arc::new(registration),
        })
    }
}

/// One committed change of a stream. In this order: the state it rotates to; the snapshot event its history restarts
/// with (a compaction or a rotation); the event it appends, as the text its dispatcher sent.
#[derive(Serialize, Deserialize, Default)]
struct Change {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rotate: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapshot: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dispatcher: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event: Option<String>,
}

/// A stream's checkpoint: the state, and the history it is the fold of (taken after a compaction, so short).
#[derive(Serialize, Deserialize)]
struct Saved {
    state: Value,
    /// Each event's dispatcher and text.
    history: Vec<(String, String)>,
}

/// One event of the history, as every client got it.
///
/// ```
/// use emitter_core::{Message, Server};
/// use emitter_state::StreamModel;
///
/// let server = Server::new();
/// let log = StreamModel::new(0).when("tick", |n: &mut i32, _: &str, (): ()| *n += 1).register(&server, "log");
/// log.append(&server, "clock", &Message::new("tick")).unwrap();
/// let entry = &log.history()[0];
/// assert_eq!(entry.dispatcher, "clock");
/// assert_eq!(entry.event, serde_json::json!({ "type": "tick" }));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Who appended it: the username of the sender, never what the client claimed.
    pub dispatcher: String,
    /// The event, `{type, payload?}`, as the client sent it. (Its members compare regardless of order; the echo to
    /// the clients keeps the order the client sent them in.)
    pub event: Value,
}

/// An entry of the history, with the text its client sent (when the server kept it), to echo verbatim.
struct Recorded {
    entry: Entry,
    text: Option<Box<RawValue>>,
    /// With a journal: the committed change that recorded it (0 without).
    n: u64,
}

impl Recorded {
    fn echo(&self) -> Echo<'_> {
        match &self.text {
            Some(text) => Echo::Text(text),
            None => Echo::Value(&self.entry.event),
        }
    }
}

struct Log<S> {
    state: S,
    history: Vec<Recorded>,
    /// The serialized size of the events in `history`.
    bytes: usize,
    /// The linked users that got the history since they linked; each new event goes to them, and only to them.
    audience: HashSet<String>,
    /// With a journal: the last committed change applied (the replica's), and whether the history restarted since
    /// the last checkpoint (the owner's).
    applied: u64,
    compacted: bool,
}

struct StreamInner<S> {
    domain: String,
    handlers: Handlers<S>,
    max_events: usize,
    max_bytes: usize,
    at_limit: AtLimit,
    compaction: Option<Compaction<S>>,
    log: Domain<Log<S>>,
    counters: Counters,
    journaling: Option<Journaling<Log<S>, S>>,
}

impl<S> Log<S> {
    fn new(state: S) -> Self {
        Log {
            state,
            history: Vec::new(),
            bytes: 0,
            audience: HashSet::new(),
            applied: 0,
            compacted: false,
        }
    }

    /// Whether the history has no room for one more event of `size` bytes.
    fn full(&self, size: usize, max_events: usize, max_bytes: usize) -> bool {
        self.history.len() >= max_events || self.bytes + size > max_bytes
    }

    /// Replaces the history with one snapshot event of `size` bytes.
    fn restart(&mut self, snapshot: Recorded, size: usize) {
        self.history.clear();
        self.history.push(snapshot);
        self.bytes = size;
    }
}

impl<S: Send + 'static> StreamInner<S> {
    /// The snapshot event of `state`, as recorded in a history. Fails without a snapshot event, and when the snapshot
    /// panics or is not JSON.
    fn snapshot(&self, state: &S) -> Result<(Recorded, usize), Error> {
        let compaction = self.compaction.as_ref().ok_or(Error::NoSnapshot)?;
        let payload = catch_unwind(AssertUnwindSafe(|| (compaction.snapshot)(state)))
            .map_err(|_| Error::Panicked {
                kind: compaction.kind.clone(),
            })?
            .map_err(|error| Error::Projection {
                reason: error.to_string(),
            })?;
        let mut event = serde_json::Map::new();
        event.insert("type".to_owned(), Value::String(compaction.kind.clone()));
        event.insert("payload".to_owned(), payload);
        let event = Value::Object(event);
        let size = json_len(&event);
        let recorded = Recorded {
            entry: Entry {
                dispatcher: SNAPSHOT_DISPATCHER.to_owned(),
                event,
            },
            text: None,
            n: 0,
        };
        Ok((recorded, size))
    }

    /// Replaces the history with the snapshot event of the state. Sends nothing: the caught-up users hold that state.
    /// A snapshot larger than the history's bound in bytes is [`Error::Full`], and the history is left as it was.
    fn compact(&self, log: &mut Log<S>) -> Result<(), Error> {
        let (recorded, size) = self.snapshot(&log.state)?;
        if size > self.max_bytes {
            tracing::warn!(
                domain = self.domain,
                bytes = size,
                max_bytes = self.max_bytes,
                "the snapshot alone is larger than the history may be: not compacted"
            );
            return Err(Error::Full);
        }
        let dropped = log.history.len();
        log.restart(recorded, size);
        tracing::debug!(domain = self.domain, dropped, bytes = size, "compacted the history");
        Ok(())
    }

    /// Sends `append` to `username`: with a journal, only if it is linked on this node (every node serves its own).
    fn send(&self, server: &Server, username: &str, append: &StreamAppendOut<'_>) -> Result<(), emitter_core::Error> {
        match self.journaling {
            Some(_) => server.send_payload_here(username, wire::STREAM_APPEND, append),
            None => server.send_payload(username, wire::STREAM_APPEND, append),
        }
    }

    /// Makes room for an event of `size` bytes in a full history (compacting it under [`AtLimit::Compact`]); whether
    /// it compacted. Fails with [`Error::Full`] when there is no room.
    fn make_room(&self, log: &mut Log<S>, size: usize) -> Result<bool, Error> {
        if !log.full(size, self.max_events, self.max_bytes) {
            return Ok(false);
        }
        // An event larger than the whole history may be is refused without compacting for nothing.
        if self.at_limit == AtLimit::Refuse || size > self.max_bytes {
            return Err(Error::Full);
        }
        self.compact(log)?;
        // Still no room: the snapshot alone (nearly) fills the history.
        if log.full(size, self.max_events, self.max_bytes) {
            return Err(Error::Full);
        }
        Ok(true)
    }

    /// Counts and logs what the owner made of an event (a journaled stream's: its dispatcher's node cannot tell).
    fn log_outcome(&self, outcome: &Result<(), Error>, dispatcher: &str, kind: &str) {
        self.counters.outcome(outcome);
        self.log_refusal(outcome, dispatcher, kind);
        match outcome {
            Err(Error::Panicked { .. } | Error::Full) | Ok(()) => {}
            Err(error @ (Error::Unknown { .. } | Error::Invalid { .. })) => {
                tracing::warn!(domain = self.domain, dispatcher, %error, "an event was dropped");
            }
            Err(error) => tracing::debug!(domain = self.domain, dispatcher, %error, "an event was dropped"),
        }
    }

    /// Logs an event the handler panicked on or the history had no room for: the server's side of a refusal, which a
    /// client's own check cannot foresee (a bad payload is the client's, logged where it is dropped).
    fn log_refusal(&self, outcome: &Result<(), Error>, dispatcher: &str, kind: &str) {
        match outcome {
            Err(Error::Panicked { kind }) => tracing::error!(
                domain = self.domain,
                dispatcher,
                kind,
                "an event handler panicked; the event was dropped, and the server's state may no longer be the fold of its history"
            ),
            Err(Error::Full) => tracing::warn!(
                domain = self.domain,
                dispatcher,
                kind,
                max_events = self.max_events,
                max_bytes = self.max_bytes,
                at_limit = ?self.at_limit,
                "an event was refused: the history is full"
            ),
            _ => {}
        }
    }

    /// Sends every caught-up user; forgets those it could not reach (their next link starts over).
    fn send_to(&self, server: &Server, audience: &mut HashSet<String>, append: &StreamAppendOut<'_>) {
        // One send per caught-up user rather than a broadcast: a broadcast would also reach a user who linked a moment
        // ago and whose catch-up, still to come, holds this event too.
        audience.retain(|username| {
            let sent = self.send(server, username, append);
            if let Err(error) = &sent {
                tracing::debug!(domain = self.domain, username, %error, "could not send an event");
            }
            sent.is_ok()
        });
    }

    /// Applies and, if it applies, records and sends one event; all with the log held, so that every user gets each
    /// event exactly once: in its catch-up if it linked before, live if after.
    fn append(
        &self,
        server: &Server,
        dispatcher: &str,
        event: &Value,
        text: Option<&RawValue>,
        kind: &str,
        payload: Option<&Value>,
    ) -> Result<(), Error> {
        let outcome = self
            .log
            .with_mut(|log| {
                let size = json_len(event);
                self.make_room(log, size)?;
                self.handlers.apply(&mut log.state, dispatcher, kind, payload)?;
                log.history.push(Recorded {
                    entry: Entry {
                        dispatcher: dispatcher.to_owned(),
                        event: event.clone(),
                    },
                    text: text.map(RawValue::to_owned),
                    n: 0,
                });
                log.bytes += size;
                let append = StreamAppendOut {
                    domain: &self.domain,
                    dispatcher,
                    event: text.map_or(Echo::Value(event), Echo::Text),
                };
                self.send_to(server, &mut log.audience, &append);
                Ok(())
            })
            .and_then(|outcome| outcome);
        self.counters.outcome(&outcome);
        self.log_refusal(&outcome, dispatcher, kind);
        outcome
    }
}

impl<S: Send + 'static> StreamInner<S> {
    /// Sends `username` the events of the history recorded after the `after`th committed change (all of it for 0);
    /// whether every send went.
    fn send_history(&self, server: &Server, log: &Log<S>, username: &str, after: u64) -> bool {
        for recorded in log.history.iter().filter(|recorded| after == 0 || recorded.n > after) {
            let append = StreamAppendOut {
                domain: &self.domain,
                dispatcher: &recorded.entry.dispatcher,
                event: recorded.echo(),
            };
            if let Err(error) = self.send(server, username, &append) {
                // The connection is gone or going: its next link starts over.
                tracing::debug!(domain = self.domain, username, %error, "could not send the history");
                return false;
            }
        }
        true
    }

    /// The log after `checkpoint` and the changes `after` it: the owner's, or the replica's (without its audience).
    fn restored(
        &self,
        journaling: &Journaling<Log<S>, S>,
        checkpoint: Option<&Checkpoint>,
        after: &[Committed],
    ) -> Result<Log<S>, String> {
        let mut log = match checkpoint {
            Some(checkpoint) => {
                let saved = Saved::deserialize(&checkpoint.state).map_err(|error| error.to_string())?;
                let mut log = Log::new((journaling.codec.decode)(saved.state)?);
                for (dispatcher, text) in saved.history {
                    let recorded = recorded(dispatcher, text, checkpoint.n)?;
                    log.bytes += json_len(&recorded.entry.event);
                    log.history.push(recorded);
                }
                log.applied = checkpoint.n;
                log
            }
            None => Log::new((journaling.codec.decode)(journaling.initial.clone())?),
        };
        for committed in after {
            let change = Change::deserialize(&committed.change).map_err(|error| error.to_string())?;
            self.step(journaling, &mut log, change, committed.n)?;
        }
        Ok(log)
    }

    /// Applies the `n`th committed change to `log`; whether it is one its caught-up users are sent (an event, or a
    /// rotation's snapshot: the last of the history).
    fn step(
        &self,
        journaling: &Journaling<Log<S>, S>,
        log: &mut Log<S>,
        change: Change,
        n: u64,
    ) -> Result<bool, String> {
        let mut tell = false;
        if let Some(state) = change.rotate {
            log.state = (journaling.codec.decode)(state)?;
            tell = true;
        }
        if let Some(event) = change.snapshot {
            let size = json_len(&event);
            let snapshot = Recorded {
                entry: Entry {
                    dispatcher: SNAPSHOT_DISPATCHER.to_owned(),
                    event,
                },
                text: None,
                n,
            };
            log.restart(snapshot, size);
        }
        if let (Some(dispatcher), Some(text)) = (change.dispatcher, change.event) {
            let recorded = recorded(dispatcher, text, n)?;
            let event = &recorded.entry.event;
            let kind = event.get("type").and_then(Value::as_str).unwrap_or_default();
            // The owner applied it to the same state: the fold every client makes.
            if let Err(error) =
                self.handlers
                    .apply(&mut log.state, &recorded.entry.dispatcher, kind, event.get("payload"))
            {
                tracing::error!(domain = self.domain, n, %error, "a committed event did not apply to the replica: its state may differ from the owner's");
            }
            log.bytes += json_len(event);
            log.history.push(recorded);
            tell = true;
        }
        log.applied = n;
        Ok(tell)
    }

    /// Runs a request on the owner's `log`; the change to commit, if any.
    fn execute_on(
        &self,
        journaling: &Journaling<Log<S>, S>,
        log: &mut Log<S>,
        user: &str,
        text: &str,
    ) -> Option<Change> {
        let (message, raw) = read_request(text)?;
        let server_side = user == SNAPSHOT_DISPATCHER;
        if server_side && message.kind == COMPACT {
            self.compact(log).ok()?;
            log.compacted = true;
            let snapshot = Some(log.history.first()?.entry.event.clone());
            return Some(Change {
                snapshot,
                ..Change::default()
            });
        }
        if server_side && message.kind == ROTATE {
            let state = message.payload?.get("state")?.clone();
            let rotated = (journaling.codec.decode)(state.clone()).ok()?;
            let (snapshot, size) = self.snapshot(&rotated).ok()?;
            if size > self.max_bytes {
                return None;
            }
            log.state = rotated;
            let event = snapshot.entry.event.clone();
            log.restart(snapshot, size);
            log.compacted = true;
            return Some(Change {
                rotate: Some(state),
                snapshot: Some(event),
                ..Change::default()
            });
        }
        let wire::Incoming::Ours(event) = wire::stream_append(&message, &self.domain) else {
            return None;
        };
        // The event's text as its dispatcher sent it: echoed by every node exactly so.
        let text = raw
            .as_deref()
            .and_then(wire::event_text)
            .map_or_else(|| event.whole.to_string(), |text| text.get().to_owned());
        let size = json_len(event.whole);
        let compacted = self.make_room(log, size);
        let outcome = compacted
            .clone()
            .and_then(|_| self.handlers.apply(&mut log.state, user, event.kind, event.payload));
        self.log_outcome(&outcome, user, event.kind);
        let snapshot = match compacted {
            Ok(true) => {
                log.compacted = true;
                log.history.first().map(|snapshot| snapshot.entry.event.clone())
            }
            _ => None,
        };
        if outcome.is_err() {
            // A refused event is sent to no one; a compaction made for it stands.
            return snapshot.map(|snapshot| Change {
                snapshot: Some(snapshot),
                ..Change::default()
            });
        }
        let recorded = recorded(user.to_owned(), text.clone(), 0).ok()?;
        log.bytes += size;
        log.history.push(recorded);
        Some(Change {
            snapshot,
            dispatcher: Some(user.to_owned()),
            event: Some(text),
            ..Change::default()
        })
    }
}

/// An event of a history from its dispatcher and text.
fn recorded(dispatcher: String, text: String, n: u64) -> Result<Recorded, String> {
    let event: Value = serde_json::from_str(&text).map_err(|error| error.to_string())?;
    let text = RawValue::from_string(text).map_err(|error| error.to_string())?;
    Ok(Recorded {
        entry: Entry { dispatcher, event },
        text: Some(text),
        n,
    })
}

impl<S: Send + 'static> Model for StreamInner<S> {
    const KIND: &'static str = "stream";

    fn domain(&self) -> &str {
        &self.domain
    }
}

impl<S: Send + 'static> Replica for StreamInner<S> {
    fn wants(&self, username: &str, message: &Message) -> bool {
        let incoming = wire::stream_append(message, &self.domain);
        incoming
            .ours(wire::STREAM_APPEND, Some(&self.domain), username, &self.counters)
            .is_some()
    }

    fn owner_hears(&self, _change: MembershipChange) -> bool {
        false
    }

    fn link_here(&self, server: &Server, username: &str) {
        Listeners::link(self, server, username);
    }

    fn unlink_here(&self, username: &str) {
        let _ = self.log.with_mut(|log| log.audience.remove(username));
    }
}

impl<S: Send + 'static> JournalModel for StreamInner<S> {
    fn own(&self, checkpoint: Option<&Checkpoint>, after: &[Committed]) -> Result<(), String> {
        let journaling = self.journaling.as_ref().ok_or("not journaled")?;
        let log = self.restored(journaling, checkpoint, after)?;
        *journaling.attached.owner.lock() = Some(log);
        Ok(())
    }

    fn execute(&self, request: &Request) -> Option<Value> {
        let journaling = self.journaling.as_ref()?;
        let Request::Message { user, text } = request else {
            return None;
        };
        let mut owner = journaling.attached.owner.lock();
        if owner.is_none() {
            *owner = self.restored(journaling, None, &[]).ok();
        }
        let change = self.execute_on(journaling, owner.as_mut()?, user, text)?;
        serde_json::to_value(change).ok()
    }

    fn checkpoint(&self) -> Option<Value> {
        let journaling = self.journaling.as_ref()?;
        let mut owner = journaling.attached.owner.lock();
        let log = owner.as_mut().filter(|log| log.compacted)?;
        let state = (journaling.codec.encode)(&log.state).ok()?;
        let history = log
            .history
            .iter()
            .map(|recorded| {
                let text = recorded
                    .text
                    .as_ref()
                    .map_or_else(|| recorded.entry.event.to_string(), |text| text.get().to_owned());
                (recorded.entry.dispatcher.clone(), text)
            })
            .collect();
        log.compacted = false;
        serde_json::to_value(Saved { state, history }).ok()
    }

    fn disown(&self) {
        if let Some(journaling) = &self.journaling {
            *journaling.attached.owner.lock() = None;
        }
    }

    fn load(&self, checkpoint: Option<&Checkpoint>, after: &[Committed]) -> Result<(), String> {
        let journaling = self.journaling.as_ref().ok_or("not journaled")?;
        let restored = self.restored(journaling, checkpoint, after)?;
        let server = journaling.attached.server.upgrade();
        self.log
            .with_mut(|log| {
                let had = log.applied;
                let audience = std::mem::take(&mut log.audience);
                *log = restored;
                let Some(server) = server else { return };
                // Who was caught up gets what it has not had; who is linked here without a catch-up, the history.
                for username in audience {
                    if self.send_history(&server, log, &username, had) {
                        log.audience.insert(username);
                    }
                }
                for username in linked_here(&server) {
                    if !log.audience.contains(&username) && self.send_history(&server, log, &username, 0) {
                        log.audience.insert(username);
                    }
                }
            })
            .map_err(|error| error.to_string())
    }

    fn apply(&self, committed: &Committed) {
        let Some(journaling) = &self.journaling else { return };
        let change = match Change::deserialize(&committed.change) {
            Ok(change) => change,
            Err(error) => {
                return tracing::error!(domain = self.domain, n = committed.n, %error, "a committed change of another form was skipped")
            }
        };
        let Some(server) = journaling.attached.server.upgrade() else {
            return;
        };
        let _ = self
            .log
            .with_mut(|log| match self.step(journaling, log, change, committed.n) {
                Ok(true) => {
                    let Log { history, audience, .. } = log;
                    if let Some(last) = history.last() {
                        let append = StreamAppendOut {
                            domain: &self.domain,
                            dispatcher: &last.entry.dispatcher,
                            event: last.echo(),
                        };
                        self.send_to(&server, audience, &append);
                    }
                }
                Ok(false) => {}
                Err(reason) => tracing::error!(
                    domain = self.domain,
                    n = committed.n,
                    reason,
                    "a committed change does not fit: skipped"
                ),
            });
    }
}

impl<S: Send + 'static> Listeners for StreamInner<S> {
    fn link(&self, server: &Server, username: &str) {
        let _ = self.log.with_mut(|log| {
            if self.send_history(server, log, username, 0) {
                log.audience.insert(username.to_owned());
            }
        });
    }

    fn unlink(&self, _server: &Server, username: &str) {
        let _ = self.log.with_mut(|log| log.audience.remove(username));
    }

    fn message(&self, server: &Server, username: &str, message: &Message) -> bool {
        let incoming = wire::stream_append(message, &self.domain);
        let Some(event) = incoming.ours(wire::STREAM_APPEND, Some(&self.domain), username, &self.counters) else {
            return false;
        };
        match self.append(server, username, event.whole, event.text, event.kind, event.payload) {
            Ok(()) | Err(Error::Panicked { .. } | Error::Full) => {} // logged by append
            Err(error @ (Error::Unknown { .. } | Error::Invalid { .. })) => {
                tracing::warn!(domain = self.domain, username, %error, "an event was dropped");
            }
            Err(error) => tracing::debug!(domain = self.domain, username, %error, "an event was dropped"),
        }
        true
    }

    fn caught_up(&self, username: &str) -> bool {
        self.log.with(|log| log.audience.contains(username)).unwrap_or(false)
    }
}

/// A stream served on a server: append from the server side, and read its state. Cheap to clone; clones share it.
///
/// ```
/// use emitter_core::{Message, Server};
/// use emitter_state::StreamModel;
///
/// let server = Server::new();
/// let chat = StreamModel::new(Vec::<String>::new())
///     .when("say", |lines: &mut Vec<String>, dispatcher: &str, text: String| {
///         lines.push(format!("{dispatcher}: {text}"));
///     })
///     .register(&server, "chat");
///
/// chat.append(&server, "host", &Message::with_payload("say", "welcome")).unwrap();
/// assert_eq!(chat.with_state(|lines| lines.clone()).unwrap(), ["host: welcome"]);
/// assert!(chat.append(&server, "host", &Message::with_payload("say", 42)).is_err()); // not a String
/// ```
pub struct Stream<S> {
    model: Arc<StreamInner<S>>,
    registration: Arc<Registration>,
}

impl<S> Clone for Stream<S> {
    fn clone(&self) -> Self {
        Stream {
            model: self.model.clone(),
            registration: self.registration.clone(),
        }
    }
}

impl<S> fmt::Debug for Stream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("domain", &self.model.domain)
            .finish_non_exhaustive()
    }
}

impl<S: Send + 'static> Stream<S> {
    /// The domain it is served as.
    pub fn domain(&self) -> &str {
        &self.model.domain
    }

    /// Appends `event` on behalf of `dispatcher` (any name: a user, or the server itself), exactly as if that user had
    /// sent it: the handler runs, and if it applies, the event joins the history and goes to every caught-up linked
    /// user. On a journaled stream ([`register_journaled`](StreamModel::register_journaled)) the event is queued for
    /// the owner: `Ok` means queued ([`Error::Journal`] when the journal refuses it).
    pub fn append(&self, server: &Server, dispatcher: &str, event: &Message) -> Result<(), Error> {
        let whole = serde_json::to_value(event).map_err(|error| Error::Invalid {
            kind: event.kind.clone(),
            reason: error.to_string(),
        })?;
        if let Some(journaling) = &self.model.journaling {
            let text = server_request(
                wire::STREAM_APPEND,
                json!({ "domain": self.model.domain, "event": whole }),
            );
            return journaling.attached.submit(&self.model.domain, dispatcher, text);
        }
        self.model
            .append(server, dispatcher, &whole, None, &event.kind, event.payload.as_ref())
    }

    /// Runs `f` on the state, with the stream held: nothing is appended meanwhile. Fails with [`Error::Busy`] when
    /// called from inside one of this stream's handlers.
    pub fn with_state<R>(&self, f: impl FnOnce(&S) -> R) -> Result<R, Error> {
        self.model.log.with(|log| f(&log.state))
    }

    /// The history, oldest first.
    pub fn history(&self) -> Vec<Entry> {
        self.model
            .log
            .with(|log| log.history.iter().map(|recorded| recorded.entry.clone()).collect())
            .unwrap_or_default()
    }

    /// Folds the history into one snapshot event of the state now (see [`StreamModel::compaction`]), whatever the
    /// [`at_limit`](StreamModel::at_limit) policy: at the end of a round, say, so that a user who links later is
    /// sent one event instead of the round's. Linked users are sent nothing (they hold that state already).
    ///
    /// Fails, leaving the history as it was, with [`Error::NoSnapshot`] for a model without compaction; with
    /// [`Error::Panicked`] or [`Error::Projection`] when the snapshot panics or is not JSON; with [`Error::Full`] when
    /// the snapshot alone is larger than [`max_history_bytes`](StreamModel::max_history_bytes); with [`Error::Busy`]
    /// from inside one of the stream's handlers. On a journaled stream the compaction is queued for the owner (`Ok`
    /// means queued; a failure there leaves the history as it was, logged).
    pub fn compact(&self) -> Result<(), Error> {
        if let Some(journaling) = &self.model.journaling {
            self.model.compaction.as_ref().ok_or(Error::NoSnapshot)?;
            let text = server_request(COMPACT, Value::Null);
            return journaling
                .attached
                .submit(&self.model.domain, SNAPSHOT_DISPATCHER, text);
        }
        self.model
            .log
            .with_mut(|log| self.model.compact(log))
            .and_then(|outcome| outcome)
    }

    /// Starts the stream over from `state` (a new round, a new game): the history is replaced by the snapshot event
    /// of `state` (see [`StreamModel::compaction`]), and that event is sent to every linked user, so that a client
    /// that handles the snapshot type replaces its state with it; a user who links later gets the same one event.
    /// Optimistic events a client has not had confirmed yet stay on top of the new state until they are, or expire.
    ///
    /// Fails, leaving the stream as it was, with [`Error::NoSnapshot`] for a model without compaction; with
    /// [`Error::Panicked`] or [`Error::Projection`] when the snapshot panics or is not JSON; with [`Error::Full`] when
    /// the snapshot is larger than [`max_history_bytes`](StreamModel::max_history_bytes); with [`Error::Busy`] from
    /// inside one of the stream's handlers. On a journaled stream the rotation is queued for the owner, the state as
    /// JSON (`Ok` means queued).
    ///
    /// ```
    /// use emitter_core::{Message, Server};
    /// use emitter_state::{StreamModel, SNAPSHOT_DISPATCHER};
    ///
    /// let server = Server::new();
    /// let board = StreamModel::new(Vec::<u8>::new())
    ///     .when("mark", |cells: &mut Vec<u8>, _: &str, cell: u8| cells.push(cell))
    ///     .compaction("board", |cells: &Vec<u8>| cells.clone())
    ///     .register(&server, "board");
    /// board.append(&server, "alice", &Message::with_payload("mark", 4))?;
    /// board.rotate(&server, Vec::new())?;
    /// let history = board.history();
    /// assert_eq!(history.len(), 1);
    /// assert_eq!(history[0].dispatcher, SNAPSHOT_DISPATCHER);
    /// assert_eq!(history[0].event, serde_json::json!({ "type": "board", "payload": [] }));
    /// # Ok::<(), emitter_state::Error>(())
    /// ```
    pub fn rotate(&self, server: &Server, state: S) -> Result<(), Error> {
        let model = &self.model;
        if let Some(journaling) = &model.journaling {
            model.compaction.as_ref().ok_or(Error::NoSnapshot)?;
            let state = (journaling.codec.encode)(&state).map_err(|reason| Error::Projection { reason })?;
            let text = server_request(ROTATE, json!({ "state": state }));
            return journaling.attached.submit(&model.domain, SNAPSHOT_DISPATCHER, text);
        }
        model
            .log
            .with_mut(|log| {
                let (recorded, size) = model.snapshot(&state)?;
                if size > model.max_bytes {
                    return Err(Error::Full);
                }
                log.state = state;
                log.restart(recorded, size);
                let snapshot = &log.history[0];
                let append = StreamAppendOut {
                    domain: &model.domain,
                    dispatcher: SNAPSHOT_DISPATCHER,
                    event: Echo::Value(&snapshot.entry.event),
                };
                model.send_to(server, &mut log.audience, &append);
                tracing::debug!(domain = model.domain, bytes = size, "rotated the stream");
                Ok(())
            })
            .and_then(|outcome| outcome)
    }

    /// How many events the history holds (a snapshot event included).
    pub fn len(&self) -> usize {
        self.model.log.with(|log| log.history.len()).unwrap_or_default()
    }

    /// Whether the history is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the stream applied and turned away so far.
    pub fn stats(&self) -> StateStats {
        self.model.counters.snapshot()
    }

    /// Stops serving the stream on the server: no listener of its runs again. Its state stays readable here.
    pub fn unregister(&self) {
        self.registration.unregister();
    }
}
