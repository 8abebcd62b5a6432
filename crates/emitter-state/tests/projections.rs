//! The Projection model over the core, without sockets: each user's projection, deltas, optimistic ids, relinks.

mod support;

use std::collections::BTreeMap;

use emitter_core::{Message, Server};
use emitter_state::{Error, Projection, ProjectionModel};
use serde::Deserialize;
use serde_json::{json, Value};
use support::{listening, Conn, Replica};

/// Each player's hand is theirs to see; everyone sees how many cards each holds and the top of the pile.
#[derive(Default)]
struct Table {
    hands: BTreeMap<String, Vec<u32>>,
    pile: Vec<u32>,
    /// Changed by `shuffle`, seen by no one.
    shuffles: u32,
}

#[derive(Deserialize)]
struct Card {
    card: u32,
}

fn table() -> ProjectionModel<Table> {
    ProjectionModel::new(Table::default(), |table: &Table, username: &str| {
        json!({
            "hand": table.hands.get(username).cloned().unwrap_or_default(),
            "sizes": table.hands.iter().map(|(who, hand)| (who.clone(), hand.len())).collect::<BTreeMap<_, _>>(),
            "top": table.pile.last(),
        })
    })
    .when("take", |table: &mut Table, dispatcher: &str, Card { card }| {
        table.hands.entry(dispatcher.to_owned()).or_default().push(card);
    })
    .when("play", |table: &mut Table, dispatcher: &str, Card { card }| {
        let hand = table.hands.get_mut(dispatcher).ok_or("you hold no cards")?;
        let at = hand
            .iter()
            .position(|c| *c == card)
            .ok_or("you do not hold that card")?;
        hand.remove(at);
        table.pile.push(card);
        Ok::<(), &str>(())
    })
    .when("shuffle", |table: &mut Table, _: &str, (): ()| table.shuffles += 1)
    .when("crash", |table: &mut Table, dispatcher: &str, (): ()| -> () {
        table.hands.entry(dispatcher.to_owned()).or_default().push(99);
        panic!("a bug after a change");
    })
}

fn action(kind: &str, payload: Option<Value>, optimistic_id: Option<&str>) -> Value {
    let mut action = json!({"type": kind});
    if let Some(payload) = payload {
        action["payload"] = payload;
    }
    let mut message = json!({"type": "projection/action", "payload": {"domain": "table", "action": action}});
    if let Some(id) = optimistic_id {
        message["payload"]["optimisticId"] = json!(id);
    }
    message
}

fn take(card: u32, id: Option<&str>) -> Value {
    action("take", Some(json!({"card": card})), id)
}

/// Reads what `conn` got into `replica`, and returns the frames.
fn sync(conn: &mut Conn, replica: &mut Replica) -> Vec<Value> {
    let frames = conn.read();
    replica.apply_all(&frames);
    assert_eq!(replica.violations, Vec::<String>::new());
    frames
        .into_iter()
        .filter(|f| !f["type"].as_str().unwrap().starts_with("krmx/"))
        .collect()
}

/// A listening server that serves the table as `table`.
fn served() -> (Server, Projection<Table>) {
    let server = listening();
    let table = table().register(&server, "table");
    (server, table)
}

/// `username` takes `card` from the server's side (no connection of theirs involved).
fn server_side_take(table: &Projection<Table>, server: &Server, username: &str, card: u32) {
    let take = Message::with_payload("take", json!({ "card": card }));
    table.dispatch(server, username, &take, None).unwrap();
}

/// A new connection linked to `username`, and a replica that took in what it was sent on linking.
fn replicated(server: &Server, username: &str) -> (Conn, Replica) {
    let mut conn = Conn::linked(server, username);
    let mut replica = Replica::new(username);
    sync(&mut conn, &mut replica);
    (conn, replica)
}

fn check(projection: &Projection<Table>, username: &str, replica: &Replica) {
    assert_eq!(
        replica.projections.get("table"),
        Some(&projection.projection_of(username).unwrap()),
        "{username}"
    );
}

#[test]
fn a_linking_user_gets_its_own_projection_after_its_snapshot() {
    let (server, table) = served();
    server_side_take(&table, &server, "alice", 7);
    let mut alice = Conn::linked(&server, "alice");
    let frames = alice.read();
    let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["krmx/accepted", "krmx/joined", "krmx/linked", "projection/set"]);
    assert_eq!(
        frames[3]["payload"],
        json!({"domain": "table", "projection": {"hand": [7], "sizes": {"alice": 1}, "top": null}})
    );
}

#[test]
fn after_an_action_every_user_gets_its_delta_and_only_the_dispatcher_gets_the_id() {
    let (server, table) = served();
    let ((mut alice, mut a), (mut bob, mut b)) = (replicated(&server, "alice"), replicated(&server, "bob"));

    alice.send(take(7, Some("opt0-1")));
    let to_alice = sync(&mut alice, &mut a);
    let to_bob = sync(&mut bob, &mut b);
    assert_eq!(to_alice.len(), 1);
    assert_eq!(to_alice[0]["payload"]["optimisticId"], "opt0-1");
    assert_eq!(to_bob.len(), 1);
    assert_eq!(
        to_bob[0]["payload"].get("optimisticId"),
        None,
        "no id key at all, never null"
    );
    check(&table, "alice", &a);
    check(&table, "bob", &b);

    // Hidden information: bob was never sent alice's card.
    assert!(bob
        .raw
        .iter()
        .all(|frame| !frame.contains("\"hand\":[7]") && !frame.contains("[7]")));
}

