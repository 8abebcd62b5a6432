//! A model of the Krmx state machine and a harness that drives the real [`Server`] beside it, step by step.
//!
//! Shared by `tests/model.rs` (proptest) and the `actions` fuzz target (`fuzz/fuzz_targets/actions.rs` includes this
//! file with `#[path]`), so both check the same things:
//!
//! - **Against the model** (exact): after every step, `users()`, every frame each open connection received, every
//!   event, and the result of every server call equal what the model predicts. The model is written from the protocol
//!   (the reference's order of messages and events), not from the server's code: plain vectors, no locks.
//! - **Invariants** (from observations only, so they hold even where the model and the server agree on a mistake):
//!   - a user is linked to at most one connection and a connection to at most one user, as seen both in `users()`
//!     and in the frames each connection received;
//!   - every linked connection's view of the users, rebuilt from the `joined/linked/unlinked/left` frames it
//!     received, equals `users()` once the step is done;
//!   - per user, events come in the order join → link → (unlink → link)* → unlink → leave, and `message` only while
//!     linked;
//!   - nothing reaches a connection that is not linked, except the replies to its own messages (`krmx/rejected`, or
//!     `krmx/accepted` followed by its snapshot in the same step) and the `krmx/left` about itself right after its
//!     own `krmx/unlinked`.
//!
//! The fake transport reads every connection's outbox after every step, as a client that keeps up would; a connection
//! the server asks to close is read one last time and then reported closed with `Host::disconnect`, as a transport
//! would. (Slow consumers, whose backlog the server bounds, have tests of their own in `tests/limits.rs`.)
//!
//! Listeners that call back into the server are part of the setup, so that re-entrancy is exercised too:
//! - joining `kim` kicks `kim` (from `on_join`), so a link to `kim` is accepted and then abandoned;
//! - unlinking `kai` kicks `kai` (from `on_unlink`);
//! - linking `mallory` is rejected with `banned` (from `on_authenticate`);
//! - the application messages `do/join`, `do/unlink`, `do/kick`, `do/send` and `do/broadcast` with a username as
//!   payload make the message listener call the server method of that name (errors ignored).
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use emitter_core::config::MAX_USERNAME_BYTES;
use emitter_core::protocol::{parse_bounded, ClientMessage};
use emitter_core::transport::{ConnectionId, Outbox, PushError};
use emitter_core::{
    is_valid_username, AcceptedVersions, Broadcast, Error, Event, Message, Server, Status, Subscription, User,
};
use parking_lot::Mutex;
use serde_json::{json, Value};

/// The usernames actions pick from: six valid ones (three with listener reactions) and three invalid ones.
pub const NAMES: [&str; 9] = ["ann", "bob", "cat", "kim", "kai", "mallory", "x", "1up", "sp ace"];
/// Joining this user kicks it.
pub const KICKED_ON_JOIN: &str = "kim";
/// Unlinking this user kicks it.
pub const KICKED_ON_UNLINK: &str = "kai";
/// Linking this user is rejected by an authenticate listener.
pub const BANNED: &str = "mallory";
/// The version every well-behaved client sends.
pub const GOOD_VERSION: &str = "0.6.3";
/// A version the server refuses.
pub const BAD_VERSION: &str = "0.7.1";

/// Server calls the message listener makes when asked to by a `do/*` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    Join,
    Unlink,
    Kick,
    Send,
    Broadcast,
}

impl Ask {
    pub const ALL: [Ask; 5] = [Ask::Join, Ask::Unlink, Ask::Kick, Ask::Send, Ask::Broadcast];

    fn kind(self) -> &'static str {
        match self {
            Ask::Join => "do/join",
            Ask::Unlink => "do/unlink",
            Ask::Kick => "do/kick",
            Ask::Send => "do/send",
            Ask::Broadcast => "do/broadcast",
        }
    }

    fn from_kind(kind: &str) -> Option<Ask> {
        Ask::ALL.into_iter().find(|ask| ask.kind() == kind)
    }
}

/// What a client sends on its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// `krmx/link` for `NAMES[name]`, with a good or a bad version.
    Link {
        name: usize,
        good_version: bool,
    },
    /// `krmx/link` with a payload that is not a link request.
    LinkMalformed,
    Unlink,
    Leave,
    /// An application message.
    Custom,
    /// An application message that makes the message listener call the server about `NAMES[name]`.
    Ask {
        ask: Ask,
        name: usize,
    },
    /// An unknown `krmx/` message.
    UnknownReserved,
    /// Not JSON.
    Invalid,
    /// Any bytes at all.
    Raw(Vec<u8>),
}

/// One step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A new connection.
    Connect,
    /// The `n`th connection ever opened (modulo how many there are) sends something; ignored if it was dropped.
    Send(usize, ClientAction),
    /// The `n`th connection drops.
    Drop(usize),
    /// `Server::join(NAMES[n])`.
    Join(usize),
    /// `Server::unlink(NAMES[n])`.
    Unlink(usize),
    /// `Server::kick(NAMES[n])`.
    Kick(usize),
    /// `Server::send(NAMES[n], ..)`.
    SendTo(usize),
    /// `Server::broadcast(.., skip)`.
    Broadcast(Option<usize>),
}

