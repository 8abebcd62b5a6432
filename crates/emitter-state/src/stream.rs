//! The Stream model: a state derived from a log of events, which every client folds itself.
//!
//! A client appends an event (`{type, payload?}`) with `stream/append`. The server reads the payload into the Rust
//! type of the event's handler and runs the handler on its own copy of the state; if it applies, the event is added to
//! the history and sent to every caught-up linked user, the sender included, with the sender's username as the
//! dispatcher. A user who links gets the whole history, one `stream/append` per event, after its snapshot. Clients run
//! the same handlers (in TypeScript) on the events in the order received, so every client's state equals the server's.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use emitter_core::{Message, Server};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::delta::json_len;
use crate::domain::Domain;
use crate::handlers::{Handlers, Outcome};
use crate::registration::{Listeners, Registration};
use crate::stats::Counters;
use crate::wire::{self, Echo, StreamAppendOut};
use crate::{Error, StateStats};

/// How many events a stream's history holds by default: see [`StreamModel::max_events`]. Well below the server's
/// default `outbound_queue` (4,096), which a linking user's catch-up, one message per event, must fit in.
pub const DEFAULT_MAX_EVENTS: usize = 1_000;
/// How many bytes of events (serialized) a stream's history holds by default: see [`StreamModel::max_history_bytes`].
pub const DEFAULT_MAX_HISTORY_BYTES: usize = 16 << 20;

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
}

impl<S> fmt::Debug for StreamModel<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamModel")
            .field("max_events", &self.max_events)
            .field("max_history_bytes", &self.max_bytes)
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
    /// If `kind` has a handler already.
    pub fn when<T, O, F>(mut self, kind: &str, handler: F) -> Self
    where
        T: DeserializeOwned,
        O: Outcome,
        F: Fn(&mut S, &str, T) -> O + Send + Sync + 'static,
    {
        self.handlers.add(kind, handler);
        self
    }

    /// How many events the history may hold (default [`DEFAULT_MAX_EVENTS`]).
    ///
    /// The history is what a linking user is sent to rebuild the state, and the protocol has no message for a
    /// snapshot that could stand in for the events before it: a client that missed the first events would fold a
    /// different state. So a full history is never cut short; once it is full, new events are refused (logged at
    /// warn and counted in [`StateStats::full`]; a client's optimistic copy of a refused event expires after its
    /// `optimisticSeconds`). The reference's history grows without end. Size the bound for the longest session you
    /// expect, or model the state as a [`ProjectionModel`](crate::ProjectionModel), whose catch-up is one message.
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
    pub fn register(self, server: &Server, domain: impl Into<String>) -> Stream<S> {
        let domain = domain.into();
        let queue = server.config().outbound_queue();
        if self.max_events >= queue {
            tracing::warn!(
                domain,
                max_events = self.max_events,
                outbound_queue = queue,
                "a full history does not fit a linking user's queue, whose connection would then be closed"
            );
        }
        let model = Arc::new(StreamInner {
            domain,
            handlers: self.handlers,
            max_events: self.max_events,
            max_bytes: self.max_bytes,
            log: Domain::new(Log {
                state: self.initial,
                history: Vec::new(),
                bytes: 0,
                audience: HashSet::new(),
            }),
            counters: Counters::default(),
        });
        // Its clients' events are echoed as sent, members in the order sent (see `wire::stream_append`).
        server.keep_raw_payload(wire::STREAM_APPEND);
        let registration = Arc::new(Registration::new(server, model.clone()));
        Stream { model, registration }
    }
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
}

struct StreamInner<S> {
    domain: String,
    handlers: Handlers<S>,
    max_events: usize,
    max_bytes: usize,
    log: Domain<Log<S>>,
    counters: Counters,
}

impl<S: Send + 'static> StreamInner<S> {
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
                if log.history.len() >= self.max_events || log.bytes + size > self.max_bytes {
                    return Err(Error::Full);
                }
                self.handlers.apply(&mut log.state, dispatcher, kind, payload)?;
                log.history.push(Recorded {
                    entry: Entry {
                        dispatcher: dispatcher.to_owned(),
                        event: event.clone(),
                    },
                    text: text.map(RawValue::to_owned),
                });
                log.bytes += size;
                let append = StreamAppendOut {
                    domain: &self.domain,
                    dispatcher,
                    event: text.map_or(Echo::Value(event), Echo::Text),
                };
                // One send per caught-up user rather than a broadcast: a broadcast would also reach a user who linked a
                // moment ago and whose catch-up, still to come, holds this event too.
                log.audience.retain(|username| {
                    let sent = server.send_payload(username, wire::STREAM_APPEND, &append);
                    if let Err(error) = &sent {
                        tracing::debug!(domain = self.domain, username, %error, "could not send an event");
                    }
                    sent.is_ok()
                });
                Ok(())
            })
            .and_then(|outcome| outcome);
        self.counters.outcome(&outcome);
        match &outcome {
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
                "an event was refused: the history is full"
            ),
            _ => {}
        }
        outcome
    }
}

impl<S: Send + 'static> Listeners for StreamInner<S> {
    fn link(&self, server: &Server, username: &str) {
        let _ = self.log.with_mut(|log| {
            for recorded in &log.history {
                let append = StreamAppendOut {
                    domain: &self.domain,
                    dispatcher: &recorded.entry.dispatcher,
                    event: recorded.echo(),
                };
                if let Err(error) = server.send_payload(username, wire::STREAM_APPEND, &append) {
                    // The connection is gone or going: its next link starts over.
                    tracing::debug!(domain = self.domain, username, %error, "could not send the history");
                    return;
                }
            }
            log.audience.insert(username.to_owned());
        });
    }

    fn unlink(&self, _server: &Server, username: &str) {
        let _ = self.log.with_mut(|log| log.audience.remove(username));
    }

    fn message(&self, server: &Server, username: &str, message: &Message) {
        let incoming = wire::stream_append(message, &self.domain);
        let Some(event) = incoming.ours(wire::STREAM_APPEND, Some(&self.domain), username, &self.counters) else {
            return;
        };
        match self.append(server, username, event.whole, event.text, event.kind, event.payload) {
            Ok(()) | Err(Error::Panicked { .. } | Error::Full) => {} // logged by append
            Err(error @ (Error::Unknown { .. } | Error::Invalid { .. })) => {
                tracing::warn!(domain = self.domain, username, %error, "an event was dropped");
            }
            Err(error) => tracing::debug!(domain = self.domain, username, %error, "an event was dropped"),
        }
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
    /// user.
    pub fn append(&self, server: &Server, dispatcher: &str, event: &Message) -> Result<(), Error> {
        let whole = serde_json::to_value(event).map_err(|error| Error::Invalid {
            kind: event.kind.clone(),
            reason: error.to_string(),
        })?;
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

    /// How many events the history holds.
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
