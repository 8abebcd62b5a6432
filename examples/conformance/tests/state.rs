//! The state app's contract (the README's *State* section), rule by rule, over real WebSocket connections on loopback,
//! on one process.
//!
//! The client is the raw one of `emitter-testing`, so every frame is seen, in order. To show that nothing was sent,
//! a test syncs: it sends `test/echo` and reads up to its answer. The server handles one connection's messages in
//! order and a model queues what a message causes before its listener returns, so what a connection's earlier
//! messages caused for any user is queued before that answer; a second user who syncs after the first has them too.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use emitter_core::Server;
use emitter_state::delta;
use emitter_testing::{linked, snapshot, unlinked, RawClient, Receive, WsStream};
use example_conformance::state::{StateApp, COUNTER, TALLY};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// The main endpoint, with its state app's handles.
struct Main {
    server: Server,
    app: StateApp,
    port: u16,
}

async fn start() -> Main {
    let (server, app) = example_conformance::build_main_with_state().expect("no journal, nothing refused");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = example_conformance::serve_main_server(&server, listener).await.unwrap();
    Main { server, app, port }
}

impl Main {
    async fn stop(self) {
        self.server.close().await.unwrap();
    }

    fn count(&self) -> u64 {
        self.app.counter.with_state(|counter| counter.count).unwrap()
    }
}

/// Links `username` and reads its snapshot; returns the client and its catch-up: every frame after its own
/// `krmx/linked` up to and including the tally's `projection/set`.
async fn link(port: u16, username: &str) -> (RawClient, Vec<Value>) {
    let mut client = RawClient::link_and_settle(port, username).await;
    let catch_up = read_catch_up(&mut client).await;
    (client, catch_up)
}

async fn read_catch_up(client: &mut impl Receive) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = client.recv().await;
        let last = frame["type"] == "projection/set";
        frames.push(frame);
        if last {
            return frames;
        }
    }
}

/// The tally's projection that a catch-up ends with.
fn projection_of(catch_up: &[Value]) -> Value {
    let last = catch_up.last().expect("a catch-up");
    assert_eq!(last["payload"]["domain"], TALLY, "{last}");
    last["payload"]["projection"].clone()
}

/// Everything the server sent `client` before the answer to a `test/echo` sent now (see the module's comment).
async fn sync(client: &mut RawClient) -> Vec<Value> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let marker = NEXT.fetch_add(1, Ordering::Relaxed);
    client
        .send(json!({"type": "test/echo", "payload": {"sync": marker}}))
        .await;
    client
        .recv_until(&json!({"type": "test/echoed", "payload": {"sync": marker}}))
        .await
}

fn atom_set(key: &str, atom: Value) -> Value {
    json!({"type": "atom/set", "payload": {"key": key, "atom": atom}})
}

fn increment(by: Value) -> Value {
    json!({"type": "increment", "payload": {"by": by}})
}

/// A client's `stream/append` of `event` to the counter, claiming to be `self` (the claim is ignored).
fn append(event: Value) -> Value {
    json!({"type": "stream/append", "payload": {"domain": COUNTER, "dispatcher": "self", "event": event}})
}

/// The server's echo of `event`, appended by `dispatcher`.
fn appended(dispatcher: &str, event: Value) -> Value {
    json!({"type": "stream/append", "payload": {"domain": COUNTER, "dispatcher": dispatcher, "event": event}})
}

/// A `projection/action` `add` of `n` (any JSON) to the tally, with an optimistic id or without.
fn add(n: Value, id: Option<&str>) -> Value {
    let mut action = json!({"type": "projection/action", "payload": {"domain": TALLY, "action": {"type": "add", "payload": {"n": n}}}});
    if let Some(id) = id {
        action["payload"]["optimisticId"] = json!(id);
    }
    action
}

fn invalidate(id: &str) -> Value {
    json!({"type": "projection/invalidate", "payload": {"domain": TALLY, "optimisticId": id}})
}

fn view(total: u64, mine: u64, players: u64) -> Value {
    json!({"total": total, "mine": mine, "players": players})
}