/// How a run is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    pub accept_new_users: bool,
    /// Close the server after the last step.
    pub close_at_end: bool,
    /// `max_connections` and `max_unlinked_connections`; `None` keeps the defaults.
    pub max_connections: Option<usize>,
    pub max_unlinked_connections: Option<usize>,
    /// `max_users`; `None` keeps the default.
    pub max_users: Option<usize>,
}

impl Setup {
    /// New users welcome, default limits, no close.
    pub fn plain() -> Setup {
        Setup {
            accept_new_users: true,
            close_at_end: false,
            max_connections: None,
            max_unlinked_connections: None,
            max_users: None,
        }
    }
}

fn name(index: usize) -> &'static str {
    NAMES[index % NAMES.len()]
}

/// Connection `c` asks to link as `NAMES[name]`, with a version the server accepts.
pub fn link(c: usize, name: usize) -> Action {
    Action::Send(
        c,
        ClientAction::Link {
            name,
            good_version: true,
        },
    )
}

/// Four connections linked to four users (one of them `kai`, kicked when unlinked), so that the random steps after
/// it start from a busy server rather than an empty one.
pub fn populated() -> Vec<Action> {
    let mut actions = vec![Action::Connect; 4];
    for (c, name) in [0, 1, 2, 4].into_iter().enumerate() {
        actions.push(link(c, name));
    }
    actions
}

// ---- the fake transport ----------------------------------------------------------------------------------------------

/// Reads everything a connection's outbox has for its client now.
fn drain(outbox: &Outbox) -> Vec<Value> {
    let frames = outbox.take_all();
    frames
        .iter()
        .map(|frame| serde_json::from_str(frame.as_str()).unwrap_or_else(|_| json!({"unparsable": frame.as_str()})))
        .collect()
}

// ---- the model -------------------------------------------------------------------------------------------------------

/// A link request, as the model reads it.
#[derive(Debug, Clone)]
struct LinkAsk {
    username: String,
    version: String,
    version_ok: bool,
    username_ok: bool,
}

/// What an incoming frame is, as the protocol defines it.
#[derive(Debug, Clone)]
enum Incoming {
    Invalid,
    Link(Option<LinkAsk>),
    Unlink,
    Leave,
    Reserved,
    Custom(String, Option<Value>),
}

struct ModelUser {
    name: String,
    link: Option<usize>,
}

#[derive(Default)]
struct ModelConnection {
    /// Not yet reported closed (by `disconnect`).
    open: bool,
    /// The server asked to close it (the server closing): it gets nothing more.
    closing: bool,
    linked: Option<String>,
    expected: Vec<Value>,
}

struct Model {
    accept_new_users: bool,
    max_connections: usize,
    max_unlinked_connections: usize,
    max_users: usize,
    /// `Closing`: calls that need `Listening` (join, kick) fail, so listener reactions do nothing.
    closing: bool,
    users: Vec<ModelUser>,
    connections: Vec<ModelConnection>,
    events: Vec<String>,
}

fn frame(kind: &str, username: &str) -> Value {
    json!({"type": kind, "payload": {"username": username}})
}

fn rejected(reason: &str) -> Value {
    json!({"type": "krmx/rejected", "payload": {"reason": reason}})
}

impl Model {
    fn user(&self, name: &str) -> Option<&ModelUser> {
        self.users.iter().find(|user| user.name == name)
    }

    fn link_of(&self, name: &str) -> Option<usize> {
        self.user(name).and_then(|user| user.link)
    }

    fn push(&mut self, c: usize, value: Value) -> Result<(), PushError> {
        let connection = &mut self.connections[c];
        if !connection.open || connection.closing {
            return Err(PushError::Closed);
        }
        connection.expected.push(value);
        Ok(())
    }

    fn push_linked(&mut self, value: &Value, skip: Option<&str>) -> Broadcast {
        let targets: Vec<(String, usize)> = self
            .users
            .iter()
            .filter(|user| Some(user.name.as_str()) != skip)
            .filter_map(|user| Some((user.name.clone(), user.link?)))
            .collect();
        let mut report = Broadcast::default();
        for (name, c) in targets {
            match self.push(c, value.clone()) {
                Ok(()) => report.delivered += 1,
                Err(error) => report.undelivered.push((name, error)),
            }
        }
        report
    }

    fn join(&mut self, name: &str) {
        let _ = self.push_linked(&frame("krmx/joined", name), None);
        self.users.push(ModelUser {
            name: name.to_owned(),
            link: None,
        });
        self.events.push(format!("join {name}"));
        if name == KICKED_ON_JOIN && !self.closing && self.user(name).is_some() {
            self.leave(name);
        }
    }

