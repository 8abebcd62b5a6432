//! The chat of `examples/chat` as one node of a cluster on Redis: run several of these processes against one Redis,
//! connect to any of them, and every user talks to every other user as if there were one server.
//!
//! The chat itself is the same as in `examples/chat` (which keeps its whole program in one `main.rs`, so it has no
//! library to share): a linked user's `chat/message` whose payload is a string goes to every linked user, the sender
//! included, as `{"type":"chat/message","payload":{"username":…,"text":…}}`. What is new is [`start`]: the server
//! becomes a node of the cluster ([`Node::start`]) before it listens. The page is the chat's own `index.html`.
#![deny(missing_docs)]

use std::time::Duration;

use axum::response::Html;
use axum::routing::get;
use axum::Router;
use emitter_core::{Message, Server, UserRef};
use emitter_redis::{Cluster, Node, Options};
use serde_json::json;
use tokio::net::TcpListener;

/// The message type clients send and receive.
pub const CHAT_MESSAGE: &str = "chat/message";

/// How long a user whose page went away may take to link again (on any node) before it leaves: without it, every
/// closed tab would stay a user of the cluster for good. The cluster keeps the time, so it runs out even if the node
/// the user was on is gone.
pub const GRACE_PERIOD: Duration = Duration::from_secs(60);

/// Builds the chat server, with the Krmx endpoint at `/ws` and the relay registered. Nothing here knows about the
/// cluster: the same listeners serve one process or a node of many.
pub fn build() -> Server {
    let server = Server::builder().path("/ws").grace_period(GRACE_PERIOD).build();
    server.on_message(relay_chat);
    // In a cluster these run once per event, on the node that made the change: the node the user linked on, or the
    // node whose server method caused it. The other nodes apply the event without running them.
    server.on_join(|u| tracing::info!(username = %u, "joined"));
    server.on_leave(|u| tracing::info!(username = %u, "left"));
    server
}

/// Relays a `chat/message` with a string payload to every linked user, the sender included: on this node, and, through
/// Redis, on every other node.
fn relay_chat(user: UserRef<'_>, message: &Message) {
    if message.kind != CHAT_MESSAGE {
        tracing::debug!(username = %user, kind = message.kind, "ignored a message of another type");
        return;
    }
    let Some(text) = message.payload.as_ref().and_then(|payload| payload.as_str()) else {
        tracing::debug!(username = %user, "ignored a chat message whose payload is not a string");
        return;
    };
    let said = json!({ "username": user, "text": text });
    if let Err(error) = user.server().broadcast_payload(CHAT_MESSAGE, &said, None) {
        tracing::warn!(%error, "could not relay a chat message");
    }
}

/// The chat's page, the same file as `examples/chat` serves: it connects to `/ws` on whichever node served it.
const PAGE: &str = include_str!("../../chat/index.html");

/// The web app: the page at `/`, the Krmx endpoint at the server's path (`/ws`), and for operations `GET /health`
/// (200 while this node listens and holds its cluster lease, 503 with the reason otherwise) and `GET /metrics`.
pub fn app(server: &Server) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .merge(emitter_axum::router(server))
        .merge(emitter_axum::health_route(server))
        .merge(emitter_axum::metrics_route(server))
}

/// Makes `server` the node `node_id` of the cluster `cluster_name` on the Redis at `redis_url`, then serves the app
/// on `listener`. Returns the node (await [`Node::stopped`] after closing the server) and the port it serves on.
pub async fn start(
    server: &Server,
    redis_url: &str,
    cluster_name: &str,
    node_id: &str,
    listener: TcpListener,
) -> Result<(Node, u16), Box<dyn std::error::Error>> {
    let cluster = Cluster::connect(redis_url, cluster_name, Options::default()).await?;
    // A node before it listens: from now on Redis orders this server's links and unlinks with every other node's,
    // its users() are the cluster's, and its broadcasts reach users linked on any node.
    let node = Node::start(server, cluster, node_id).await?;
    let port = emitter_axum::serve(server, listener, app(server)).await?;
    Ok((node, port))
}
