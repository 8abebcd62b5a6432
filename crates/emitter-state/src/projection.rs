//! The Projection model: a state only the server holds, and a view of it per user.
//!
//! A client asks for an action with `projection/action`. The server reads the payload into the Rust type of the
//! action's handler and runs the handler on the state; then, for every caught-up linked user, it maps the state to
//! that user's projection and sends the change since the projection it last sent that user, as a
//! `projection/delta` in jsondiffpatch's format ([`delta`](crate::delta)). A user who links gets its whole projection
//! in a `projection/set`. A client may apply an action to its own projection at once (optimistically) and send it with
//! an `optimisticId`: the delta that confirms it carries that id back, and if none will, the dispatcher gets
//! `projection/invalidate` with it instead.
//!
//! Hidden information stays hidden: what a user gets is only ever its own projection, so a mapper that leaves the
//! other players' cards out of a user's projection never sends them to that user.

use std::collections::HashMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use emitter_core::{Message, Server};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::delta;
use crate::domain::Domain;
use crate::handlers::{Handlers, Outcome};
use crate::journal::{Checkpoint, Committed, Journal, JournalError, JournalModel, MembershipChange, Request};
use crate::journaled::{linked_here, read_request, server_request, Journaling};
use crate::registration::{Listeners, Model, Registration, Replica};
use crate::stats::Counters;
use crate::wire::{self, ProjectionDeltaOut, ProjectionInvalidateOut, ProjectionSetOut};
use crate::{Error, StateStats};

type Mapper<S> = Box<dyn Fn(&S, &str) -> Result<Value, serde_json::Error> + Send + Sync>;
type LeaveHandler<S> = Box<dyn Fn(&mut S, &str) + Send + Sync>;

/// The definition of a projection: its initial state, the mapper from the state to one user's projection, and a
/// handler per action type.
///
/// ```
/// use emitter_core::Server;
/// use emitter_state::ProjectionModel;
/// use serde_json::json;
///
/// #[derive(Default)]
/// struct Lots { values: Vec<(String, u32)> }
///
/// let server = Server::new();
/// let lots = ProjectionModel::new(Lots::default(), |lots: &Lots, username: &str| {
///     // Everyone sees how many lots there are; only their own lots' values.
///     let mine: Vec<u32> = lots.values.iter().filter(|(owner, _)| owner == username).map(|(_, v)| *v).collect();
///     json!({ "count": lots.values.len(), "mine": mine })
/// })
/// .when("draw", |lots: &mut Lots, dispatcher: &str, value: u32| {
///     if value > 10 {
///         return Err("a lot is worth 10 at most");
///     }
///     lots.values.push((dispatcher.to_owned(), value));
///     Ok(())
/// })
/// .register(&server, "lots");
///
/// lots.dispatch(&server, "simon", &emitter_core::Message::with_payload("draw", 7), None).unwrap();
/// assert_eq!(lots.projection_of("simon").unwrap(), json!({ "count": 1, "mine": [7] }));
/// assert_eq!(lots.projection_of("lisa").unwrap(), json!({ "count": 1, "mine": [] }));
/// ```
pub struct ProjectionModel<S> {
    initial: S,
    mapper: Mapper<S>,
    handlers: Handlers<S>,
    on_leave: Option<LeaveHandler<S>>,
}

impl<S> fmt::Debug for ProjectionModel<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectionModel").finish_non_exhaustive()
    }
}