    fn link(&mut self, c: usize, name: &str) {
        let usable = self.user(name).is_some_and(|user| user.link.is_none())
            && self.connections[c].open
            && self.connections[c].linked.is_none();
        if !usable {
            return; // a join listener kicked the user: the link is abandoned
        }
        self.connections[c].linked = Some(name.to_owned());
        self.users.iter_mut().find(|user| user.name == name).unwrap().link = Some(c);
        let snapshot: Vec<(String, bool)> = self.users.iter().map(|u| (u.name.clone(), u.link.is_some())).collect();
        for (user, linked) in snapshot {
            let _ = self.push(c, frame("krmx/joined", &user));
            if linked {
                let _ = self.push(c, frame("krmx/linked", &user));
            }
        }
        let _ = self.push_linked(&frame("krmx/linked", name), Some(name));
        self.events.push(format!("link {name}"));
    }

    fn unlink(&mut self, name: &str) {
        let _ = self.push_linked(&frame("krmx/unlinked", name), None);
        let Some(c) = self
            .users
            .iter_mut()
            .find(|user| user.name == name)
            .and_then(|user| user.link.take())
        else {
            return;
        };
        self.connections[c].linked = None;
        self.events.push(format!("unlink {name}"));
        if name == KICKED_ON_UNLINK && !self.closing && self.user(name).is_some() {
            self.leave(name);
        }
    }

    fn leave(&mut self, name: &str) {
        if let Some(c) = self.link_of(name) {
            self.unlink(name);
            let _ = self.push(c, frame("krmx/left", name));
        }
        if self.user(name).is_none_or(|user| user.link.is_some()) {
            return;
        }
        let _ = self.push_linked(&frame("krmx/left", name), None);
        self.users.retain(|user| user.name != name);
        self.events.push(format!("leave {name}"));
    }

    /// Admits a connection unless a connection limit says no.
    fn connect(&mut self) -> bool {
        let open = self.connections.iter().filter(|c| c.open).count();
        let linked = self.connections.iter().filter(|c| c.open && c.linked.is_some()).count();
        if open >= self.max_connections || open - linked >= self.max_unlinked_connections {
            return false;
        }
        self.connections.push(ModelConnection {
            open: true,
            ..ModelConnection::default()
        });
        true
    }

    fn drop_connection(&mut self, c: usize) {
        self.connections[c].closing = true;
        if let Some(name) = self.connections[c].linked.clone() {
            self.unlink(&name);
        }
        self.connections[c].open = false;
    }

    /// Reports every connection the server asked to close, first index first, until none is left.
    fn settle(&mut self) {
        while let Some(c) = self.connections.iter().position(|c| c.open && c.closing) {
            self.drop_connection(c);
        }
    }

    fn receive(&mut self, c: usize, incoming: Incoming) {
        match (self.connections[c].linked.clone(), incoming) {
            (Some(name), Incoming::Invalid | Incoming::Link(_) | Incoming::Unlink | Incoming::Reserved) => {
                self.unlink(&name)
            }
            (Some(name), Incoming::Leave) => self.leave(&name),
            (Some(name), Incoming::Custom(kind, payload)) => {
                self.events.push(format!("message {name} {kind}"));
                self.react(&name, &kind, payload.as_ref());
            }
            (None, Incoming::Invalid) => drop(self.push(c, rejected("invalid message"))),
            (None, Incoming::Link(None)) => drop(self.push(c, rejected("invalid link request"))),
            (None, Incoming::Link(Some(ask))) => self.attempt_link(c, ask),
            (None, _) => drop(self.push(c, rejected("unlinked connection"))),
        }
    }

    fn attempt_link(&mut self, c: usize, ask: LinkAsk) {
        let name = ask.username.as_str();
        if !ask.version_ok {
            let reason = format!(
                "krmx server version mismatch (server=0.5.* || 0.6.*,client={})",
                ask.version
            );
            let _ = self.push(c, rejected(&reason));
            return;
        }
        let refusal = if !ask.username_ok {
            Some("invalid username".to_owned())
        } else {
            match self.user(name) {
                None if !self.accept_new_users => Some("server is not accepting new users".to_owned()),
                None if self.users.len() >= self.max_users => Some("server has too many users".to_owned()),
                Some(user) if user.link.is_some() => Some(format!("user {name} is already linked to a connection")),
                _ => None,
            }
        };
        if let Some(reason) = refusal {
            let _ = self.push(c, rejected(&reason));
            return;
        }
        self.events.push(format!("authenticate {name}"));
        if name == BANNED {
            let _ = self.push(c, rejected("banned"));
            return;
        }
        let _ = self.push(c, json!({"type": "krmx/accepted"}));
        if self.user(name).is_none() {
            self.join(name);
        }
        self.link(c, name);
    }

    /// The message listener's reaction to `do/*` messages.
    fn react(&mut self, from: &str, kind: &str, payload: Option<&Value>) {
        let (Some(ask), Some(target)) = (Ask::from_kind(kind), payload.and_then(Value::as_str)) else {
            return;
        };
        let _ = match ask {
            Ask::Join => self.server_join(target),
            Ask::Unlink => self.server_unlink(target),
            Ask::Kick => self.server_kick(target),
            Ask::Send => self.server_send(target, &sent_by(from)),
            Ask::Broadcast => {
                let _ = self.push_linked(&broadcast_by(from), Some(from));
                Ok(())
            }
        };
    }

