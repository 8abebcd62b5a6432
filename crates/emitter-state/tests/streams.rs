//! The Stream model over the core, without sockets: typed events, who the dispatcher is, the exact echo, the
//! history a linking user gets, and its bound.

mod support;

use std::sync::{Arc, OnceLock};

use emitter_core::{Message, Server};
use emitter_state::{Error, Stream, StreamModel};
use serde::Deserialize;
use serde_json::{json, Value};
use support::{listening, Conn};

#[derive(Debug, Default, Clone, PartialEq)]
struct Counter {
    value: i64,
    claimed_by: Option<String>,
}

#[derive(Deserialize)]
struct Increment {
    by: i64,
}

fn counter() -> StreamModel<Counter> {
    StreamModel::new(Counter::default())
        .when(
            "increment",
            |counter: &mut Counter, dispatcher: &str, Increment { by }| {
                if counter.claimed_by.as_deref().is_some_and(|owner| owner != dispatcher) {
                    return Err("claimed by someone else");
                }
                counter.value += by;
                Ok(())
            },
        )
        .when("claim", |counter: &mut Counter, dispatcher: &str, (): ()| {
            if counter.claimed_by.is_some() {
                return Err("already claimed");
            }
            counter.claimed_by = Some(dispatcher.to_owned());
            Ok(())
        })
}

fn append(domain: &str, dispatcher: &str, event: Value) -> Value {
    json!({"type": "stream/append", "payload": {"domain": domain, "dispatcher": dispatcher, "event": event}})
}

/// An `increment` event of the counter, by `by` (an integer, or something that is not one).
fn increment(by: impl Into<Value>) -> Value {
    json!({"type": "increment", "payload": {"by": by.into()}})
}

/// A listening server that serves `model` as `counter`.
fn served(model: StreamModel<Counter>) -> (Server, Stream<Counter>) {
    let server = listening();
    let stream = model.register(&server, "counter");
    (server, stream)
}

#[test]
fn an_accepted_event_goes_to_everyone_with_the_sender_as_dispatcher() {
    let (server, stream) = served(counter());
    let (mut alice, mut bob) = (Conn::settled(&server, "alice"), Conn::settled(&server, "bob"));

    // Whatever the client claims, the dispatcher is who sent it (the reference client sends 'self' when unlinked).
    let event = increment(2);
    alice.send(append("counter", "mallory", event.clone()));
    let echoed = append("counter", "alice", event);
    assert_eq!(alice.read_app(), std::slice::from_ref(&echoed));
    assert_eq!(bob.read_app(), [echoed]);
    assert_eq!(stream.with_state(|c| c.value), Ok(2));
    assert_eq!(stream.history()[0].dispatcher, "alice");
}

