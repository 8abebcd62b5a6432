//! The conformance server: a Krmx server with a fixed, documented behaviour (see this crate's README) so that any
//! Krmx client test suite can drive it over the wire.
//!
//! Three endpoints share the same listeners: [`build_main`] accepts new users; [`build_closed`] does not, and
//! [`serve_closed`] joins the user [`ADMIN`] once it listens; [`build_policy`] is the main endpoint with the
//! production policies on (a new link takes a linked user over, a grace period, messages kept for unlinked users).
//! All serve path `/`.
//!
//! Each endpoint can be a node of a cluster on Redis ([`join_cluster`]): then any number of conformance processes form
//! one server for the contract, and a client suite run against any one of them passes unchanged.
//!
//! The main endpoint's port also serves `GET /metrics` and `GET /health` ([`serve_main_server`]), and the main
//! endpoint serves the state app: Krmx State's atoms, a stream and a projection ([`state`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emitter_axum::ListenError;
use emitter_core::config::{KeepLimits, LinkPolicy};
use emitter_core::{AuthContext, AuthInfo, Error, Message, Server, ServerBuilder, UserRef};
use emitter_redis::{Cluster, Node, Options};
use emitter_state::journal::{Journal, JournalError};
use serde_json::{json, Value};
use tokio::net::TcpListener;

pub mod state;

/// How long async authentication may take before the link is rejected with `authentication timeout`.
pub const AUTH_TIMEOUT: Duration = Duration::from_millis(500);
/// How often connections are pinged.
pub const PING_INTERVAL: Duration = Duration::from_secs(10);
/// How long the `slow…`, `deny…` and `fail…` users' async authentication takes.
pub const SHORT_AUTH: Duration = Duration::from_millis(200);
/// How long the `late…` users' async authentication would take: longer than [`AUTH_TIMEOUT`].
pub const LATE_AUTH: Duration = Duration::from_millis(2000);
/// The user the closed endpoint joins server-side when it starts.
pub const ADMIN: &str = "admin";
/// The `test/error` text for a kick, unlink or join whose payload is not a string.
pub const NOT_A_USERNAME: &str = "payload must be a username string";

/// The main endpoint's server: accepts new users, and serves the state app ([`state`]) beside the contract's custom
/// messages, in this process. Not listening yet.
pub fn build_main() -> Server {
    build_main_with_state()
        .map(|(server, _)| server)
        .unwrap_or_else(|error| unreachable!("only a journal refuses a domain: {error}"))
}

/// [`build_main`], with the handles of its state app's models (to read their state from the server side).
pub fn build_main_with_state() -> Result<(Server, state::StateApp), JournalError> {
    build_main_journaled(None)
}

/// The main endpoint's server with its state app's models journaled by `journal` (a cluster's or a store's: see
/// [`state::register`]), or in this process without one.
pub fn build_main_journaled(journal: Option<Arc<dyn Journal>>) -> Result<(Server, state::StateApp), JournalError> {
    let server = with_contract(state::settings(Server::builder()));
    let app = state::register(&server, journal)?;
    Ok((server, app))
}

/// The policy endpoint's grace period: an unlinked user leaves after it.
pub const GRACE_PERIOD: Duration = Duration::from_secs(1);
/// The policy endpoint's limits on the messages kept for an unlinked user.
pub const KEEP_LIMITS: KeepLimits = KeepLimits {
    messages: 100,
    bytes: 1 << 20,
    age: Duration::from_secs(60),
};

/// The policy endpoint's server: the main endpoint's contract with [`LinkPolicy::Replace`], a [`GRACE_PERIOD`] and
/// messages kept for unlinked users within [`KEEP_LIMITS`]. Not listening yet.
pub fn build_policy() -> Server {
    with_contract(
        Server::builder()
            .link_policy(LinkPolicy::Replace)
            .grace_period(GRACE_PERIOD)
            .keep_unlinked(KEEP_LIMITS),
    )
}

/// The closed endpoint's server: does not accept new users. Not listening yet; [`serve_closed`] joins [`ADMIN`].
pub fn build_closed() -> Server {
    with_contract(Server::builder().accept_new_users(false))
}

/// Starts [`build_main`] on `listener` and returns it with its port.
pub async fn serve_main(listener: TcpListener) -> Result<(Server, u16), ListenError> {
    let server = build_main();
    let port = serve_main_server(&server, listener).await?;
    Ok((server, port))
}