    /// A server method refused while closing, with the core's words for `action`.
    fn refuse_while_closing(&self, action: &'static str) -> Result<(), Error> {
        if self.closing {
            return Err(Error::WrongStatus {
                action,
                status: Status::Closing,
            });
        }
        Ok(())
    }

    fn server_join(&mut self, name: &str) -> Result<(), Error> {
        self.refuse_while_closing("join a user")?;
        if self.user(name).is_some() {
            return Err(Error::JoinExistingUser);
        }
        if !is_valid_username(name) {
            return Err(Error::JoinInvalidUsername);
        }
        self.join(name);
        Ok(())
    }

    fn server_unlink(&mut self, name: &str) -> Result<(), Error> {
        match self.user(name) {
            None => Err(Error::UnlinkUnknownUser),
            Some(user) if user.link.is_none() => Err(Error::UnlinkUnlinkedUser),
            Some(_) => {
                self.unlink(name);
                Ok(())
            }
        }
    }

    fn server_kick(&mut self, name: &str) -> Result<(), Error> {
        self.refuse_while_closing("kick a user")?;
        if self.user(name).is_none() {
            return Err(Error::KickUnknownUser);
        }
        self.leave(name);
        Ok(())
    }

    fn server_send(&mut self, name: &str, message: &Value) -> Result<(), Error> {
        match self.user(name) {
            None => Err(Error::SendToUnknownUser),
            Some(ModelUser { link: None, .. }) => Err(Error::SendToUnlinkedUser),
            Some(ModelUser { link: Some(c), .. }) => {
                let c = *c;
                self.push(c, message.clone()).map_err(|error| match error {
                    PushError::Full => Error::QueueFull,
                    PushError::Closed => Error::ConnectionClosing,
                })
            }
        }
    }

    fn close(&mut self) {
        self.closing = true;
        let names: Vec<String> = self.users.iter().map(|user| user.name.clone()).collect();
        for name in names {
            if self.user(&name).is_some() {
                self.leave(&name);
            }
        }
        for connection in &mut self.connections {
            connection.closing = true;
        }
    }
}

fn sent_by(from: &str) -> Value {
    json!({"type": "app/sent", "payload": from})
}

fn broadcast_by(from: &str) -> Value {
    json!({"type": "app/all", "payload": from})
}

// ---- observing the real server ---------------------------------------------------------------------------------------

/// What one connection's received frames say about it, rebuilt from those frames alone.
#[derive(Debug, Clone, PartialEq)]
enum Observed {
    Unlinked,
    /// It just got `krmx/unlinked` about itself: a `krmx/left` about itself may follow.
    JustUnlinked(String),
    /// It got `krmx/accepted` for `name` this step; its snapshot follows.
    Accepted {
        name: String,
        view: Vec<(String, bool)>,
    },
    Linked {
        name: String,
        view: Vec<(String, bool)>,
    },
}

fn payload_username(value: &Value) -> Option<&str> {
    value["payload"]["username"].as_str()
}

impl Observed {
    /// Feeds one frame received during a step. `own` says whether the step was this connection's own message;
    /// `asked` is the username of the link request it sent in that step, if it was one.
    fn feed(&mut self, value: &Value, own: bool, asked: Option<&str>) -> Result<(), String> {
        let kind = value["type"].as_str().unwrap_or_default();
        let about = payload_username(value);
        match self {
            Observed::JustUnlinked(me) if kind == "krmx/left" && about == Some(me.as_str()) => {
                *self = Observed::Unlinked;
                Ok(())
            }
            Observed::Unlinked | Observed::JustUnlinked(_) => self.feed_unlinked(value, kind, own, asked),
            Observed::Accepted { name, view } => match kind {
                "krmx/joined" => {
                    view.push((about.unwrap_or_default().to_owned(), false));
                    Ok(())
                }
                "krmx/linked" => {
                    let about = about.unwrap_or_default();
                    let Some(entry) = view.iter_mut().find(|(n, _)| n == about) else {
                        return Err(format!("snapshot: linked {about} before joined"));
                    };
                    entry.1 = true;
                    if about == name {
                        *self = Observed::Linked {
                            name: name.clone(),
                            view: std::mem::take(view),
                        };
                    }
                    Ok(())
                }
                // The link was abandoned (a join listener kicked the user); a later reply to its own request.
                "krmx/accepted" | "krmx/rejected" => self.feed_unlinked(value, kind, own, asked),
                _ => Err(format!("{value} in the middle of a snapshot")),
            },
            Observed::Linked { name, view } => {
                let position = about.and_then(|about| view.iter().position(|(n, _)| n == about));
                match (kind, position) {
                    ("krmx/joined", None) => view.push((about.unwrap_or_default().to_owned(), false)),
                    ("krmx/linked", Some(i)) if !view[i].1 => view[i].1 = true,
                    ("krmx/unlinked", Some(i)) if view[i].1 => {
                        view[i].1 = false;
                        if view[i].0 == *name {
                            *self = Observed::JustUnlinked(name.clone());
                        }
                    }
                    ("krmx/left", Some(i)) if !view[i].1 => {
                        view.remove(i);
                    }
                    ("krmx/joined" | "krmx/linked" | "krmx/unlinked" | "krmx/left", _) => {
                        return Err(format!("{value} does not fit the view {view:?}"))
                    }
                    ("krmx/accepted" | "krmx/rejected", _) => {
                        return Err(format!("{value} delivered to a linked connection"))
                    }
                    _ => {}
                }
                Ok(())
            }
        }
    }