#[test]
fn the_event_is_echoed_exactly_as_sent_member_order_included() {
    // The reference client hashes the serialized echo to find its optimistic copy, so `type` before `payload` and
    // `z` before `a` must come back that way, and members it does not know must come back too.
    let server = listening();
    let _stream = StreamModel::new(0)
        .when("note", |_: &mut i32, _: &str, _: Value| {})
        .register(&server, "notes");
    let mut alice = Conn::settled(&server, "alice");
    let event = r#"{"type":"note","payload":{"z":1,"a":{"y":[1.5,"x"],"b":null}},"extra":true}"#;
    alice.send_text(&format!(
        r#"{{"type":"stream/append","payload":{{"domain":"notes","dispatcher":"self","event":{event}}}}}"#
    ));
    alice.read();
    let echo = alice.raw.last().unwrap();
    assert!(echo.contains(&format!(r#""event":{event}"#)), "{echo}");
}

#[test]
fn a_linking_user_gets_the_history_after_its_snapshot_and_then_the_new_events() {
    let (server, stream) = served(counter());
    let mut alice = Conn::linked(&server, "alice");
    alice.send(append("counter", "alice", json!({"type": "claim"})));
    alice.send(append("counter", "alice", increment(5)));
    alice.read();

    let mut bob = Conn::linked(&server, "bob");
    let frames = bob.read();
    let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "krmx/accepted",
            "krmx/joined",
            "krmx/linked",
            "krmx/joined",
            "krmx/linked",
            "stream/append",
            "stream/append"
        ]
    );
    assert_eq!(frames[5], append("counter", "alice", json!({"type": "claim"})));

    // Bob may not increment alice's claimed counter: refused, sent to no one, not in the history.
    bob.send(append("counter", "bob", increment(1)));
    assert_eq!(bob.read_app(), Vec::<Value>::new());
    assert_eq!(alice.read_app(), Vec::<Value>::new());
    assert_eq!(stream.len(), 2);
    assert_eq!(stream.stats().rejected, 1);
}

#[test]
fn unknown_types_unfit_payloads_and_malformed_appends_are_dropped_and_counted() {
    let (server, stream) = served(counter());
    let mut alice = Conn::settled(&server, "alice");
    alice.send(append("counter", "alice", json!({"type": "decrement"})));
    alice.send(append("counter", "alice", increment("1")));
    alice.send(append("counter", "alice", json!({"type": "increment"})));
    alice.send(append("counter", "alice", json!("increment")));
    alice.send(json!({"type": "stream/append", "payload": {"domain": "counter"}}));
    // Another domain's appends are not this stream's business, and are not counted.
    alice.send(append(
        "other",
        "alice",
        json!({"type": "increment", "payload": {"by": 1}}),
    ));
    assert_eq!(alice.read_app(), Vec::<Value>::new());
    let stats = stream.stats();
    assert_eq!(
        (stats.unknown, stats.invalid, stats.malformed, stats.accepted),
        (1, 2, 2, 0)
    );
}

#[test]
fn a_full_history_refuses_new_events_rather_than_forget_old_ones() {
    let (server, stream) = served(counter().max_events(3));
    let mut alice = Conn::settled(&server, "alice");
    for _ in 0..5 {
        alice.send(append("counter", "alice", increment(1)));
    }
    assert_eq!(alice.read_app().len(), 3);
    assert_eq!(stream.with_state(|c| c.value), Ok(3));
    assert_eq!(stream.stats().full, 2);
    assert_eq!(
        stream.append(&server, "server", &Message::with_payload("increment", json!({"by": 1}))),
        Err(Error::Full)
    );

    let bytes = counter().max_history_bytes(100).register(&server, "small");
    let event = json!({"type": "increment", "payload": {"by": 1}}); // 36 bytes
    for _ in 0..3 {
        alice.send(append("small", "alice", event.clone()));
    }
    assert_eq!(bytes.len(), 2);
}

#[test]
fn a_relink_gets_the_whole_history_again_and_nothing_twice() {
    let (server, _stream) = served(counter());
    let mut alice = Conn::linked(&server, "alice");
    alice.send(append("counter", "alice", increment(1)));
    alice.send(json!({"type": "krmx/unlink"}));
    alice.read();
    alice.link("alice");
    let appends: Vec<Value> = alice.read_app();
    assert_eq!(appends.len(), 1);
    alice.send(append("counter", "alice", increment(1)));
    assert_eq!(alice.read_app().len(), 1);
}

#[test]
fn a_server_side_append_and_a_panicking_handler() {
    let server = listening();
    let stream = StreamModel::new(Vec::<String>::new())
        .when("say", |lines: &mut Vec<String>, dispatcher: &str, text: String| {
            lines.push(format!("{dispatcher}: {text}"));
        })
        .when("crash", |_: &mut Vec<String>, _: &str, (): ()| -> () {
            panic!("a bug")
        })
        .register(&server, "chat");
    let mut alice = Conn::settled(&server, "alice");
    stream
        .append(&server, "host", &Message::with_payload("say", "hi"))
        .unwrap();
    assert_eq!(
        alice.read_app(),
        [append("chat", "host", json!({"type": "say", "payload": "hi"}))]
    );
    alice.send(append("chat", "alice", json!({"type": "crash"})));
    assert_eq!(alice.read_app(), Vec::<Value>::new());
    assert_eq!(stream.stats().panicked, 1);
    // A handler that calls back into its own stream gets Busy instead of a deadlock.
    let itself: Arc<OnceLock<Stream<u32>>> = Arc::default();
    let me = itself.clone();
    let selfish = StreamModel::new(0u32)
        .when("peek", move |_: &mut u32, _: &str, (): ()| match me.get() {
            Some(stream) => stream.with_state(|n| *n).map(|_| ()),
            None => Ok(()),
        })
        .register(&server, "selfish");
    let _ = itself.set(selfish.clone());
    assert_eq!(
        selfish.append(&server, "a", &Message::new("peek")),
        Err(Error::Rejected {
            kind: "peek".into(),
            reason: Error::Busy.to_string()
        })
    );
}

#[test]
fn a_full_default_history_fits_a_linking_users_queue_on_a_default_server() {
    // Nothing reads the connection while its catch-up is queued: the worst case for the server's outbound_queue.
    let server = emitter_core::Server::new();
    server.host().start().unwrap();
    server.host().listening(4321).unwrap();
    let stream = counter().register(&server, "counter");
    for _ in 0..emitter_state::DEFAULT_MAX_EVENTS {
        stream
            .append(&server, "x", &Message::with_payload("increment", json!({"by": 1})))
            .unwrap();
    }
    let mut late = Conn::linked(&server, "late");
    assert_eq!(late.read_app().len(), emitter_state::DEFAULT_MAX_EVENTS);
}