impl<S: Send + 'static> ProjectionModel<S> {
    /// A projection that starts at `initial` and shows user `username` the JSON form of `mapper(state, username)`.
    ///
    /// The mapper runs for every caught-up linked user after every action, so keep it quick; it should depend on
    /// nothing but its arguments. What it returns must serialize to JSON (`serde_json::to_value`); a user whose
    /// projection does not (or whose mapper panics) is left at the projection it was sent last, and the failure is
    /// logged at error.
    pub fn new<P, M>(initial: S, mapper: M) -> Self
    where
        P: Serialize,
        M: Fn(&S, &str) -> P + Send + Sync + 'static,
    {
        ProjectionModel {
            initial,
            mapper: Box::new(move |state, username| serde_json::to_value(mapper(state, username))),
            handlers: Handlers::default(),
            on_leave: None,
        }
    }

    /// Handles actions of type `kind`, whose payload is read into a `T` first (a missing payload reads as JSON
    /// `null`, so `()` and `Option<_>` take actions without one). The handler gets the state, the dispatcher's
    /// username and the payload, and returns `()` or a `Result` (see [`Outcome`]).
    ///
    /// A handler that refuses with `Err` must leave the state unchanged: no delta is computed after a refusal, only
    /// the dispatcher's optimistic action is invalidated. After a handler that panics, deltas are computed as after
    /// one that applied (without confirming the optimistic id, which is invalidated), so every client follows the
    /// state wherever the panic left it.
    ///
    /// ```
    /// use emitter_state::ProjectionModel;
    /// use serde::Deserialize;
    ///
    /// #[derive(Deserialize)]
    /// struct Bid { amount: u32 }
    ///
    /// // The highest bid, and who made it; everyone sees only the amount.
    /// let auction = ProjectionModel::new((0u32, String::new()), |(amount, _): &(u32, String), _: &str| *amount)
    ///     .when("bid", |(amount, bidder): &mut (u32, String), who: &str, Bid { amount: bid }| {
    ///         if bid <= *amount {
    ///             return Err(format!("bid more than {amount}")); // nothing changed yet
    ///         }
    ///         (*amount, *bidder) = (bid, who.to_owned());
    ///         Ok(())
    ///     })
    ///     .when("pass", |_: &mut (u32, String), _: &str, (): ()| {}); // no payload, never refuses
    /// # drop(auction);
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

    /// Changes the state with `handler` when a user leaves the server (a seat is freed), and sends every caught-up
    /// linked user its delta. It runs once per leave: on one process, in the leave's listeners; with a journal (a
    /// cluster), on the owner of the domain only, as a committed change, whichever node the leave was made on. A
    /// panicking handler is caught and logged; the deltas are still sent.
    ///
    /// ```
    /// use emitter_core::Server;
    /// use emitter_state::ProjectionModel;
    ///
    /// let server = Server::new();
    /// let seats = ProjectionModel::new(Vec::<String>::new(), |seats: &Vec<String>, _: &str| seats.clone())
    ///     .when("sit", |seats: &mut Vec<String>, who: &str, (): ()| seats.push(who.to_owned()))
    ///     .on_leave(|seats: &mut Vec<String>, who: &str| seats.retain(|seated| seated != who))
    ///     .register(&server, "seats");
    /// # drop(seats);
    /// ```
    pub fn on_leave(mut self, handler: impl Fn(&mut S, &str) + Send + Sync + 'static) -> Self {
        self.on_leave = Some(Box::new(handler));
        self
    }

    /// Starts serving the projection on `server` as `domain`: its listeners are registered, and users linked already
    /// get their projection.
    pub fn register(self, server: &Server, domain: impl Into<String>) -> Projection<S> {
        let model = Arc::new(self.inner(domain.into(), None));
        let registration = Arc::new(Registration::new(server, model.clone()));
        Projection { model, registration }
    }
}

impl<S: Send + 'static> ProjectionModel<S> {
    fn inner(self, domain: String, journaling: Option<Journaling<S, S>>) -> ProjectionInner<S> {
        ProjectionInner {
            domain,
            handlers: self.handlers,
            mapper: self.mapper,
            on_leave: self.on_leave,
            view: Domain::new(View {
                state: self.initial,
                sent: HashMap::new(),
            }),
            counters: Counters::default(),
            journaling,
        }
    }
}

impl<S: Serialize + DeserializeOwned + Send + 'static> ProjectionModel<S> {
    /// Starts serving the projection on `server` as `domain` through `journal` (see [`journal`](crate::journal)): on
    /// a cluster, each node registers it with its node's journal, and the domain's owner runs the handlers and the
    /// [`on_leave`](ProjectionModel::on_leave) handler, once per cluster; every node keeps a replica of the state,
    /// made from the committed states (so a handler may deal at random), and sends its own users their
    /// `projection/set`, deltas and invalidates. The state crosses the journal as JSON, with serde.
    ///
    /// On the returned [`Projection`], [`dispatch`](Projection::dispatch) queues the action for the owner, and
    /// [`update`](Projection::update) fails with [`Error::Journaled`].
    ///
    /// An action is its user's: one committed after its user linked again (on any node) is answered on the new
    /// connection, after its `projection/set`, which a client takes as an id it does not know.
    ///
    /// Fails when the journal does not take the domain (attached already, say): nothing stays registered then.
    pub fn register_journaled(
        self,
        server: &Server,
        domain: impl Into<String>,
        journal: Arc<dyn Journal>,
    ) -> Result<Projection<S>, JournalError> {
        let journaling = Journaling::new(journal.clone(), server, &self.initial)?;
        let model = Arc::new(self.inner(domain.into(), Some(journaling)));
        let registration = Registration::journaled(server, model.clone(), journal)?;
        Ok(Projection {
            model,
            registration: Arc::new(registration),
        })
    }
}

