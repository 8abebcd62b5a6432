//! The Stream model over the core, without sockets: typed events, who the dispatcher is, the exact echo, the
//! history a linking user gets, and its bound.

mod support;

use std::sync::{Arc, OnceLock};

use emitter_core::{Message, Server};
use emitter_state::{AtLimit, Error, Stream, StreamModel};
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

// Long-lived streams: compaction and rotation.

/// The counter with a snapshot event `snapshot` whose payload is the state as a client holds it.
fn compacting() -> StreamModel<Counter> {
    counter().compaction(
        "snapshot",
        |counter: &Counter| json!({"value": counter.value, "claimedBy": counter.claimed_by}),
    )
}

/// What a client folds from the `stream/append`s it got: the counter's value, and who claimed it. A snapshot replaces
/// the state, as the client's handler of `snapshot` does; the other events run the counter's rules.
fn fold(events: &[(String, Value)]) -> (i64, Option<String>) {
    let mut state = (0, None);
    for (dispatcher, event) in events {
        match event["type"].as_str() {
            Some("snapshot") => {
                assert_eq!(dispatcher, emitter_state::SNAPSHOT_DISPATCHER);
                state = (
                    event["payload"]["value"].as_i64().unwrap(),
                    event["payload"]["claimedBy"].as_str().map(str::to_owned),
                );
            }
            Some("claim") => {
                state.1.get_or_insert_with(|| dispatcher.clone());
            }
            Some("increment") => state.0 += event["payload"]["by"].as_i64().unwrap(),
            other => panic!("an unexpected event {other:?}"),
        }
    }
    state
}

/// The events of `domain` a connection got, as (dispatcher, event), from its frames.
fn events_of(frames: &[Value], domain: &str) -> Vec<(String, Value)> {
    frames
        .iter()
        .filter(|f| f["type"] == "stream/append" && f["payload"]["domain"] == domain)
        .map(|f| {
            let payload = &f["payload"];
            (
                payload["dispatcher"].as_str().unwrap().to_owned(),
                payload["event"].clone(),
            )
        })
        .collect()
}

#[test]
fn at_the_limit_a_compacting_stream_folds_its_history_into_a_snapshot_and_goes_on() {
    let (server, stream) = served(compacting().max_events(3).at_limit(AtLimit::Compact));
    let mut alice = Conn::settled(&server, "alice");
    alice.send(append("counter", "alice", json!({"type": "claim"})));
    for by in 1..=10 {
        alice.send(append("counter", "alice", increment(by)));
    }
    // Every event is accepted and echoed; nothing else is sent for the compactions (alice's state is already theirs).
    let echoes = events_of(&alice.read_app(), "counter");
    assert_eq!(echoes.len(), 11);
    assert!(echoes.iter().all(|(dispatcher, _)| dispatcher == "alice"));
    assert_eq!(fold(&echoes), (55, Some("alice".to_owned())));
    let stats = stream.stats();
    assert_eq!((stats.accepted, stats.full), (11, 0));

    // The history: the snapshot, then the events since, never more than the bound.
    let history = stream.history();
    assert!(history.len() <= 3, "{history:?}");
    assert_eq!(history[0].dispatcher, emitter_state::SNAPSHOT_DISPATCHER);
    assert_eq!(history[0].event["type"], "snapshot");

    // A user who links late folds the same state from a catch-up that fits the bound.
    let mut bob = Conn::linked(&server, "bob");
    let catch_up = events_of(&bob.read(), "counter");
    assert_eq!(catch_up.len(), history.len());
    assert_eq!(fold(&catch_up), (55, Some("alice".to_owned())));
    // And the claim survived the compaction on the server too: bob may not increment alice's counter.
    bob.send(append("counter", "bob", increment(1)));
    assert_eq!(bob.read_app(), Vec::<Value>::new());
    assert_eq!(stream.stats().rejected, 1);
}

#[test]
fn the_default_policy_still_refuses_at_the_limit_even_with_a_snapshot_event() {
    let (server, stream) = served(compacting().max_events(2));
    for _ in 0..2 {
        stream
            .append(&server, "x", &Message::with_payload("increment", json!({"by": 1})))
            .unwrap();
    }
    assert_eq!(
        stream.append(&server, "x", &Message::with_payload("increment", json!({"by": 1}))),
        Err(Error::Full)
    );
    assert_eq!(stream.len(), 2);
    // Compacting on demand makes room.
    stream.compact().unwrap();
    assert_eq!(stream.len(), 1);
    stream
        .append(&server, "x", &Message::with_payload("increment", json!({"by": 1})))
        .unwrap();
    assert_eq!(stream.with_state(|c| c.value), Ok(3));
}