    fn feed_unlinked(&mut self, value: &Value, kind: &str, own: bool, asked: Option<&str>) -> Result<(), String> {
        if !own {
            return Err(format!("{value} delivered to an unlinked connection that sent nothing"));
        }
        match (kind, asked) {
            ("krmx/rejected", _) => {
                *self = Observed::Unlinked;
                Ok(())
            }
            ("krmx/accepted", Some(name)) => {
                *self = Observed::Accepted {
                    name: name.to_owned(),
                    view: Vec::new(),
                };
                Ok(())
            }
            _ => Err(format!("{value} delivered to an unlinked connection")),
        }
    }

    /// At the end of a step: an accepted link without its snapshot was abandoned.
    fn end_step(&mut self) {
        if matches!(self, Observed::Accepted { .. } | Observed::JustUnlinked(_)) {
            *self = Observed::Unlinked;
        }
    }
}

/// One step as a connection saw it: the frames it received, whether the step was its own message, and the username
/// its link request asked for, if it sent one.
#[derive(Clone)]
pub struct SeenStep<'a> {
    pub frames: Vec<Value>,
    pub own: bool,
    pub asked: Option<&'a str>,
}

/// Runs the per-connection observer over `steps`, from a fresh connection; `Ok` holds the users the connection
/// believes exist (name, linked) if it ends linked. Lets the tests show that the observer rejects what it must.
pub fn observe(steps: &[SeenStep<'_>]) -> Result<Option<Vec<(String, bool)>>, String> {
    let mut observed = Observed::Unlinked;
    for step in steps {
        for value in &step.frames {
            observed.feed(value, step.own, step.asked)?;
        }
        observed.end_step();
    }
    Ok(match observed {
        Observed::Linked { view, .. } => Some(view),
        _ => None,
    })
}

/// Where a user is in join → link → (unlink → link)* → unlink → leave, from the events alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Joined,
    Linked,
}

struct HarnessConnection {
    id: ConnectionId,
    outbox: Outbox,
    /// Read from the outbox but not checked yet.
    unread: Vec<Value>,
    /// Reported closed with `disconnect`.
    dropped: bool,
    received: Vec<Value>,
    observed: Observed,
}

/// Drives a real server and the model side by side; see the module documentation.
pub struct Harness {
    server: Server,
    setup: Setup,
    model: Model,
    connections: Vec<HarnessConnection>,
    events: Arc<Mutex<Vec<String>>>,
    events_checked: usize,
    phases: HashMap<String, Phase>,
    step: u64,
    _subscriptions: Vec<Subscription>,
    /// The server as the listeners reach it; emptied on drop. A listener that held a `Server` clone itself would make
    /// a reference cycle that nothing breaks (see `tests/fuzz_regressions.rs`), and the fuzzer would leak one server
    /// per input.
    slot: Arc<Mutex<Option<Server>>>,
    runtime: tokio::runtime::Runtime,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.slot.lock().take();
    }
}

/// Runs `call` with the server, unless the harness is gone.
fn with_server(slot: &Mutex<Option<Server>>, call: impl FnOnce(&Server)) {
    let server = slot.lock().clone();
    if let Some(server) = server {
        call(&server);
    }
}

