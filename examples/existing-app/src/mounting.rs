//! Three ways to put the Krmx endpoint into an axum app. Each takes the app's REST routes from [`api`].

use axum::Router;

use crate::{api, AppState};

/// Merged: the endpoint is one more route of the app, at the Krmx server's path (`/krmx`).
pub fn merged(state: AppState) -> Router {
    let krmx = emitter_axum::router(&state.krmx);
    api(state).merge(krmx)
}

/// Nested: the endpoint lives under a prefix, here `/realtime`, so at `/realtime/krmx`.
pub fn nested(state: AppState) -> Router {
    let krmx = emitter_axum::router(&state.krmx);
    api(state).nest("/realtime", krmx)
}

/// Layered: a tower layer answers requests for `/krmx` and passes every other request to the app. This works around
/// any service, not only an axum `Router`; [`app`](crate::app) does this.
pub fn layered(state: AppState) -> Router {
    let krmx = emitter_axum::layer(&state.krmx);
    api(state).layer(krmx)
}