#[test]
fn a_snapshot_that_alone_fills_the_bytes_bound_refuses_the_event() {
    let huge = counter()
        .compaction("snapshot", |_: &Counter| "x".repeat(200))
        .max_history_bytes(100)
        .at_limit(AtLimit::Compact);
    let (server, stream) = served(huge);
    let event = Message::with_payload("increment", json!({"by": 1})); // 36 bytes
    stream.append(&server, "x", &event).unwrap();
    stream.append(&server, "x", &event).unwrap();
    assert_eq!(stream.append(&server, "x", &event), Err(Error::Full));
    assert_eq!(stream.compact(), Err(Error::Full));
    assert_eq!(stream.rotate(&server, Counter::default()), Err(Error::Full));
    // Not compacted into a history over its bound: the history is as it was.
    assert_eq!((stream.len(), stream.with_state(|c| c.value)), (2, Ok(2)));
    assert_eq!(stream.stats().full, 1);
}

#[test]
fn compact_and_rotate_need_a_snapshot_event() {
    let (server, stream) = served(counter());
    stream
        .append(&server, "x", &Message::with_payload("increment", json!({"by": 1})))
        .unwrap();
    assert_eq!(stream.compact(), Err(Error::NoSnapshot));
    assert_eq!(stream.rotate(&server, Counter::default()), Err(Error::NoSnapshot));
    assert_eq!((stream.len(), stream.with_state(|c| c.value)), (1, Ok(1)));
}

#[test]
#[should_panic(expected = "AtLimit::Compact needs a snapshot event")]
fn compacting_at_the_limit_without_a_snapshot_event_is_a_definition_mistake() {
    let _ = counter().at_limit(AtLimit::Compact).register(&listening(), "counter");
}

#[test]
#[should_panic(expected = "type increment already has a handler")]
fn the_snapshot_type_is_not_an_event_type_of_the_app() {
    let _ = counter().compaction("increment", |c: &Counter| c.value);
}

#[test]
fn a_client_cannot_append_a_snapshot_event() {
    let (server, stream) = served(compacting());
    let mut alice = Conn::settled(&server, "alice");
    alice.send(append(
        "counter",
        "alice",
        json!({"type": "snapshot", "payload": {"value": 1000, "claimedBy": null}}),
    ));
    assert_eq!(alice.read_app(), Vec::<Value>::new());
    assert_eq!((stream.stats().unknown, stream.len()), (1, 0));
}

#[test]
fn a_rotation_sends_the_new_state_to_linked_users_and_is_all_a_later_user_gets() {
    let (server, stream) = served(compacting());
    let mut alice = Conn::settled(&server, "alice");
    alice.send(append("counter", "alice", json!({"type": "claim"})));
    alice.send(append("counter", "alice", increment(7)));
    let mut got = events_of(&alice.read_app(), "counter");

    stream
        .rotate(
            &server,
            Counter {
                value: 100,
                claimed_by: None,
            },
        )
        .unwrap();
    let rotation = events_of(&alice.read_app(), "counter");
    assert_eq!(rotation.len(), 1);
    assert_eq!(rotation[0].0, emitter_state::SNAPSHOT_DISPATCHER);
    got.extend(rotation);
    assert_eq!(fold(&got), (100, None));
    assert_eq!(stream.with_state(|c| c.value), Ok(100));

    // The rotated stream goes on; bob, linking later, gets the snapshot and what came after, and nothing twice.
    alice.send(append("counter", "alice", increment(1)));
    got.extend(events_of(&alice.read_app(), "counter"));
    let mut bob = Conn::linked(&server, "bob");
    let catch_up = events_of(&bob.read(), "counter");
    assert_eq!(catch_up.len(), 2);
    assert_eq!(fold(&catch_up), fold(&got));
    assert_eq!(fold(&catch_up), (101, None));
}

#[test]
fn a_panicking_snapshot_leaves_the_history_as_it_was() {
    let server = listening();
    let stream = StreamModel::new(0)
        .when("tick", |n: &mut i32, _: &str, (): ()| *n += 1)
        .compaction("snapshot", |n: &i32| -> i32 {
            if *n > 1 {
                panic!("a bug")
            }
            *n
        })
        .register(&server, "ticks");
    for _ in 0..2 {
        stream.append(&server, "x", &Message::new("tick")).unwrap();
    }
    assert_eq!(
        stream.compact(),
        Err(Error::Panicked {
            kind: "snapshot".into()
        })
    );
    assert_eq!(stream.len(), 2);
}