impl Harness {
    pub fn new(setup: Setup) -> Harness {
        // A runtime that is entered but never driven between steps: nothing runs behind the steps' backs.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut builder = Server::builder().accept_new_users(setup.accept_new_users);
        if let Some(max) = setup.max_connections {
            builder = builder.max_connections(max);
        }
        if let Some(max) = setup.max_unlinked_connections {
            builder = builder.max_unlinked_connections(max);
        }
        if let Some(max) = setup.max_users {
            builder = builder.max_users(max);
        }
        let server = builder.build();
        let events: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut subscriptions = Vec::new();
        let e = events.clone();
        subscriptions.push(server.on_any(move |_, event| {
            let line = match event {
                Event::Authenticate { username, .. } => format!("authenticate {username}"),
                Event::Join { username } => format!("join {username}"),
                Event::Link { username } => format!("link {username}"),
                Event::Unlink { username } => format!("unlink {username}"),
                Event::Leave { username } => format!("leave {username}"),
                Event::Message { username, message } => format!("message {username} {}", message.kind),
                other => other.name().to_owned(),
            };
            e.lock().push(line);
        }));
        let slot = Arc::new(Mutex::new(Some(server.clone())));
        let s = slot.clone();
        subscriptions.push(server.on_join(move |u| {
            if u == KICKED_ON_JOIN {
                with_server(&s, |server| drop(server.kick(&u)));
            }
        }));
        let s = slot.clone();
        subscriptions.push(server.on_unlink(move |u| {
            if u == KICKED_ON_UNLINK {
                with_server(&s, |server| drop(server.kick(&u)));
            }
        }));
        subscriptions.push(server.on_authenticate(|u, _, auth| {
            if u == BANNED {
                auth.reject("banned");
            }
        }));
        let s = slot.clone();
        subscriptions.push(server.on_message(move |from, message| {
            let (Some(ask), Some(target)) = (Ask::from_kind(&message.kind), message.payload_as::<String>().ok()) else {
                return;
            };
            // Errors are the model's business: the results are compared where the harness calls directly.
            with_server(&s, |s| {
                let _ = match ask {
                    Ask::Join => s.join(&target),
                    Ask::Unlink => s.unlink(&target),
                    Ask::Kick => s.kick(&target),
                    Ask::Send => s.send(&target, &Message::with_payload("app/sent", serde_json::json!(from))),
                    Ask::Broadcast => s
                        .broadcast(&Message::with_payload("app/all", serde_json::json!(from)), Some(&from))
                        .map(drop),
                };
            });
        }));
        {
            let _entered = runtime.enter();
            server.host().start().unwrap();
            server.host().listening(7).unwrap();
        }
        events.lock().clear(); // `listen`
        let max_connections = server.config().max_connections();
        let max_unlinked_connections = server.config().max_unlinked_connections();
        let max_users = server.config().max_users();
        Harness {
            server,
            setup,
            model: Model {
                accept_new_users: setup.accept_new_users,
                max_connections,
                max_unlinked_connections,
                max_users,
                closing: false,
                users: Vec::new(),
                connections: Vec::new(),
                events: Vec::new(),
            },
            connections: Vec::new(),
            events,
            events_checked: 0,
            phases: HashMap::new(),
            step: 0,
            _subscriptions: subscriptions,
            slot,
            runtime,
        }
    }

    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Runs every action, then closes the server if the setup says so. `Err` describes the first divergence.
    pub fn run(setup: Setup, actions: &[Action]) -> Result<(), String> {
        let mut harness = Harness::new(setup);
        for (i, action) in actions.iter().enumerate() {
            harness
                .apply(action)
                .map_err(|error| format!("step {i} ({action:?}): {error}"))?;
        }
        if setup.close_at_end {
            harness.close().map_err(|error| format!("close: {error}"))?;
        }
        Ok(())
    }

    fn live(&self, n: usize) -> Option<usize> {
        if self.connections.is_empty() {
            return None;
        }
        let c = n % self.connections.len();
        (!self.connections[c].dropped).then_some(c)
    }

    /// Performs one action on the server and the model, then checks everything.
    pub fn apply(&mut self, action: &Action) -> Result<(), String> {
        self.step += 1;
        let _entered = self.runtime.enter();
        let mut own = None;
        match action {
            Action::Connect => {
                let admitted = self.server.host().connect().ok();
                let want = self.model.connect();
                let admitted_some = admitted.is_some();
                match admitted {
                    Some((id, outbox)) if want => self.connections.push(HarnessConnection {
                        id,
                        outbox,
                        unread: Vec::new(),
                        dropped: false,
                        received: Vec::new(),
                        observed: Observed::Unlinked,
                    }),
                    None if !want => {}
                    _ => return Err(format!("connect admitted: {admitted_some}, the model says {want}")),
                }
            }
            Action::Send(n, client) => {
                let Some(c) = self.live(*n) else { return Ok(()) };
                let (bytes, incoming) = encode(client, self.server.config().max_json_depth());
                own = Some((c, asked_username(&incoming)));
                self.server.host().receive(self.connections[c].id, &bytes);
                self.model.receive(c, incoming);
            }
            Action::Drop(n) => {
                let Some(c) = self.live(*n) else { return Ok(()) };
                // The transport's socket is gone: what the client read before is all it gets.
                let connection = &mut self.connections[c];
                connection.unread.extend(drain(&connection.outbox));
                connection.dropped = true;
                self.server.host().disconnect(self.connections[c].id);
                self.model.drop_connection(c);
            }
            Action::Join(n) => {
                let got = self.server.join(name(*n));
                let want = self.model.server_join(name(*n));
                same_result("join", got, want)?;
            }
            Action::Unlink(n) => {
                let got = self.server.unlink(name(*n));
                let want = self.model.server_unlink(name(*n));
                same_result("unlink", got, want)?;
            }
            Action::Kick(n) => {
                let got = self.server.kick(name(*n));
                let want = self.model.server_kick(name(*n));
                same_result("kick", got, want)?;
            }
            Action::SendTo(n) => {
                let payload = self.step;
                let got = self.server.send(
                    name(*n),
                    &Message::with_payload("app/direct", serde_json::json!(payload)),
                );
                let want = self
                    .model
                    .server_send(name(*n), &json!({"type": "app/direct", "payload": payload}));
                same_result("send", got, want)?;
            }
            Action::Broadcast(skip) => {
                let skip = skip.map(name);
                let payload = self.step;
                let got = self.server.broadcast(
                    &Message::with_payload("app/broadcast", serde_json::json!(payload)),
                    skip,
                );
                let want = self
                    .model
                    .push_linked(&json!({"type": "app/broadcast", "payload": payload}), skip);
                if got.as_ref() != Ok(&want) {
                    return Err(format!("broadcast: got {got:?}, the model says {want:?}"));
                }
            }
        }
        self.settle();
        self.check(own.as_ref().map(|(c, asked)| (*c, asked.as_deref())))
    }