/// One committed change of a projection: the state after it (none for a refused action), and the dispatcher's
/// optimistic id, for the messages about it.
#[derive(Serialize, Deserialize)]
struct Change {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dispatcher: Option<String>,
    #[serde(rename = "optimisticId", default, skip_serializing_if = "Option::is_none")]
    optimistic_id: Option<String>,
    /// Whether the handler applied (a panicking one changed the state, maybe, but confirms nothing).
    #[serde(default)]
    applied: bool,
}

struct View<S> {
    state: S,
    /// The caught-up linked users, each with the projection it was sent last: its next delta is computed against
    /// exactly that, so it always applies, whatever happened in between.
    sent: HashMap<String, Value>,
}

/// Who caused a change, for the messages about their optimistic action.
#[derive(Clone, Copy)]
struct Origin<'a> {
    dispatcher: &'a str,
    optimistic_id: Option<&'a str>,
    applied: bool,
}

struct ProjectionInner<S> {
    domain: String,
    handlers: Handlers<S>,
    mapper: Mapper<S>,
    on_leave: Option<LeaveHandler<S>>,
    /// The replica, with a journal: the state as committed, and the users linked on this node.
    view: Domain<View<S>>,
    counters: Counters,
    journaling: Option<Journaling<S, S>>,
}