/// Serves the main endpoint's server on `listener`: the Krmx endpoint at `/`, its Prometheus metrics at
/// `GET /metrics` and its health check at `GET /health`, all on the one port.
pub async fn serve_main_server(server: &Server, listener: TcpListener) -> Result<u16, ListenError> {
    let app = emitter_axum::router(server)
        .merge(emitter_axum::metrics_route(server))
        .merge(emitter_axum::health_route(server));
    emitter_axum::serve(server, listener, app).await
}

/// Starts [`build_closed`] on `listener`, with [`ADMIN`] joined, and returns it with its port.
pub async fn serve_closed(listener: TcpListener) -> Result<(Server, u16), ListenError> {
    let server = build_closed();
    let port = serve_closed_server(&server, listener).await?;
    Ok((server, port))
}

/// Serves a closed endpoint's server on `listener`, joining [`ADMIN`] from a `listen` listener: it runs when the
/// server starts listening, before the first connection is accepted, so every client finds the user there. On a
/// cluster, the node that finds `admin` joined already (by another node) carries on.
pub async fn serve_closed_server(server: &Server, listener: TcpListener) -> Result<u16, ListenError> {
    server.on_listen(|server, _port| match server.join(ADMIN) {
        Ok(()) => {}
        Err(Error::JoinExistingUser) => tracing::info!("{ADMIN} is joined already"),
        Err(error) => tracing::error!(%error, "could not join {ADMIN}"),
    });
    emitter_axum::listen_on(server, listener).await
}

/// Makes an endpoint's `server` the node `node` of the cluster `cluster` on the Redis at `url`, before it listens.
/// The two endpoints are two clusters: `<name>` for the main one, `<name>-closed` for the closed one.
pub async fn join_cluster(
    server: &Server,
    url: &str,
    cluster: &str,
    node: &str,
    options: Options,
) -> Result<Node, emitter_redis::Error> {
    let cluster = Cluster::connect(url, cluster, options).await?;
    Node::start(server, cluster, node).await
}

fn with_contract(builder: ServerBuilder) -> Server {
    let server = builder.auth_timeout(AUTH_TIMEOUT).ping_interval(PING_INTERVAL).build();
    server.on_authenticate(authenticate);
    let replies = Replies::default();
    let waiting = replies.clone();
    server.on_join(move |user| waiting.event(Awaited::Join, &user));
    let waiting = replies.clone();
    server.on_unlink(move |user| waiting.event(Awaited::Unlink, &user));
    let waiting = replies.clone();
    server.on_leave(move |user| waiting.event(Awaited::Leave, &user));
    server.on_message(move |user, received| on_message(user, received, &replies));
    server
}

/// The event a server method's reply waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Awaited {
    Join,
    Unlink,
    Leave,
}

/// The replies to `test/kick`, `test/unlink` and `test/join` that wait for their method's event. On a node of a
/// cluster a method only queues its change, which is applied (its protocol messages sent, its event emitted) once
/// the cluster ordered it; in one process it is applied before the method returns. Either way the reply goes out from
/// the event's listener, after the action's own protocol messages, as the contract says.
#[derive(Clone, Default)]
struct Replies {
    next: Arc<AtomicU64>,
    waiting: Arc<Mutex<Vec<Waiting>>>,
}

struct Waiting {
    id: u64,
    event: Awaited,
    username: String,
    sender: String,
    reply: Message,
}