#[test]
fn an_action_that_changes_no_projection_invalidates_the_dispatchers_id_only() {
    let (server, table) = served();
    let ((mut alice, mut a), (mut bob, mut b)) = (replicated(&server, "alice"), replicated(&server, "bob"));

    alice.send(action("shuffle", None, Some("opt0-2")));
    assert_eq!(
        sync(&mut alice, &mut a),
        [json!({"type": "projection/invalidate", "payload": {"domain": "table", "optimisticId": "opt0-2"}})]
    );
    assert_eq!(sync(&mut bob, &mut b), Vec::<Value>::new());
    // Without an id there is nothing to invalidate.
    alice.send(action("shuffle", None, None));
    assert_eq!(sync(&mut alice, &mut a), Vec::<Value>::new());
    assert_eq!(table.with_state(|t| t.shuffles), Ok(2));
}

#[test]
fn a_refused_unknown_or_unfit_action_invalidates_the_dispatchers_id_and_is_counted() {
    let (server, table) = served();
    let ((mut alice, mut a), (mut bob, mut b)) = (replicated(&server, "alice"), replicated(&server, "bob"));

    alice.send(action("play", Some(json!({"card": 3})), Some("opt0-3"))); // not held
    alice.send(action("fly", None, Some("opt0-4")));
    alice.send(action("take", Some(json!({"card": "seven"})), Some("opt0-5")));
    alice.send(action("take", Some(json!({"card": "seven"})), None));
    let ids: Vec<&str> = a
        .resolved
        .get("table")
        .map(|r| r.iter().map(|(id, _)| id.as_str()).collect())
        .unwrap_or_default();
    assert!(ids.is_empty());
    let frames = sync(&mut alice, &mut a);
    assert_eq!(
        frames.iter().map(|f| f["type"].as_str().unwrap()).collect::<Vec<_>>(),
        ["projection/invalidate"; 3]
    );
    assert_eq!(
        a.resolved["table"]
            .iter()
            .map(|(id, how)| (id.as_str(), *how))
            .collect::<Vec<_>>(),
        [
            ("opt0-3", "invalidate"),
            ("opt0-4", "invalidate"),
            ("opt0-5", "invalidate")
        ]
    );
    assert_eq!(sync(&mut bob, &mut b), Vec::<Value>::new());
    let stats = table.stats();
    assert_eq!(
        (stats.rejected, stats.unknown, stats.invalid, stats.accepted),
        (1, 1, 2, 0)
    );

    // What the reference drops without a word is dropped here too, but counted: a null id, an action without a type.
    let mut null_id = take(1, None);
    null_id["payload"]["optimisticId"] = Value::Null;
    alice.send(null_id);
    alice.send(json!({"type": "projection/action", "payload": {"domain": "table", "action": "take"}}));
    assert_eq!(sync(&mut alice, &mut a), Vec::<Value>::new());
    assert_eq!(table.stats().malformed, 2);
}

#[test]
fn a_relinking_user_gets_a_fresh_projection_and_carries_on() {
    let (server, table) = served();
    let mut alice = Conn::linked(&server, "alice");
    let mut a = Replica::new("alice");
    alice.send(take(1, None));
    sync(&mut alice, &mut a);
    alice.disconnect();

    // Meanwhile, changes alice's projection.
    server_side_take(&table, &server, "bob", 2);
    server_side_take(&table, &server, "alice", 3);

    let mut again = Conn::linked(&server, "alice");
    let mut a = Replica::new("alice");
    let frames = sync(&mut again, &mut a);
    assert_eq!(frames[0]["type"], "projection/set");
    check(&table, "alice", &a);
    again.send(action("play", Some(json!({"card": 3})), Some("opt0-9")));
    sync(&mut again, &mut a);
    check(&table, "alice", &a);
    assert_eq!(a.resolved["table"], [("opt0-9".to_owned(), "delta")]);
}

#[test]
fn a_server_side_update_reaches_everyone_and_a_panicking_handler_leaves_clients_following_the_state() {
    let (server, table) = served();
    let (mut alice, mut a) = replicated(&server, "alice");

    table.update(&server, |t| t.pile.push(5)).unwrap();
    assert_eq!(sync(&mut alice, &mut a).len(), 1);
    check(&table, "alice", &a);

    // The crash handler adds a card, then panics: the card stays, alice's client follows, and her id is invalidated.
    alice.send(action("crash", None, Some("opt0-c")));
    let frames = sync(&mut alice, &mut a);
    let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["projection/delta", "projection/invalidate"]);
    assert_eq!(frames[0]["payload"].get("optimisticId"), None);
    check(&table, "alice", &a);
    assert_eq!(table.stats().panicked, 1);

    assert_eq!(
        table.update(&server, |_| panic!("boom")),
        Err::<(), _>(Error::Panicked { kind: "update".into() })
    );
}

#[test]
fn a_mapper_that_is_not_json_leaves_the_user_at_its_last_projection() {
    let server = listening();
    // A map with tuple keys cannot be JSON; the projection holds one once the count reaches 2.
    let odd = ProjectionModel::new(0u32, |n: &u32, _: &str| {
        let mut map = BTreeMap::new();
        if *n >= 2 {
            map.insert((1, 2), 3);
        }
        (*n, map)
    })
    .when("inc", |n: &mut u32, _: &str, (): ()| *n += 1)
    .register(&server, "odd");
    let mut alice = Conn::settled(&server, "alice");
    let inc = json!({"type": "projection/action", "payload": {"domain": "odd", "action": {"type": "inc"}, "optimisticId": "x"}});
    alice.send(inc.clone());
    assert_eq!(alice.read_app()[0]["payload"]["optimisticId"], "x");
    alice.send(inc);
    // No delta (there is no projection to diff against), so the id is invalidated.
    assert_eq!(alice.read_app()[0]["type"], "projection/invalidate");
    assert!(matches!(odd.projection_of("alice"), Err(Error::Projection { .. })));
}