impl<S: Send + 'static> ProjectionInner<S> {
    fn project(&self, state: &S, username: &str) -> Result<Value, Error> {
        match catch_unwind(AssertUnwindSafe(|| (self.mapper)(state, username))) {
            Ok(Ok(projection)) => Ok(projection),
            Ok(Err(error)) => Err(Error::Projection {
                reason: error.to_string(),
            }),
            Err(_) => {
                self.counters.panicked();
                Err(Error::Panicked { kind: "mapper".into() })
            }
        }
    }

    /// Sends every caught-up user the change of its projection, and the dispatcher (if any) what becomes of its
    /// optimistic action: the delta that confirms it, or an invalidate. Users whose connection is gone are dropped;
    /// they get a `projection/set` when they link again.
    fn publish(&self, server: &Server, view: &mut View<S>, origin: Option<Origin<'_>>) {
        let View { state, sent } = view;
        sent.retain(|username, last| {
            let own = origin.filter(|origin| origin.dispatcher == username.as_str());
            let mut unconfirmed = own.and_then(|origin| origin.optimistic_id);
            let next = match self.project(state, username) {
                Ok(next) => Some(next),
                Err(error) => {
                    tracing::error!(domain = self.domain, username, %error, "could not map the state to a projection");
                    None
                }
            };
            if let Some(change) = next.as_ref().and_then(|next| delta::diff(last, next)) {
                let optimistic_id = unconfirmed.filter(|_| own.is_some_and(|origin| origin.applied));
                let out = ProjectionDeltaOut {
                    domain: &self.domain,
                    delta: &change,
                    optimistic_id,
                };
                if !self.send(server, username, wire::PROJECTION_DELTA, &out) {
                    return false;
                }
                if optimistic_id.is_some() {
                    unconfirmed = None;
                }
                if let Some(next) = next {
                    *last = next;
                }
            }
            match unconfirmed {
                Some(optimistic_id) => self.send(
                    server,
                    username,
                    wire::PROJECTION_INVALIDATE,
                    &ProjectionInvalidateOut {
                        domain: &self.domain,
                        optimistic_id,
                    },
                ),
                None => true,
            }
        });
    }

    /// Sends `username` its whole projection, and from then on its deltas.
    fn catch_up(&self, server: &Server, view: &mut View<S>, username: &str) {
        let projection = match self.project(&view.state, username) {
            Ok(projection) => projection,
            Err(error) => {
                tracing::error!(domain = self.domain, username, %error, "could not map the state to a projection");
                return;
            }
        };
        let out = ProjectionSetOut {
            domain: &self.domain,
            projection: &projection,
        };
        if self.send(server, username, wire::PROJECTION_SET, &out) {
            view.sent.insert(username.to_owned(), projection);
        }
    }

    /// Runs the `on_leave` handler of `username`; a panic is caught, logged and counted.
    fn leave_on(&self, on_leave: &LeaveHandler<S>, state: &mut S, username: &str) {
        match catch_unwind(AssertUnwindSafe(|| on_leave(state, username))) {
            Ok(()) => self.counters.accepted(),
            Err(_) => {
                self.counters.panicked();
                tracing::error!(domain = self.domain, username, "the on_leave handler panicked");
            }
        }
    }

    /// Tells the dispatcher, if caught up, that its optimistic action will not be confirmed.
    fn invalidate(&self, server: &Server, view: &mut View<S>, dispatcher: &str, optimistic_id: &str) {
        if view.sent.contains_key(dispatcher) {
            let out = ProjectionInvalidateOut {
                domain: &self.domain,
                optimistic_id,
            };
            if !self.send(server, dispatcher, wire::PROJECTION_INVALIDATE, &out) {
                view.sent.remove(dispatcher);
            }
        }
    }

    fn send<T: Serialize>(&self, server: &Server, username: &str, kind: &str, payload: &T) -> bool {
        // With a journal every node serves its own users, from its replica.
        let sent = match self.journaling {
            Some(_) => server.send_payload_here(username, kind, payload),
            None => server.send_payload(username, kind, payload),
        };
        match sent {
            Ok(()) => true,
            Err(error) => {
                // The connection is gone or going; its next link starts over with a projection/set.
                tracing::debug!(domain = self.domain, username, kind, %error, "could not send");
                false
            }
        }
    }

    fn dispatch(
        &self,
        server: &Server,
        dispatcher: &str,
        kind: &str,
        payload: Option<&Value>,
        optimistic_id: Option<&str>,
    ) -> Result<(), Error> {
        let outcome = self
            .view
            .with_mut(|view| {
                let applied = self.handlers.apply(&mut view.state, dispatcher, kind, payload);
                match &applied {
                    Ok(()) | Err(Error::Panicked { .. }) => {
                        let origin = Origin {
                            dispatcher,
                            optimistic_id,
                            applied: applied.is_ok(),
                        };
                        self.publish(server, view, Some(origin));
                    }
                    Err(_) => {
                        if let Some(id) = optimistic_id {
                            self.invalidate(server, view, dispatcher, id);
                        }
                    }
                }
                applied
            })
            .and_then(|applied| applied);
        self.counters.outcome(&outcome);
        outcome
    }
}

impl<S: Send + 'static> Listeners for ProjectionInner<S> {
    fn link(&self, server: &Server, username: &str) {
        let _ = self.view.with_mut(|view| self.catch_up(server, view, username));
    }

    fn unlink(&self, _server: &Server, username: &str) {
        let _ = self.view.with_mut(|view| view.sent.remove(username));
    }

    fn leave(&self, server: &Server, username: &str) {
        let Some(on_leave) = &self.on_leave else {
            return self.unlink(server, username);
        };
        let _ = self.view.with_mut(|view| {
            view.sent.remove(username);
            self.leave_on(on_leave, &mut view.state, username);
            self.publish(server, view, None);
        });
    }

    fn message(&self, server: &Server, username: &str, message: &Message) -> bool {
        let incoming = wire::projection_action(message, &self.domain);
        let Some(action) = incoming.ours(wire::PROJECTION_ACTION, Some(&self.domain), username, &self.counters) else {
            return false;
        };
        let typed = action.action;
        match self.dispatch(server, username, typed.kind, typed.payload, action.optimistic_id) {
            Ok(()) => {}
            Err(error @ Error::Panicked { .. }) => {
                tracing::error!(domain = self.domain, username, %error, "an action handler panicked")
            }
            Err(error @ (Error::Unknown { .. } | Error::Invalid { .. })) => {
                tracing::warn!(domain = self.domain, username, %error, "an action was dropped")
            }
            Err(error) => tracing::debug!(domain = self.domain, username, %error, "an action was refused"),
        }
        true
    }

    fn caught_up(&self, username: &str) -> bool {
        self.view.with(|view| view.sent.contains_key(username)).unwrap_or(false)
    }
}