/// Applies one `projection/delta` of the tally to `projection`; returns its `optimisticId` member, if any (and
/// asserts it is never `null`).
fn apply_delta(projection: &mut Value, frame: &Value) -> Option<String> {
    assert_eq!(frame["type"], "projection/delta", "{frame}");
    let payload = frame["payload"].as_object().expect("an object payload");
    assert_eq!(payload["domain"], TALLY, "{frame}");
    delta::patch(projection, &payload["delta"]).unwrap_or_else(|error| panic!("{error}: {frame}"));
    payload.get("optimisticId").map(|id| {
        assert!(id.is_string(), "an optimisticId that is not a string: {frame}");
        id.as_str().unwrap_or_default().to_owned()
    })
}

/// The next text frame whose text starts with `prefix`, as text; the frames before it are skipped.
async fn next_text(ws: &mut WsStream, prefix: &str) -> String {
    loop {
        let next = tokio::time::timeout(emitter_testing::TIMEOUT, ws.next())
            .await
            .expect("a frame in time");
        if let Some(Ok(WsMessage::Text(text))) = next {
            if text.starts_with(prefix) {
                return text.to_string();
            }
        } else {
            panic!("the connection ended: {next:?}");
        }
    }
}

// ---- atoms ---------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_atom_set_reaches_everyone_with_two_members_and_its_value_unchanged() {
    let main = start().await;
    let (mut alice, _) = link(main.port, "alice").await;
    let (mut bob, _) = link(main.port, "bob").await;
    alice.recv_until(&linked("bob")).await;

    let sets = [
        atom_set("round", json!(42)),
        atom_set("alice/x", json!(3.25)),
        atom_set("flag", json!(false)),
        atom_set("__proto__", json!("any string key")),
        atom_set("constructor", json!("")),
        atom_set("", json!(-7)),
    ];
    for set in &sets {
        alice.send(set.clone()).await;
    }
    // The frames equal exactly `{type, payload: {key, atom}}`: no other member.
    assert_eq!(sync(&mut alice).await, sets);
    let to_bob = sync(&mut bob).await;
    assert_eq!(to_bob, sets);
    assert!(
        to_bob[0]["payload"]["atom"].is_u64(),
        "42 stays an integer: {}",
        to_bob[0]
    );
    assert!(to_bob[1]["payload"]["atom"].is_f64());

    // The last set wins.
    bob.send(atom_set("round", json!(43))).await;
    assert_eq!(sync(&mut bob).await, [atom_set("round", json!(43))]);
    assert_eq!(sync(&mut alice).await, [atom_set("round", json!(43))]);

    // A user who links later gets one atom/set per atom.
    let (_carol, catch_up) = link(main.port, "carol").await;
    let atoms: BTreeMap<String, Value> = catch_up
        .iter()
        .filter(|frame| frame["type"] == "atom/set")
        .map(|frame| {
            (
                frame["payload"]["key"].as_str().unwrap().to_owned(),
                frame["payload"]["atom"].clone(),
            )
        })
        .collect();
    assert_eq!(catch_up.len(), sets.len() + 1, "{catch_up:?}");
    let expected: BTreeMap<String, Value> = [
        ("round", json!(43)),
        ("alice/x", json!(3.25)),
        ("flag", json!(false)),
        ("__proto__", json!("any string key")),
        ("constructor", json!("")),
        ("", json!(-7)),
    ]
    .into_iter()
    .map(|(key, atom)| (key.to_owned(), atom))
    .collect();
    assert_eq!(atoms, expected);
    main.stop().await;
}

#[tokio::test]
async fn a_key_with_a_slash_is_only_its_prefix_users_to_set() {
    let main = start().await;
    let (mut alice, _) = link(main.port, "alice").await;
    let (mut bob, _) = link(main.port, "bob").await;
    alice.recv_until(&linked("bob")).await;
    for key in [
        "bob/x", "round", "alice/x", "bobby/x", "x/bob/y", "/bob", "bob/a/b", "Bob/x",
    ] {
        bob.send(atom_set(key, json!(1))).await;
    }
    let accepted = [
        atom_set("bob/x", json!(1)),
        atom_set("round", json!(1)),
        atom_set("bob/a/b", json!(1)),
    ];
    assert_eq!(sync(&mut bob).await, accepted);
    assert_eq!(sync(&mut alice).await, accepted);
    assert_eq!(main.app.atoms.keys(), ["bob/a/b", "bob/x", "round"]);
    main.stop().await;
}

