//! Krmx inside an axum app that has a life of its own: REST routes next to the WebSocket endpoint, one port, one
//! shared state.
//!
//! The Krmx endpoint is at `/krmx`, mounted with [`emitter_axum::layer`]. The handlers reach the Krmx server through
//! the app state (to list users, kick one, broadcast an announcement), and the Krmx listeners write app data that a
//! handler reads (a count of messages). [`mounting`] shows the other ways to mount the endpoint.

pub mod mounting;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use emitter_core::{Error, Server, User};
use serde::{Deserialize, Serialize};

use tokio::net::TcpListener;

/// What the handlers and the Krmx listeners share. Cheap to clone: a `Server` is a handle, the rest is behind `Arc`.
#[derive(Clone)]
pub struct AppState {
    /// The Krmx server.
    pub krmx: Server,
    /// Application messages received from linked users, counted by a Krmx listener.
    pub messages: Arc<AtomicU64>,
}

/// Builds the Krmx server (endpoint at `/krmx`) and the state around it.
pub fn build() -> AppState {
    let krmx = Server::builder().path("/krmx").build();
    let messages = Arc::new(AtomicU64::new(0));
    let counter = messages.clone();
    krmx.on_message(move |u, m| {
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(username = %u, kind = m.kind, "message");
    });
    AppState { krmx, messages }
}

/// The REST API, without the Krmx endpoint.
pub fn api(state: AppState) -> Router {
    Router::new()
        .route("/api/health", get(|| async { "ok" }))
        .route("/api/users", get(users))
        .route("/api/users/{username}", delete(kick))
        .route("/api/announcements", post(announce))
        .route("/api/stats", get(stats))
        .with_state(state)
}

/// The whole app: the REST API with the Krmx endpoint layered over it. A request to `/krmx` goes to Krmx; every other
/// request passes through to the API.
pub fn app(state: AppState) -> Router {
    let krmx = emitter_axum::layer(&state.krmx);
    api(state).layer(krmx)
}

async fn users(State(state): State<AppState>) -> Json<Vec<User>> {
    Json(state.krmx.users())
}

async fn kick(State(state): State<AppState>, Path(username): Path<String>) -> StatusCode {
    match state.krmx.kick(&username) {
        Ok(()) => StatusCode::NO_CONTENT,
        Err(Error::KickUnknownUser) => StatusCode::NOT_FOUND,
        Err(error) => {
            tracing::warn!(username, %error, "could not kick");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

/// The body of `POST /api/announcements`.
#[derive(Debug, Deserialize)]
pub struct Announcement {
    /// What to tell every linked user.
    pub text: String,
}

async fn announce(State(state): State<AppState>, Json(announcement): Json<Announcement>) -> StatusCode {
    let text = &announcement.text;
    match state.krmx.broadcast_payload("app/announcement", text, None) {
        Ok(_) => StatusCode::ACCEPTED,
        Err(error) => {
            tracing::warn!(%error, "could not broadcast");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

/// The body of `GET /api/stats`.
#[derive(Debug, Serialize)]
pub struct Stats {
    /// How many users exist, linked or not.
    pub users: usize,
    /// How many application messages linked users have sent.
    pub messages: u64,
}

async fn stats(State(state): State<AppState>) -> Json<Stats> {
    Json(Stats {
        users: state.krmx.users().len(),
        messages: state.messages.load(Ordering::Relaxed),
    })
}

/// Serves the app on `listener` until the Krmx server closes: marks the Krmx server listening, runs `axum::serve`
/// with the Krmx server's `closing()` as its graceful-shutdown signal, and returns once the Krmx server has closed
/// (every user left, every WebSocket closed) and the in-flight HTTP requests are done.
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    let port = listener.local_addr()?.port();
    let krmx = state.krmx.clone();
    let closed = krmx.wait_for_close(); // registered now, so a close that happens early still counts
    emitter_axum::mark_listening(&krmx, port).map_err(std::io::Error::other)?;
    axum::serve(listener, app(state))
        .with_graceful_shutdown(krmx.closing())
        .await?;
    closed.await.map_err(std::io::Error::other)
}
