//! A stream over a real WebSocket on loopback: the echo of a client's event is the event's text as sent, members in
//! the order sent, live and in the history a later user gets. (serde_json's maps sort their keys: without the text the
//! server keeps, `z` would come back after `a`, and the reference client would not recognize its own event.)

use emitter_state::StreamModel;
use emitter_testing::{listen, RawClient, TIMEOUT};
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// The next text frame of type `stream/append`, as text.
async fn next_append(ws: &mut emitter_testing::WsStream) -> String {
    loop {
        let frame = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("a stream/append in time")
            .expect("the connection open")
            .expect("a frame");
        if let WsMessage::Text(text) = frame {
            if text.starts_with(r#"{"type":"stream/append""#) {
                return text.to_string();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_event_is_echoed_with_its_members_in_the_order_sent() {
    let server = emitter_core::Server::new();
    let notes = StreamModel::new(0)
        .when("note", |n: &mut i32, _: &str, _: Value| *n += 1)
        .register(&server, "notes");
    let port = listen(&server).await;
    let mut alice = RawClient::link_and_settle(port, "alice").await;

    // Members out of sorted order at every level, spacing, a number as written, and a member the model ignores.
    let event = r#"{"type":"note","payload":{"z":1,"a":{"y":[1.50,"x"],"b":null}},"extra":true,"b":2}"#;
    alice
        .send_raw(&format!(
            r#"{{"payload":{{"event":{event},"dispatcher":"self","domain":"notes"}},"type":"stream/append"}}"#
        ))
        .await;
    let mut ws = alice.into_inner();
    let echo = next_append(&mut ws).await;
    assert_eq!(
        echo,
        format!(r#"{{"type":"stream/append","payload":{{"domain":"notes","dispatcher":"alice","event":{event}}}}}"#)
    );
    assert_eq!(notes.with_state(|n| *n), Ok(1));

    // The history a user who links later gets is the same text.
    let bob = RawClient::link_as(port, "bob").await;
    let mut ws = bob.into_inner();
    assert_eq!(next_append(&mut ws).await, echo);
    server.close().await.unwrap();
}