    /// Closes the server, reports every connection closed, and checks that everyone left and `close` came last.
    pub fn close(&mut self) -> Result<(), String> {
        let _entered = self.runtime.enter();
        let closed = self.server.close();
        self.model.close();
        // With nothing open, `close` is emitted at once; otherwise once the last connection is reported closed.
        let at_once = !self.model.connections.iter().any(|c| c.open);
        if at_once {
            self.model.events.push("close".to_owned());
        }
        if self.server.status() != Status::Closing && self.server.status() != Status::Closed {
            return Err(format!("status {} right after close()", self.server.status()));
        }
        self.settle();
        self.check(None)?;
        let outcome = self
            .runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), closed).await });
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(format!("close failed: {error}")),
            Err(_) => return Err("close() did not finish once every connection was reported closed".to_owned()),
        }
        if !at_once {
            self.model.events.push("close".to_owned());
        }
        if self.server.status() != Status::Closed {
            return Err(format!("status {} after close() finished", self.server.status()));
        }
        if !self.server.users().is_empty() {
            return Err(format!("users left after close: {:?}", self.server.users()));
        }
        self.check(None)
    }

    /// Reports the connections the server asked to close, as a transport would, until none is left.
    fn settle(&mut self) {
        while let Some(c) = self
            .connections
            .iter()
            .position(|c| !c.dropped && c.outbox.is_closing())
        {
            // The transport writes what was queued before the close, then reports the close.
            let connection = &mut self.connections[c];
            connection.unread.extend(drain(&connection.outbox));
            connection.dropped = true;
            self.server.host().disconnect(self.connections[c].id);
        }
        self.model.settle();
    }

    /// Drains every queue and checks the server against the model and the invariants.
    fn check(&mut self, own: Option<(usize, Option<&str>)>) -> Result<(), String> {
        // Frames, against the model and through each connection's observer.
        for (c, connection) in self.connections.iter_mut().enumerate() {
            if !connection.dropped {
                connection.unread.extend(drain(&connection.outbox));
            }
            let frames = std::mem::take(&mut connection.unread);
            let own_step = own.is_some_and(|(o, _)| o == c);
            let asked = own.and_then(|(o, asked)| if o == c { asked } else { None });
            for value in &frames {
                connection
                    .observed
                    .feed(value, own_step, asked)
                    .map_err(|error| format!("connection {c}: {error}; received so far {:?}", connection.received))?;
                connection.received.push(value.clone());
            }
            connection.observed.end_step();
            let expected = &self.model.connections[c].expected;
            if connection.received != *expected {
                return Err(format!(
                    "connection {c} received {}\n  the model expects {}",
                    show(&connection.received),
                    show(expected)
                ));
            }
        }
        // users(), against the model.
        let users = self.server.users();
        let expected: Vec<User> = self
            .model
            .users
            .iter()
            .map(|user| User {
                username: user.name.clone(),
                is_linked: user.link.is_some(),
            })
            .collect();
        if users != expected {
            return Err(format!("users() is {users:?}, the model says {expected:?}"));
        }
        // Events, against the model.
        let events = self.events.lock().clone();
        if events != self.model.events {
            return Err(format!(
                "events {events:?}\n  the model expects {:?}",
                self.model.events
            ));
        }
        self.check_invariants(&users, &events)
    }

    fn check_invariants(&mut self, users: &[User], events: &[String]) -> Result<(), String> {
        // One connection per user, one user per connection, as the frames show it; and as users() shows it.
        let mut linked_by_frames = BTreeSet::new();
        for (c, connection) in self.connections.iter().enumerate() {
            if connection.dropped {
                continue;
            }
            if let Observed::Linked { name, view } = &connection.observed {
                if !linked_by_frames.insert(name.clone()) {
                    return Err(format!("two open connections are linked to {name}"));
                }
                // Each linked client's view of the users equals users().
                let view_users: Vec<User> = view
                    .iter()
                    .map(|(username, is_linked)| User {
                        username: username.clone(),
                        is_linked: *is_linked,
                    })
                    .collect();
                if view_users != users {
                    return Err(format!(
                        "connection {c} ({name}) sees {view_users:?}, users() is {users:?}"
                    ));
                }
            }
        }
        let linked_by_server: BTreeSet<String> = users
            .iter()
            .filter(|user| user.is_linked)
            .map(|user| user.username.clone())
            .collect();
        if linked_by_frames != linked_by_server {
            return Err(format!(
                "linked according to the frames: {linked_by_frames:?}; according to users(): {linked_by_server:?}"
            ));
        }
        let mut seen = BTreeSet::new();
        for user in users {
            if !seen.insert(&user.username) {
                return Err(format!("{} is listed twice", user.username));
            }
        }
        // Per user: join → link → (unlink → link)* → unlink → leave; messages only while linked.
        for line in &events[self.events_checked..] {
            let mut words = line.splitn(3, ' ');
            let (event, username) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
            let phase = self.phases.get(username).copied();
            let next = match (event, phase) {
                ("join", None) => Some(Phase::Joined),
                ("link", Some(Phase::Joined)) => Some(Phase::Linked),
                ("unlink", Some(Phase::Linked)) => Some(Phase::Joined),
                ("leave", Some(Phase::Joined)) => None,
                ("message", Some(Phase::Linked)) => Some(Phase::Linked),
                ("authenticate", phase) if phase != Some(Phase::Linked) => phase,
                ("close", _) => continue,
                _ => return Err(format!("event `{line}` while {username} is {phase:?}")),
            };
            match next {
                Some(phase) => self.phases.insert(username.to_owned(), phase),
                None => self.phases.remove(username),
            };
        }
        self.events_checked = events.len();
        for user in users {
            let want = if user.is_linked { Phase::Linked } else { Phase::Joined };
            if self.phases.get(&user.username) != Some(&want) {
                return Err(format!(
                    "users() has {user:?}, its events say {:?}",
                    self.phases.get(&user.username)
                ));
            }
        }
        if self.phases.len() != users.len() {
            return Err(format!("events say {:?}, users() is {users:?}", self.phases));
        }
        Ok(())
    }
}