#[tokio::test]
async fn atoms_are_never_cleared() {
    let main = start().await;
    let (mut alice, _) = link(main.port, "alice").await;
    alice.send(atom_set("kept", json!(true))).await;
    assert_eq!(sync(&mut alice).await, [atom_set("kept", json!(true))]);
    alice.send(json!({"type": "krmx/leave"})).await;
    alice
        .recv_until(&json!({"type": "krmx/left", "payload": {"username": "alice"}}))
        .await;
    assert!(main.server.users().is_empty());

    let (_bob, catch_up) = link(main.port, "bob").await;
    assert_eq!(catch_up[0], atom_set("kept", json!(true)));
    assert_eq!(catch_up.len(), 2);
    main.stop().await;
}

#[tokio::test]
async fn ten_thousand_atoms_are_kept_and_caught_up() {
    let main = start().await;
    let (mut alice, _) = link(main.port, "alice").await;
    for i in 0..10_000 {
        alice.send(atom_set(&format!("k{i}"), json!(i))).await;
    }
    alice.send(atom_set("__proto__", json!("last"))).await;
    let echoed = sync(&mut alice).await;
    assert_eq!(echoed.len(), 10_001);
    assert_eq!(echoed[9_999], atom_set("k9999", json!(9_999)));

    let (_bob, catch_up) = link(main.port, "bob").await;
    assert_eq!(catch_up.len(), 10_002);
    assert!(catch_up[..10_001].iter().all(|frame| frame["type"] == "atom/set"));
    assert!(catch_up.contains(&atom_set("__proto__", json!("last"))));
    assert!(catch_up.contains(&atom_set("k0", json!(0))));
    assert_eq!(main.app.atoms.keys().len(), 10_001);
    main.stop().await;
}

#[tokio::test]
async fn atom_sets_of_a_bad_shape_are_dropped_and_the_sender_stays_linked() {
    let main = start().await;
    let (mut alice, _) = link(main.port, "alice").await;
    let (mut bob, _) = link(main.port, "bob").await;
    alice.recv_until(&linked("bob")).await;
    let bad = [
        json!({"type": "atom/set"}),
        json!({"type": "atom/set", "payload": null}),
        json!({"type": "atom/set", "payload": "round"}),
        json!({"type": "atom/set", "payload": ["round", 1]}),
        json!({"type": "atom/set", "payload": {"atom": 1}}),
        json!({"type": "atom/set", "payload": {"key": 1, "atom": 1}}),
        json!({"type": "atom/set", "payload": {"key": "round"}}),
        json!({"type": "atom/set", "payload": {"key": "round", "atom": null}}),
        json!({"type": "atom/set", "payload": {"key": "round", "atom": {}}}),
        json!({"type": "atom/set", "payload": {"key": "round", "atom": [1]}}),
    ];
    for message in bad {
        alice.send(message).await;
    }
    assert_eq!(sync(&mut alice).await, Vec::<Value>::new());
    assert_eq!(sync(&mut bob).await, Vec::<Value>::new());
    assert!(main.server.user("alice").is_some_and(|user| user.is_linked));
    assert!(main.app.atoms.keys().is_empty());
    main.stop().await;
}

