//! The WebSocket handshake (HTTP/1.1, RFC 6455), done here rather than by axum's `WebSocketUpgrade` so that the socket
//! under each WebSocket is ours: see `burst.rs` for why its writes are gathered the way they are.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use emitter_core::config::MAX_HANDSHAKE_HEADER_BYTES;
use emitter_core::transport::Host;
use emitter_core::{Handshake, Server};
use hyper::upgrade::OnUpgrade;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::connection;

/// Bytes read from a socket at a time. Krmx messages from clients are small; a bigger one is read in several reads.
/// (The WebSocket layer zero-fills its whole read buffer on every read, so its 128 KiB default would be resident for
/// every connection.)
const READ_BUFFER: usize = 1024;

/// Answers a WebSocket handshake on the Krmx endpoint and serves the connection on a task of its own.
pub(crate) async fn upgrade(State(server): State<Server>, request: Request) -> Response {
    let host = server.host();
    if let Some(why) = host.refusal() {
        // Refused before the upgrade: no socket task, no buffers. `connect` repeats the check after the upgrade.
        tracing::warn!(reason = why, "incoming connection refused with 503");
        host.record_refusal(why);
        let status = StatusCode::SERVICE_UNAVAILABLE;
        return Refusal { status, why }.into_response();
    }
    let (mut parts, _body) = request.into_parts();
    if let Some(refusal) = origin_refusal(&host, &parts) {
        return refusal.into_response();
    }
    let key = match handshake_key(&parts.method, &parts.headers) {
        Ok(key) => key,
        Err(refusal) => return refusal.into_response(),
    };
    let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
        return (
            StatusCode::UPGRADE_REQUIRED,
            "this connection cannot be upgraded to a WebSocket",
        )
            .into_response();
    };
    let Some(handshake) = handshake(&parts) else {
        let why = "the request's headers are too large";
        return Refusal {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            why,
        }
        .into_response();
    };
    let config = server.config();
    let query_ok = config.query_params_hold(parts.uri.query());
    let max = config.max_message_size();
    let websocket = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // No buffer of tungstenite's own: every frame goes straight to the burst writer.
        .write_buffer_size(0)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let opening = connection::Opening {
        on_upgrade,
        websocket,
        query_ok,
        handshake,
    };
    tokio::spawn(connection::run(host, Box::new(opening)));
    let accept = derive_accept_key(key.as_bytes());
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// The 403 for an upgrade from a browser page of an origin that is not allowed (`allowed_origins`), if it is one;
/// logged and counted.
fn origin_refusal(host: &Host, parts: &Parts) -> Option<Refusal> {
    let text = |value: &HeaderValue| String::from_utf8_lossy(value.as_bytes()).into_owned();
    let origin = parts.headers.get(header::ORIGIN).map(text);
    let host_header = match parts.headers.get(header::HOST) {
        Some(value) => Some(text(value)),
        None => parts.uri.authority().map(|authority| authority.as_str().to_owned()),
    };
    let why = host.origin_refusal(origin.as_deref(), host_header.as_deref())?;
    // The origin is the client's to choose: cut short, and quoted by the log's formatter.
    let origin: String = origin.unwrap_or_default().chars().take(128).collect();
    tracing::warn!(origin, "incoming connection refused with 403: {why}");
    host.record_refusal(why);
    Some(Refusal {
        status: StatusCode::FORBIDDEN,
        why,
    })
}

/// What the request said, for the `authenticate` listeners; `None` when its headers are over what a connection may
/// keep.
fn handshake(parts: &Parts) -> Option<Handshake> {
    let size: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if size > MAX_HANDSHAKE_HEADER_BYTES {
        return None;
    }
    let mut handshake = Handshake::new(parts.uri.path(), parts.uri.query());
    for (name, value) in &parts.headers {
        handshake = handshake.with_header(name.as_str(), &String::from_utf8_lossy(value.as_bytes()));
    }
    // Present when the app is served with `into_make_service_with_connect_info::<SocketAddr>()`, as `listen` does.
    if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        handshake = handshake.with_peer(*peer);
    }
    Some(handshake)
}

/// Why a request is not a WebSocket handshake this server takes: the status and a reason for the response body.
#[derive(Debug, PartialEq, Eq)]
struct Refusal {
    status: StatusCode,
    why: &'static str,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.why).into_response();
        if self.status == StatusCode::UPGRADE_REQUIRED {
            // RFC 6455 4.4: say which version this server speaks.
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        response
    }
}

/// The client's `Sec-WebSocket-Key`, or why the request is refused.
fn handshake_key(method: &Method, headers: &HeaderMap) -> Result<HeaderValue, Refusal> {
    let refuse = |status: StatusCode, why: &'static str| Err(Refusal { status, why });
    if method != Method::GET {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "a WebSocket handshake is a GET request");
    }
    if !has_token(headers, header::CONNECTION, "upgrade") || !has_token(headers, header::UPGRADE, "websocket") {
        return refuse(StatusCode::UPGRADE_REQUIRED, "this endpoint speaks WebSocket only");
    }
    if !has_token(headers, header::SEC_WEBSOCKET_VERSION, "13") {
        return refuse(StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 only");
    }
    match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(key) => Ok(key.clone()),
        None => refuse(StatusCode::BAD_REQUEST, "the Sec-WebSocket-Key header is missing"),
    }
}

/// Whether a comma-separated header lists `token` (case-insensitively).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|value| value.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(HeaderName, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (name.clone(), HeaderValue::from_str(value).unwrap()))
            .collect()
    }

    #[test]
    fn a_well_formed_handshake_gives_its_key() {
        let good = headers(&[
            (header::CONNECTION, "keep-alive, Upgrade"),
            (header::UPGRADE, "websocket"),
            (header::SEC_WEBSOCKET_VERSION, "13"),
            (header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        assert_eq!(handshake_key(&Method::GET, &good).unwrap(), "dGhlIHNhbXBsZSBub25jZQ==");
        // RFC 6455's own example.
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        let plain = headers(&[]);
        let status = |method: Method, headers: &HeaderMap| handshake_key(&method, headers).unwrap_err().status;
        assert_eq!(status(Method::GET, &plain), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(status(Method::POST, &plain), StatusCode::METHOD_NOT_ALLOWED);
        let old = headers(&[
            (header::CONNECTION, "upgrade"),
            (header::UPGRADE, "websocket"),
            (header::SEC_WEBSOCKET_VERSION, "8"),
        ]);
        let refusal = handshake_key(&Method::GET, &old).unwrap_err().into_response();
        assert_eq!(refusal.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(refusal.headers()[header::SEC_WEBSOCKET_VERSION], "13");
        let keyless = headers(&[
            (header::CONNECTION, "upgrade"),
            (header::UPGRADE, "websocket"),
            (header::SEC_WEBSOCKET_VERSION, "13"),
        ]);
        assert_eq!(status(Method::GET, &keyless), StatusCode::BAD_REQUEST);
    }
}