fn show(values: &[Value]) -> String {
    let items: Vec<String> = values.iter().map(Value::to_string).collect();
    format!("[{}]", items.join(", "))
}

fn same_result(what: &str, got: Result<(), Error>, want: Result<(), Error>) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, the model says {want:?}"))
    }
}

fn asked_username(incoming: &Incoming) -> Option<String> {
    match incoming {
        Incoming::Link(Some(ask)) => Some(ask.username.clone()),
        _ => None,
    }
}

/// The bytes a client action sends, and what they are as the protocol defines it.
fn encode(client: &ClientAction, max_json_depth: usize) -> (Vec<u8>, Incoming) {
    let json = |value: Value| value.to_string().into_bytes();
    match client {
        ClientAction::Link { name: n, good_version } => {
            let username = name(*n);
            let version = if *good_version { GOOD_VERSION } else { BAD_VERSION };
            let bytes = json(json!({"type": "krmx/link", "payload": {"username": username, "version": version}}));
            let ask = LinkAsk {
                username: username.to_owned(),
                version: version.to_owned(),
                version_ok: *good_version,
                username_ok: NAMES[..6].contains(&username),
            };
            (bytes, Incoming::Link(Some(ask)))
        }
        ClientAction::LinkMalformed => (
            json(json!({"type": "krmx/link", "payload": {"username": 3, "version": GOOD_VERSION}})),
            Incoming::Link(None),
        ),
        ClientAction::Unlink => (json(json!({"type": "krmx/unlink"})), Incoming::Unlink),
        ClientAction::Leave => (json(json!({"type": "krmx/leave"})), Incoming::Leave),
        ClientAction::Custom => (
            json(json!({"type": "app/hello", "payload": {"n": 1}})),
            Incoming::Custom("app/hello".to_owned(), Some(json!({"n": 1}))),
        ),
        ClientAction::Ask { ask, name: n } => {
            let payload = json!(name(*n));
            (
                json(json!({"type": ask.kind(), "payload": payload})),
                Incoming::Custom(ask.kind().to_owned(), Some(payload)),
            )
        }
        ClientAction::UnknownReserved => (json(json!({"type": "krmx/hello"})), Incoming::Reserved),
        ClientAction::Invalid => (b"{\"type\":".to_vec(), Incoming::Invalid),
        ClientAction::Raw(bytes) => (bytes.clone(), classify(bytes, max_json_depth)),
    }
}

/// Reads arbitrary bytes with the crate's parser (fuzzed on its own by the `parse` target) and version and username
/// rules (unit-tested), then classifies them as the protocol does.
fn classify(bytes: &[u8], max_json_depth: usize) -> Incoming {
    let Ok(message) = parse_bounded(bytes, max_json_depth) else {
        return Incoming::Invalid;
    };
    match ClientMessage::from(message) {
        ClientMessage::Link(None) => Incoming::Link(None),
        ClientMessage::Link(Some(request)) => Incoming::Link(Some(LinkAsk {
            version_ok: AcceptedVersions::default().accepts(&request.version),
            version: request.version,
            username_ok: request.username.len() <= MAX_USERNAME_BYTES && is_valid_username(&request.username),
            username: request.username,
        })),
        ClientMessage::Unlink => Incoming::Unlink,
        ClientMessage::Leave => Incoming::Leave,
        ClientMessage::UnknownReserved(_) => Incoming::Reserved,
        ClientMessage::Custom(message) => Incoming::Custom(message.kind, message.payload),
    }
}