// ---- stream counter --------------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_increment_is_echoed_to_everyone_exactly_as_received_by_its_sender() {
    let main = start().await;
    let (mut alice, _) = link(main.port, "alice").await;
    let (mut bob, _) = link(main.port, "bob").await;
    // Members out of order, spacing, other payload members (ignored, but echoed), a claimed dispatcher (ignored).
    let event = r#"{"payload":{"note":{"z":1,"a":[2.50]},"by":5},"type":"increment","extra":true}"#;
    alice.recv_until(&linked("bob")).await;
    alice
        .send_raw(&format!(
            r#"{{"payload":{{"event":{event},"dispatcher":"mallory","domain":"counter"}},"type":"stream/append"}}"#
        ))
        .await;
    let echo =
        format!(r#"{{"type":"stream/append","payload":{{"domain":"counter","dispatcher":"alice","event":{event}}}}}"#);
    let mut alice_ws = alice.into_inner();
    assert_eq!(next_text(&mut alice_ws, r#"{"type":"stream/append""#).await, echo);
    // bob gets the same text; the raw client's parse of it is the same frame.
    let frames = sync(&mut bob).await;
    assert_eq!(frames, [serde_json::from_str::<Value>(&echo).unwrap()]);
    assert_eq!(main.count(), 5);

    // A user who links later gets the same text in its catch-up.
    let carol = RawClient::link_as(main.port, "carol").await;
    let mut carol_ws = carol.into_inner();
    assert_eq!(next_text(&mut carol_ws, r#"{"type":"stream/append""#).await, echo);
    main.stop().await;
}

#[tokio::test]
async fn anything_but_an_increment_by_1_to_100_is_refused_and_sent_to_no_one() {
    let main = start().await;
    let (mut alice, _) = link(main.port, "alice").await;
    let (mut bob, _) = link(main.port, "bob").await;
    alice.recv_until(&linked("bob")).await;
    let refused = [
        increment(json!(0)),
        increment(json!(101)),
        increment(json!(-5)),
        increment(json!(2.5)),
        increment(json!("5")),
        increment(json!(null)),
        increment(json!(true)),
        json!({"type": "increment", "payload": {"n": 5}}),
        json!({"type": "increment", "payload": [5]}),
        json!({"type": "increment", "payload": 5}),
        json!({"type": "increment"}),
        json!({"type": "decrement", "payload": {"by": 5}}),
        json!({"type": "Increment", "payload": {"by": 5}}),
    ];
    for event in refused {
        alice.send(append(event)).await;
    }
    let accepted = [
        increment(json!(1)),
        json!({"type": "increment", "payload": {"by": 100, "other": ["ignored"]}}),
    ];
    for event in &accepted {
        alice.send(append(event.clone())).await;
    }
    let echoes: Vec<Value> = accepted.iter().map(|event| appended("alice", event.clone())).collect();
    assert_eq!(sync(&mut alice).await, echoes);
    assert_eq!(sync(&mut bob).await, echoes);
    assert_eq!(main.count(), 101);
    assert_eq!(main.app.counter.len(), 2);
    main.stop().await;
}

#[tokio::test]
async fn appends_of_a_bad_shape_or_another_domain_are_dropped_and_the_sender_stays_linked() {
    let main = start().await;
    let (mut alice, _) = link(main.port, "alice").await;
    let (mut bob, _) = link(main.port, "bob").await;
    alice.recv_until(&linked("bob")).await;
    let event = increment(json!(5));
    let bad = [
        json!({"type": "stream/append"}),
        json!({"type": "stream/append", "payload": null}),
        json!({"type": "stream/append", "payload": [COUNTER, "self", event]}),
        json!({"type": "stream/append", "payload": {"dispatcher": "self", "event": event}}),
        json!({"type": "stream/append", "payload": {"domain": 1, "dispatcher": "self", "event": event}}),
        json!({"type": "stream/append", "payload": {"domain": "other", "dispatcher": "self", "event": event}}),
        json!({"type": "stream/append", "payload": {"domain": COUNTER, "event": event}}),
        json!({"type": "stream/append", "payload": {"domain": COUNTER, "dispatcher": null, "event": event}}),
        json!({"type": "stream/append", "payload": {"domain": COUNTER, "dispatcher": 7, "event": event}}),
        json!({"type": "stream/append", "payload": {"domain": COUNTER, "dispatcher": "self"}}),
        json!({"type": "stream/append", "payload": {"domain": COUNTER, "dispatcher": "self", "event": null}}),
        json!({"type": "stream/append", "payload": {"domain": COUNTER, "dispatcher": "self", "event": "increment"}}),
        json!({"type": "stream/append", "payload": {"domain": COUNTER, "dispatcher": "self", "event": [event]}}),
        json!({"type": "stream/append", "payload": {"domain": COUNTER, "dispatcher": "self", "event": {"payload": {"by": 5}}}}),
        json!({"type": "stream/append", "payload": {"domain": COUNTER, "dispatcher": "self", "event": {"type": 1, "payload": {"by": 5}}}}),
    ];
    for message in bad {
        alice.send(message).await;
    }
    assert_eq!(sync(&mut alice).await, Vec::<Value>::new());
    assert_eq!(sync(&mut bob).await, Vec::<Value>::new());
    assert!(main.server.user("alice").is_some_and(|user| user.is_linked));
    assert_eq!((main.count(), main.app.counter.len()), (0, 0));
    main.stop().await;
}

/// The counter events of `frames`, as (dispatcher, event).
fn events(frames: &[Value]) -> Vec<(String, Value)> {
    frames
        .iter()
        .filter(|frame| frame["type"] == "stream/append")
        .map(|frame| {
            assert_eq!(frame["payload"]["domain"], COUNTER, "{frame}");
            (
                frame["payload"]["dispatcher"].as_str().unwrap().to_owned(),
                frame["payload"]["event"].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn one_history_in_one_order_with_each_connections_events_in_the_order_sent() {
    const EACH: u64 = 200;
    let main = start().await;
    let (mut alice, _) = link(main.port, "alice").await;
    let (mut bob, _) = link(main.port, "bob").await;
    alice.recv_until(&linked("bob")).await;
    // Both send at once: the server handles the two connections in parallel.
    async fn send_all(client: &mut RawClient, by: u64) {
        for seq in 0..EACH {
            client
                .send(append(json!({"type": "increment", "payload": {"by": by, "seq": seq}})))
                .await;
        }
    }
    tokio::join!(send_all(&mut alice, 1), send_all(&mut bob, 2));
    let (mut seen_by_alice, mut seen_by_bob) = (Vec::new(), Vec::new());
    for (client, seen) in [(&mut alice, &mut seen_by_alice), (&mut bob, &mut seen_by_bob)] {
        while seen.len() < 2 * EACH as usize {
            let frame = client.recv().await;
            seen.extend(events(&[frame]));
        }
    }
    assert_eq!(seen_by_alice, seen_by_bob, "one order");
    for (who, by) in [("alice", 1), ("bob", 2)] {
        let sent: Vec<Value> = seen_by_alice
            .iter()
            .filter(|(dispatcher, _)| dispatcher == who)
            .map(|(_, event)| event["payload"]["seq"].clone())
            .collect();
        assert_eq!(
            sent,
            (0..EACH).map(|seq| json!(seq)).collect::<Vec<_>>(),
            "{who}'s in the order sent"
        );
        assert!(seen_by_alice
            .iter()
            .all(|(dispatcher, event)| dispatcher != who || event["payload"]["by"] == by));
    }
    assert_eq!(main.count(), 3 * EACH);
    let (_carol, catch_up) = link(main.port, "carol").await;
    assert_eq!(events(&catch_up), seen_by_alice, "the history, oldest first");
    main.stop().await;
}

#[tokio::test]
async fn the_history_holds_ten_thousand_events_and_is_never_cut_short() {
    let main = start().await;
    let (mut alice, _) = link(main.port, "alice").await;
    for _ in 0..10_000 {
        alice.send(append(increment(json!(1)))).await;
    }
    alice.send(append(increment(json!(7)))).await;
    let echoes = sync(&mut alice).await;
    assert_eq!(echoes.len(), 10_001);
    assert_eq!(main.count(), 10_007);

    let (_bob, catch_up) = link(main.port, "bob").await;
    let history = events(&catch_up);
    assert_eq!(history.len(), 10_001);
    assert_eq!(history[10_000], ("alice".to_owned(), increment(json!(7))));
    assert_eq!(catch_up.len(), 10_002, "the history, then the tally's projection/set");
    main.stop().await;
}

// ---- projection tally ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_add_gives_every_user_one_delta_and_only_the_dispatcher_its_id() {
    let main = start().await;
    let (mut alice, catch_up) = link(main.port, "alice").await;
    let mut alice_sees = projection_of(&catch_up);
    let (mut bob, catch_up) = link(main.port, "bob").await;
    let mut bob_sees = projection_of(&catch_up);
    // `constructor` is a username like any other.
    let (mut ctor, catch_up) = link(main.port, "constructor").await;
    let mut ctor_sees = projection_of(&catch_up);
    assert_eq!(alice_sees, view(0, 0, 0));
    alice.recv_until(&linked("constructor")).await;
    bob.recv_until(&linked("constructor")).await;

    alice.send(add(json!(3), Some("opt0-1"))).await;
    let to_alice = sync(&mut alice).await;
    assert_eq!(to_alice.len(), 1, "{to_alice:?}");
    assert_eq!(apply_delta(&mut alice_sees, &to_alice[0]), Some("opt0-1".to_owned()));
    assert_eq!(alice_sees, view(3, 3, 1));
    for (client, sees) in [(&mut bob, &mut bob_sees), (&mut ctor, &mut ctor_sees)] {
        let frames = sync(client).await;
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(
            apply_delta(sees, &frames[0]),
            None,
            "no optimisticId member: {}",
            frames[0]
        );
        assert_eq!(*sees, view(3, 0, 1));
    }

    // Without an id, the dispatcher's delta has none either; other payload members are ignored.
    ctor.send(json!({"type": "projection/action", "payload": {"domain": TALLY, "action": {"type": "add", "payload": {"n": 100, "note": "x"}}}}))
        .await;
    let frames = sync(&mut ctor).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(apply_delta(&mut ctor_sees, &frames[0]), None);
    assert_eq!(ctor_sees, view(103, 100, 2));
    for (client, sees, mine) in [(&mut alice, &mut alice_sees, 3), (&mut bob, &mut bob_sees, 0)] {
        let frames = sync(client).await;
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(apply_delta(sees, &frames[0]), None);
        assert_eq!(*sees, view(103, mine, 2));
    }

    // A user who links later gets its view in a projection/set.
    let (_dave, catch_up) = link(main.port, "dave").await;
    assert_eq!(projection_of(&catch_up), view(103, 0, 2));
    let (_again, catch_up) = link(main.port, "constructorx").await;
    assert_eq!(projection_of(&catch_up), view(103, 0, 2));
    main.stop().await;
}

#[tokio::test]
async fn a_refused_action_with_an_id_is_invalidated_to_its_dispatcher_alone_and_every_id_answered_in_order() {
    let main = start().await;
    let (mut alice, catch_up) = link(main.port, "alice").await;
    let mut alice_sees = projection_of(&catch_up);
    let (mut bob, _) = link(main.port, "bob").await;
    alice.recv_until(&linked("bob")).await;
    let refused = [json!(0), json!(101), json!(-1), json!(2.5), json!("5"), json!(null)];
    for (i, n) in refused.iter().enumerate() {
        alice.send(add(n.clone(), Some(&format!("r{i}")))).await;
        alice.send(add(n.clone(), None)).await;
    }
    let other_type = json!({"type": "projection/action", "payload": {"domain": TALLY, "action": {"type": "sub", "payload": {"n": 1}}, "optimisticId": "r-sub"}});
    alice.send(other_type).await;
    let mut expected: Vec<Value> = (0..refused.len()).map(|i| invalidate(&format!("r{i}"))).collect();
    expected.push(invalidate("r-sub"));
    assert_eq!(sync(&mut alice).await, expected);
    assert_eq!(sync(&mut bob).await, Vec::<Value>::new());

    // Mixed: each id gets exactly one answer, in the order sent.
    alice.send(add(json!(1), Some("v1"))).await;
    alice.send(add(json!(0), Some("i1"))).await;
    alice.send(add(json!(2), Some("v2"))).await;
    let frames = sync(&mut alice).await;
    assert_eq!(frames.len(), 3, "{frames:?}");
    assert_eq!(apply_delta(&mut alice_sees, &frames[0]), Some("v1".to_owned()));
    assert_eq!(frames[1], invalidate("i1"));
    assert_eq!(apply_delta(&mut alice_sees, &frames[2]), Some("v2".to_owned()));
    assert_eq!(alice_sees, view(3, 3, 1));
    let to_bob = sync(&mut bob).await;
    assert_eq!(to_bob.len(), 2, "{to_bob:?}");
    main.stop().await;
}

#[tokio::test]
async fn actions_of_a_bad_shape_or_another_domain_are_dropped_and_the_sender_stays_linked() {
    let main = start().await;
    let (mut alice, _) = link(main.port, "alice").await;
    let (mut bob, _) = link(main.port, "bob").await;
    alice.recv_until(&linked("bob")).await;
    let action = json!({"type": "add", "payload": {"n": 1}});
    let bad = [
        json!({"type": "projection/action"}),
        json!({"type": "projection/action", "payload": null}),
        json!({"type": "projection/action", "payload": [TALLY, action]}),
        json!({"type": "projection/action", "payload": {"action": action, "optimisticId": "x1"}}),
        json!({"type": "projection/action", "payload": {"domain": 1, "action": action, "optimisticId": "x2"}}),
        json!({"type": "projection/action", "payload": {"domain": "other", "action": action, "optimisticId": "x3"}}),
        json!({"type": "projection/action", "payload": {"domain": TALLY, "action": action, "optimisticId": null}}),
        json!({"type": "projection/action", "payload": {"domain": TALLY, "action": action, "optimisticId": 5}}),
        json!({"type": "projection/action", "payload": {"domain": TALLY, "optimisticId": "x4"}}),
        json!({"type": "projection/action", "payload": {"domain": TALLY, "action": null, "optimisticId": "x5"}}),
        json!({"type": "projection/action", "payload": {"domain": TALLY, "action": "add", "optimisticId": "x6"}}),
        json!({"type": "projection/action", "payload": {"domain": TALLY, "action": [action], "optimisticId": "x7"}}),
        json!({"type": "projection/action", "payload": {"domain": TALLY, "action": {"payload": {"n": 1}}, "optimisticId": "x8"}}),
        json!({"type": "projection/action", "payload": {"domain": TALLY, "action": {"type": 1}, "optimisticId": "x9"}}),
        json!({"type": "projection/set", "payload": {"domain": TALLY, "projection": {}}}),
        json!({"type": "projection/delta", "payload": {"domain": TALLY, "delta": {}}}),
    ];
    for message in bad {
        alice.send(message).await;
    }
    assert_eq!(sync(&mut alice).await, Vec::<Value>::new());
    assert_eq!(sync(&mut bob).await, Vec::<Value>::new());
    assert!(main.server.user("alice").is_some_and(|user| user.is_linked));
    assert_eq!(main.app.tally.projection_of("alice").unwrap(), view(0, 0, 0));
    main.stop().await;
}

// ---- catch-up --------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_catch_up_is_the_atoms_then_the_history_then_the_projection_last() {
    let main = start().await;
    let (mut alice, _) = link(main.port, "alice").await;
    alice.send(atom_set("b", json!(2))).await;
    alice.send(atom_set("a", json!(1))).await;
    for by in [1, 2, 3] {
        alice.send(append(increment(json!(by)))).await;
    }
    alice.send(add(json!(4), None)).await;
    assert_eq!(sync(&mut alice).await.len(), 6);

    let (_bob, catch_up) = link(main.port, "bob").await;
    assert_eq!(catch_up.len(), 6, "{catch_up:?}");
    let mut atoms = catch_up[..2].to_vec();
    atoms.sort_by_key(|frame| frame["payload"]["key"].as_str().unwrap().to_owned());
    assert_eq!(atoms, [atom_set("a", json!(1)), atom_set("b", json!(2))]);
    assert_eq!(
        catch_up[2..5],
        [1, 2, 3].map(|by| appended("alice", increment(json!(by))))
    );
    assert_eq!(
        catch_up[5],
        json!({"type": "projection/set", "payload": {"domain": TALLY, "projection": view(4, 0, 1)}})
    );
    main.stop().await;
}

#[tokio::test]
async fn nothing_reaches_an_unlinked_user_and_a_relink_catches_up_again() {
    let main = start().await;
    let (mut alice, _) = link(main.port, "alice").await;
    let (mut bob, _) = link(main.port, "bob").await;
    alice.recv_until(&linked("bob")).await;
    alice.send(json!({"type": "test/unlink", "payload": "alice"})).await;
    alice.recv_until(&unlinked("alice")).await;
    bob.recv_until(&unlinked("alice")).await;

    bob.send(atom_set("round", json!(1))).await;
    bob.send(append(increment(json!(9)))).await;
    bob.send(add(json!(5), Some("b1"))).await;
    assert_eq!(sync(&mut bob).await.len(), 3);

    // The link's answer is the next frame on alice's connection (the raw client checks it is): nothing came while
    // she was unlinked.
    assert_eq!(alice.link("alice", None).await, Ok(()));
    alice.expect_all(&snapshot(&["alice", "bob"])).await;
    let catch_up = read_catch_up(&mut alice).await;
    assert_eq!(
        catch_up,
        [
            atom_set("round", json!(1)),
            appended("bob", increment(json!(9))),
            json!({"type": "projection/set", "payload": {"domain": TALLY, "projection": view(5, 0, 1)}}),
        ]
    );
    main.stop().await;
}

/// What one link session of a user showed it: the values of one atom, the `seq` of the counter's events, and the
/// tally's totals, each in the order they came.
#[derive(Debug, Default)]
struct Session {
    atoms: Vec<u64>,
    seqs: Vec<u64>,
    totals: Vec<u64>,
}

impl Session {
    fn read(frames: &[Value]) -> Session {
        let mut session = Session::default();
        let mut projection: Option<Value> = None;
        for frame in frames {
            match frame["type"].as_str() {
                Some("atom/set") => session.atoms.push(frame["payload"]["atom"].as_u64().unwrap()),
                Some("stream/append") => session
                    .seqs
                    .push(frame["payload"]["event"]["payload"]["seq"].as_u64().unwrap()),
                Some("projection/set") => {
                    assert!(projection.is_none(), "a second projection/set in a session: {frame}");
                    projection = Some(frame["payload"]["projection"].clone());
                }
                Some("projection/delta") => {
                    let projection = projection.as_mut().expect("no delta before the projection/set");
                    apply_delta(projection, frame);
                }
                _ => continue,
            }
            if let Some(projection) = &projection {
                if session.totals.last() != projection["total"].as_u64().as_ref() {
                    session.totals.push(projection["total"].as_u64().unwrap());
                }
            }
        }
        session
    }

    /// Every change once, in order: the atom's values and the totals strictly increase by one, the events are the
    /// whole history so far (0, 1, 2, …) and then each later one.
    fn check(&self) {
        let consecutive = |values: &[u64]| values.windows(2).all(|pair| pair[1] == pair[0] + 1);
        assert!(consecutive(&self.atoms), "atoms: {:?}", self.atoms);
        assert!(consecutive(&self.totals), "totals: {:?}", self.totals);
        assert!(
            self.seqs.iter().copied().eq(0..self.seqs.len() as u64),
            "events: {:?}",
            self.seqs
        );
    }
}

/// Links carol again and again, each session checked ([`Session::check`]), until `changes` (bob's task) has finished;
/// returns her last session, which started once every change was made.
async fn relink_until_done(port: u16, changes: &tokio::task::JoinHandle<RawClient>) -> Session {
    let mut carol = RawClient::link_as(port, "carol").await;
    let mut sessions = 0;
    loop {
        // A session: from carol's own krmx/linked to her krmx/unlinked.
        carol.recv_until(&linked("carol")).await;
        let done = changes.is_finished();
        carol.send(json!({"type": "test/unlink", "payload": "carol"})).await;
        let frames = carol.recv_until(&unlinked("carol")).await;
        let session = Session::read(&frames);
        session.check();
        sessions += 1;
        if done {
            // Whether any session overlapped the changes depends on timing; the checks hold either way.
            eprintln!("carol linked {sessions} times while bob made his changes");
            return session;
        }
        // Nothing while unlinked: the link's answer is the next frame (the raw client checks it is).
        assert_eq!(carol.link("carol", None).await, Ok(()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_relinking_while_others_change_things_gets_every_change_exactly_once() {
    const CHANGES: u64 = 1_000;
    let main = start().await;
    let (mut bob, _) = link(main.port, "bob").await;
    let changes = tokio::spawn(async move {
        for i in 0..CHANGES {
            bob.send(atom_set("bob/n", json!(i))).await;
            bob.send(append(json!({"type": "increment", "payload": {"by": 1, "seq": i}})))
                .await;
            bob.send(add(json!(1), None)).await;
        }
        sync(&mut bob).await;
        bob
    });
    let last = relink_until_done(main.port, &changes).await;
    assert_eq!(last.seqs.len() as u64, CHANGES);
    assert_eq!(last.atoms.last(), Some(&(CHANGES - 1)));
    assert_eq!(last.totals.last(), Some(&CHANGES));
    changes.await.unwrap();
    assert_eq!(main.count(), CHANGES);
    main.stop().await;
}

/// Atom sets alone, as fast as they come: a set made while a user links reaches it once, live or in its catch-up
/// (a broadcast would reach it live *and* in the catch-up to come).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_atom_set_while_a_user_links_reaches_it_exactly_once() {
    const CHANGES: u64 = 20_000;
    let main = start().await;
    let (mut bob, _) = link(main.port, "bob").await;
    let changes = tokio::spawn(async move {
        for i in 0..CHANGES {
            bob.send(atom_set("bob/n", json!(i))).await;
        }
        sync(&mut bob).await;
        bob
    });
    let last = relink_until_done(main.port, &changes).await;
    assert_eq!(last.atoms, [CHANGES - 1]);
    changes.await.unwrap();
    main.stop().await;
}