impl<S: Send + 'static> ProjectionInner<S> {
    /// The state after `checkpoint` and the changes `after` it, as JSON: the last one given.
    fn restored(
        &self,
        journaling: &Journaling<S, S>,
        checkpoint: Option<&Checkpoint>,
        after: &[Committed],
    ) -> Result<S, String> {
        let latest = after
            .iter()
            .rev()
            .find_map(|committed| committed.change.get("state"))
            .or(checkpoint.map(|checkpoint| &checkpoint.state))
            .unwrap_or(&journaling.initial);
        (journaling.codec.decode)(latest.clone())
    }

    /// Runs an action on the owner's `state`; the change to commit, if any.
    fn execute_action(&self, journaling: &Journaling<S, S>, state: &mut S, user: &str, text: &str) -> Option<Value> {
        let (message, _) = read_request(text)?;
        let wire::Incoming::Ours(action) = wire::projection_action(&message, &self.domain) else {
            return None;
        };
        let typed = action.action;
        let applied = self.handlers.apply(state, user, typed.kind, typed.payload);
        self.counters.outcome(&applied);
        let optimistic_id = action.optimistic_id.map(str::to_owned);
        let change = match applied {
            Ok(()) | Err(Error::Panicked { .. }) => Change {
                state: Some(self.encoded(journaling, state)?),
                dispatcher: Some(user.to_owned()),
                optimistic_id,
                applied: applied.is_ok(),
            },
            Err(error) => {
                tracing::debug!(domain = self.domain, username = user, %error, "an action was refused");
                // The dispatcher's optimistic action is invalidated, once: a change of its own, with no state.
                Change {
                    state: None,
                    dispatcher: Some(user.to_owned()),
                    optimistic_id: Some(optimistic_id?),
                    applied: false,
                }
            }
        };
        serde_json::to_value(change).ok()
    }

    fn encoded(&self, journaling: &Journaling<S, S>, state: &S) -> Option<Value> {
        match (journaling.codec.encode)(state) {
            Ok(value) => Some(value),
            Err(reason) => {
                tracing::error!(
                    domain = self.domain,
                    reason,
                    "the state is not JSON: the change is not committed"
                );
                None
            }
        }
    }
}

impl<S: Send + 'static> Model for ProjectionInner<S> {
    const KIND: &'static str = "projection";

    fn domain(&self) -> &str {
        &self.domain
    }
}

impl<S: Send + 'static> Replica for ProjectionInner<S> {
    fn wants(&self, username: &str, message: &Message) -> bool {
        let incoming = wire::projection_action(message, &self.domain);
        incoming
            .ours(wire::PROJECTION_ACTION, Some(&self.domain), username, &self.counters)
            .is_some()
    }

    fn owner_hears(&self, change: MembershipChange) -> bool {
        change == MembershipChange::Leave && self.on_leave.is_some()
    }

    fn link_here(&self, server: &Server, username: &str) {
        Listeners::link(self, server, username);
    }

    fn unlink_here(&self, username: &str) {
        let _ = self.view.with_mut(|view| view.sent.remove(username));
    }
}

