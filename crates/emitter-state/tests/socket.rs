//! A stream over a real WebSocket on loopback: the echo of a client's event is the event's text as sent, members in
//! the order sent, live and in the history a later user gets. (serde_json's maps sort their keys: without the text the
//! server keeps, `z` would come back after `a`, and the reference client would not recognize its own event.) And a
//! compacting stream over a real WebSocket: five times its limit of events, every one accepted, and a late user's
//! catch-up that folds to the server's state.

use emitter_state::{AtLimit, StreamModel, SNAPSHOT_DISPATCHER};
use emitter_testing::{listen, RawClient, Receive, TIMEOUT};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[derive(Deserialize)]
struct Increment {
    by: i64,
}

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

/// The next `stream/append` a client got, as (dispatcher, event); other frames are skipped.
async fn next_event(client: &mut RawClient) -> (String, Value) {
    loop {
        let frame = client.recv().await;
        if frame["type"] == "stream/append" {
            let payload = &frame["payload"];
            return (
                payload["dispatcher"].as_str().unwrap().to_owned(),
                payload["event"].clone(),
            );
        }
    }
}

/// A client's fold of the counter below: a snapshot replaces the count, an increment adds to it.
fn fold(count: &mut i64, (dispatcher, event): &(String, Value)) {
    match event["type"].as_str() {
        Some("snapshot") => {
            assert_eq!(dispatcher, SNAPSHOT_DISPATCHER);
            *count = event["payload"].as_i64().unwrap();
        }
        Some("increment") => *count += event["payload"]["by"].as_i64().unwrap(),
        other => panic!("an unexpected event {other:?}"),
    }
}

fn increment(by: i64) -> Value {
    json!({"type": "stream/append", "payload": {"domain": "counter", "dispatcher": "self",
        "event": {"type": "increment", "payload": {"by": by}}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacting_stream_takes_five_times_its_limit_and_a_late_user_folds_the_same_state() {
    const LIMIT: usize = 1_000;
    const EVENTS: usize = 5_000;
    const BATCH: usize = 250;
    // A default server: its outbound_queue (4,096) holds a catch-up of LIMIT events, not one of EVENTS.
    let server = emitter_core::Server::new();
    let counter = StreamModel::new(0_i64)
        .when("increment", |count: &mut i64, _: &str, Increment { by }| *count += by)
        .compaction("snapshot", |count: &i64| *count)
        .max_events(LIMIT)
        .at_limit(AtLimit::Compact)
        .register(&server, "counter");
    let port = listen(&server).await;
    let (mut alice, mut bob) = RawClient::link_pair(port, "alice", "bob").await;

    // Bob is linked throughout: the compactions send him nothing, and his fold of the live events stays the server's.
    let (mut alice_count, mut bob_count) = (0, 0);
    for _ in 0..EVENTS / BATCH {
        for _ in 0..BATCH {
            alice.send(increment(1)).await;
        }
        for _ in 0..BATCH {
            let event = next_event(&mut alice).await;
            assert_eq!(event.0, "alice");
            fold(&mut alice_count, &event);
            let event = next_event(&mut bob).await;
            assert_eq!(event.0, "alice", "a linked user is sent no snapshot");
            fold(&mut bob_count, &event);
        }
    }
    assert_eq!((alice_count, bob_count), (5_000, 5_000));
    assert_eq!(counter.with_state(|count| *count), Ok(5_000));
    let stats = counter.stats();
    assert_eq!((stats.accepted, stats.full), (EVENTS as u64, 0));
    assert!(counter.len() <= LIMIT);

    // Carol links late: her catch-up is the snapshot and the events since, within the limit, and folds to the same
    // state. The increment by 100 marks its end: she gets it once, in her catch-up or live after it.
    let mut carol = RawClient::link_and_settle(port, "carol").await;
    alice.send(increment(100)).await;
    let (mut carol_count, mut caught_up) = (0, Vec::new());
    loop {
        let event = next_event(&mut carol).await;
        fold(&mut carol_count, &event);
        let last = event.1["payload"]["by"] == 100;
        caught_up.push(event);
        if last {
            break;
        }
    }
    assert_eq!(caught_up[0].0, SNAPSHOT_DISPATCHER);
    assert!(caught_up.len() <= LIMIT + 1, "{} events", caught_up.len());
    assert_eq!(carol_count, 5_100);

    // And events keep being accepted, reaching everyone once.
    alice.send(increment(7)).await;
    for client in [&mut alice, &mut bob] {
        let mut count = 0;
        fold(&mut count, &next_event(client).await); // the 100
        fold(&mut count, &next_event(client).await); // the 7
        assert_eq!(count, 107);
    }
    fold(&mut carol_count, &next_event(&mut carol).await);
    assert_eq!(carol_count, 5_107);
    assert_eq!(counter.with_state(|count| *count), Ok(5_107));
    server.close().await.unwrap();
}