impl Replies {
    /// Makes `reply` wait for `event` of `username`; returns its id, for [`Replies::cancel`].
    fn wait(&self, event: Awaited, username: &str, sender: &str, reply: Message) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let waiting = Waiting {
            id,
            event,
            username: username.to_owned(),
            sender: sender.to_owned(),
            reply,
        };
        self.lock().push(waiting);
        id
    }

    fn cancel(&self, id: u64) {
        self.lock().retain(|waiting| waiting.id != id);
    }

    /// `event` happened to `user`: the first reply waiting for it goes out.
    fn event(&self, event: Awaited, user: &UserRef<'_>) {
        let found = {
            let mut waiting = self.lock();
            let at = waiting
                .iter()
                .position(|w| w.event == event && w.username == user.username());
            at.map(|at| waiting.remove(at))
        };
        if let Some(waiting) = found {
            reply_if_linked(user.server(), &waiting.sender, &waiting.reply);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        // A panic while holding the lock leaves the list as it was: still usable.
        self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The authentication rules, checked in order; the first match decides and no match accepts at once.
fn authenticate(user: UserRef<'_>, info: &AuthInfo, ctx: &AuthContext) {
    let username = user.username();
    match info.auth.as_deref() {
        Some("reject-me") => return ctx.reject("rejected by app"),
        Some("report-is-new") => return ctx.reject(format!("isNewUser={}", info.is_new_user)),
        _ => {}
    }
    if username.starts_with("throw") {
        // The reference sends a thrown error's text to the client. This server logs a panic's text and sends
        // `authentication failed`, so the text the contract promises is given to `reject` first: a reason given to
        // `reject` wins over a panic.
        ctx.reject("thrown by app");
        panic!("thrown by app");
    }
    if username.starts_with("slow") {
        ctx.mark_async(async {
            tokio::time::sleep(SHORT_AUTH).await;
            Ok::<(), String>(())
        });
    } else if username.starts_with("late") {
        ctx.mark_async(async {
            tokio::time::sleep(LATE_AUTH).await;
            Ok::<(), String>(())
        });
    } else if username.starts_with("deny") {
        let rejecter = ctx.clone();
        ctx.mark_async(async move {
            tokio::time::sleep(SHORT_AUTH).await;
            rejecter.reject("denied by app");
            Ok::<(), String>(())
        });
    } else if username.starts_with("fail") {
        ctx.mark_async(async {
            tokio::time::sleep(SHORT_AUTH).await;
            Err::<(), _>("failed by app")
        });
    }
}

/// `{type, payload?}`: the payload key is left out when there is none.
fn message(kind: &str, payload: Option<Value>) -> Message {
    match payload {
        Some(payload) => Message::with_payload(kind, payload),
        None => Message::new(kind),
    }
}

/// The custom messages of the contract. Replies go to the sender only, after the action's own protocol messages; a
/// sender that is no longer linked after its action gets none. Other types are ignored.
fn on_message(user: UserRef<'_>, received: &Message, replies: &Replies) {
    let (server, sender) = (user.server(), user.username());
    let payload = received.payload.clone();
    let reply = match received.kind.as_str() {
        "test/echo" => Some(message("test/echoed", payload)),
        "test/broadcast" | "test/broadcast-skip" => {
            let mut inner = json!({ "from": sender });
            if let Some(payload) = payload {
                inner["payload"] = payload;
            }
            let skip = (received.kind == "test/broadcast-skip").then_some(sender);
            if let Err(error) = server.broadcast(&message("test/broadcasted", Some(inner)), skip) {
                tracing::warn!(%error, "broadcast failed");
            }
            None
        }
        "test/kick" => act(replies, sender, payload, ("test/kicked-ok", Awaited::Leave), |u| {
            server.kick(u)
        }),
        "test/unlink" => act(replies, sender, payload, ("test/unlinked-ok", Awaited::Unlink), |u| {
            server.unlink(u)
        }),
        "test/join" => act(replies, sender, payload, ("test/joined-ok", Awaited::Join), |u| {
            server.join(u)
        }),
        "test/users" => match serde_json::to_value(server.users()) {
            Ok(users) => Some(message("test/users", Some(users))),
            Err(error) => Some(message("test/error", Some(Value::String(error.to_string())))),
        },
        other => {
            tracing::debug!(sender, kind = other, "ignored a message of another type");
            None
        }
    };
    if let Some(reply) = reply {
        reply_if_linked(server, sender, &reply);
    }
}

/// Sends `reply` to `sender`, unless it is no longer linked.
fn reply_if_linked(server: &Server, sender: &str, reply: &Message) {
    let still_linked = server.user(sender).is_some_and(|user| user.is_linked);
    if !still_linked {
        tracing::debug!(sender, kind = reply.kind, "no reply: the sender is no longer linked");
        return;
    }
    if let Err(error) = server.send(sender, reply) {
        tracing::warn!(sender, %error, "could not reply");
    }
}

/// Runs a kick, unlink or join on the username in `payload`. Its `ok` reply, with that username, waits for the
/// method's event (see [`Replies`]); a `test/error` is the reply at once.
fn act(
    replies: &Replies,
    sender: &str,
    payload: Option<Value>,
    (ok, event): (&str, Awaited),
    action: impl FnOnce(&str) -> Result<(), emitter_core::Error>,
) -> Option<Message> {
    let Some(Value::String(username)) = payload else {
        return Some(message("test/error", Some(Value::String(NOT_A_USERNAME.to_owned()))));
    };
    // Waiting before the call: in one process the event comes inside it.
    let reply = message(ok, Some(Value::String(username.clone())));
    let id = replies.wait(event, &username, sender, reply);
    match action(&username) {
        Ok(()) => None,
        Err(error) => {
            replies.cancel(id);
            Some(message("test/error", Some(Value::String(error.to_string()))))
        }
    }
}