impl<S: Send + 'static> JournalModel for ProjectionInner<S> {
    fn own(&self, checkpoint: Option<&Checkpoint>, after: &[Committed]) -> Result<(), String> {
        let journaling = self.journaling.as_ref().ok_or("not journaled")?;
        let state = self.restored(journaling, checkpoint, after)?;
        *journaling.attached.owner.lock() = Some(state);
        Ok(())
    }

    fn execute(&self, request: &Request) -> Option<Value> {
        let journaling = self.journaling.as_ref()?;
        let mut owner = journaling.attached.owner.lock();
        if owner.is_none() {
            *owner = (journaling.codec.decode)(journaling.initial.clone()).ok();
        }
        let state = owner.as_mut()?;
        match request {
            Request::Message { user, text } => self.execute_action(journaling, state, user, text),
            Request::Membership {
                change: MembershipChange::Leave,
                user,
                ..
            } => {
                let on_leave = self.on_leave.as_ref()?;
                self.leave_on(on_leave, state, user);
                let state = Some(self.encoded(journaling, state)?);
                serde_json::to_value(Change {
                    state,
                    dispatcher: None,
                    optimistic_id: None,
                    applied: true,
                })
                .ok()
            }
            Request::Membership { .. } => None,
        }
    }

    fn checkpoint(&self) -> Option<Value> {
        let journaling = self.journaling.as_ref()?;
        let owner = journaling.attached.owner.lock();
        self.encoded(journaling, owner.as_ref()?)
    }

    fn disown(&self) {
        if let Some(journaling) = &self.journaling {
            *journaling.attached.owner.lock() = None;
        }
    }

    fn load(&self, checkpoint: Option<&Checkpoint>, after: &[Committed]) -> Result<(), String> {
        let journaling = self.journaling.as_ref().ok_or("not journaled")?;
        let state = self.restored(journaling, checkpoint, after)?;
        let server = journaling.attached.server.upgrade();
        self.view
            .with_mut(|view| {
                view.state = state;
                let Some(server) = server else { return };
                // Who had a projection gets the change; who is linked here without one gets it whole.
                self.publish(&server, view, None);
                for username in linked_here(&server) {
                    if !view.sent.contains_key(&username) {
                        self.catch_up(&server, view, &username);
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
        let state = match change.state.map(journaling.codec.decode).transpose() {
            Ok(state) => state,
            Err(reason) => {
                return tracing::error!(
                    domain = self.domain,
                    n = committed.n,
                    reason,
                    "a committed state does not fit: skipped"
                )
            }
        };
        let Some(server) = journaling.attached.server.upgrade() else {
            return;
        };
        let _ = self.view.with_mut(|view| match state {
            Some(state) => {
                view.state = state;
                let origin = change.dispatcher.as_deref().map(|dispatcher| Origin {
                    dispatcher,
                    optimistic_id: change.optimistic_id.as_deref(),
                    applied: change.applied,
                });
                self.publish(&server, view, origin);
            }
            None => {
                if let (Some(dispatcher), Some(id)) = (&change.dispatcher, &change.optimistic_id) {
                    self.invalidate(&server, view, dispatcher, id);
                }
            }
        });
    }
}

/// A projection served on a server: dispatch actions and change the state from the server side, and read it. Cheap to
/// clone; clones share it.
///
/// ```
/// use emitter_core::Server;
/// use emitter_state::ProjectionModel;
///
/// let server = Server::new();
/// let scores = ProjectionModel::new(Vec::<u32>::new(), |scores: &Vec<u32>, _: &str| scores.iter().sum::<u32>())
///     .register(&server, "scores");
///
/// // A change of the server's own (a timer, a join): every caught-up user gets its delta.
/// scores.update(&server, |scores| scores.push(3)).unwrap();
/// assert_eq!(scores.projection_of("anyone").unwrap(), 3);
/// ```
pub struct Projection<S> {
    model: Arc<ProjectionInner<S>>,
    registration: Arc<Registration>,
}

impl<S> Clone for Projection<S> {
    fn clone(&self) -> Self {
        Projection {
            model: self.model.clone(),
            registration: self.registration.clone(),
        }
    }
}

impl<S> fmt::Debug for Projection<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Projection")
            .field("domain", &self.model.domain)
            .finish_non_exhaustive()
    }
}

impl<S: Send + 'static> Projection<S> {
    /// The domain it is served as.
    pub fn domain(&self) -> &str {
        &self.model.domain
    }

    /// Applies `action` (`{type, payload?}`) on behalf of `dispatcher`, exactly as if that user had sent it with
    /// `optimistic_id`: the handler runs, and every caught-up linked user gets its delta.
    ///
    /// On a journaled projection ([`register_journaled`](ProjectionModel::register_journaled)) the action is queued
    /// for the owner, as that user's: `Ok` means queued ([`Error::Journal`] when the journal refuses it), and what the
    /// handler makes of it reaches the users once committed.
    ///
    /// ```
    /// use emitter_core::{Message, Server};
    /// use emitter_state::{Error, ProjectionModel};
    ///
    /// let server = Server::new();
    /// let votes = ProjectionModel::new(0u32, |votes: &u32, _: &str| *votes)
    ///     .when("vote", |votes: &mut u32, _: &str, yes: bool| if yes { *votes += 1 })
    ///     .register(&server, "votes");
    /// votes.dispatch(&server, "ann", &Message::with_payload("vote", true), None).unwrap();
    /// assert!(matches!(
    ///     votes.dispatch(&server, "ann", &Message::with_payload("vote", "yes"), None),
    ///     Err(Error::Invalid { .. })
    /// ));
    /// assert_eq!(votes.with_state(|votes| *votes), Ok(1));
    /// ```
    pub fn dispatch(
        &self,
        server: &Server,
        dispatcher: &str,
        action: &Message,
        optimistic_id: Option<&str>,
    ) -> Result<(), Error> {
        if let Some(journaling) = &self.model.journaling {
            let mut payload = serde_json::Map::new();
            payload.insert("domain".to_owned(), json!(self.model.domain));
            payload.insert("action".to_owned(), json!(action));
            if let Some(id) = optimistic_id {
                payload.insert("optimisticId".to_owned(), json!(id));
            }
            let text = server_request(wire::PROJECTION_ACTION, Value::Object(payload));
            return journaling.attached.submit(&self.model.domain, dispatcher, text);
        }
        self.model
            .dispatch(server, dispatcher, &action.kind, action.payload.as_ref(), optimistic_id)
    }

    /// Changes the state with `f`, and sends every caught-up linked user its delta: for changes that come from the
    /// server rather than from an action (a user joined, a timer fired). If `f` panics, the deltas are still sent
    /// (the state may be half changed) and [`Error::Panicked`] is returned.
    ///
    /// On a journaled projection it fails with [`Error::Journaled`]: only the owner changes the state, and a closure
    /// cannot be sent to it. Dispatch an action of a type only the server dispatches instead (and
    /// [`on_leave`](ProjectionModel::on_leave) for leaves).
    pub fn update<R>(&self, server: &Server, f: impl FnOnce(&mut S) -> R) -> Result<R, Error> {
        let model = &self.model;
        if model.journaling.is_some() {
            return Err(Error::Journaled);
        }
        let outcome = model
            .view
            .with_mut(|view| {
                let result = catch_unwind(AssertUnwindSafe(|| f(&mut view.state)));
                model.publish(server, view, None);
                result.map_err(|_| Error::Panicked { kind: "update".into() })
            })
            .and_then(|result| result);
        match &outcome {
            Ok(_) => model.counters.accepted(),
            Err(Error::Panicked { .. }) => {
                model.counters.panicked();
                tracing::error!(domain = model.domain, "an update panicked");
            }
            Err(_) => {}
        }
        outcome
    }

    /// Runs `f` on the state, with the projection held: no action is applied meanwhile, and what `f` sends (a
    /// `server.send`) reaches each user in order with the projection's own messages. Fails with [`Error::Busy`] when
    /// called from inside one of this projection's handlers or its mapper.
    ///
    /// ```
    /// use emitter_core::Server;
    /// use emitter_state::ProjectionModel;
    ///
    /// let server = Server::new();
    /// let board = ProjectionModel::new(vec!['.'; 9], |cells: &Vec<char>, _: &str| cells.iter().collect::<String>())
    ///     .register(&server, "board");
    /// assert_eq!(board.with_state(|cells| cells.len()), Ok(9));
    /// assert_eq!(board.projection_of("ann").unwrap(), ".........");
    /// ```
    pub fn with_state<R>(&self, f: impl FnOnce(&S) -> R) -> Result<R, Error> {
        self.model.view.with(|view| f(&view.state))
    }

    /// The projection of the state for `username`, as the mapper makes it now; what a client of that user shows once
    /// it has applied every message sent to it so far.
    pub fn projection_of(&self, username: &str) -> Result<Value, Error> {
        self.model
            .view
            .with(|view| self.model.project(&view.state, username))
            .and_then(|projection| projection)
    }

    /// What the projection applied and turned away so far.
    pub fn stats(&self) -> StateStats {
        self.model.counters.snapshot()
    }

    /// Stops serving the projection on the server: no listener of its runs again. Its state stays readable here.
    pub fn unregister(&self) {
        self.registration.unregister();
    }
}
