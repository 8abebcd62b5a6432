//! The three models through a journal: three servers ("nodes", each with its own users on real WebSocket connections
//! on loopback) share one in-memory journal (`support/journal.rs`) that orders each domain's requests, has the owner
//! execute them, and applies the committed changes to every node's model. The owner moves between nodes in the middle
//! of a run; every client's view must still be the one state: the projection its mapper gives, each stream event once
//! and in one order (echoed exactly as sent), the atoms, and each optimistic id answered exactly once.

mod support;

use std::collections::BTreeMap;

use emitter_core::{Message, Server};
use emitter_state::{AtLimit, AtomModel, Atoms, Error, Projection, ProjectionModel, Stream, StreamModel};
use emitter_testing::{listen, RawClient, Receive};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use support::journal::MemoryJournal;
use support::Replica;

// ---- the app: the state conformance app's models --------------------------------------------------------------

#[derive(Debug, Default, Serialize, Deserialize)]
struct Tally {
    total: u64,
    by: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct Add {
    n: u64,
}

fn tally() -> ProjectionModel<Tally> {
    ProjectionModel::new(Tally::default(), |tally: &Tally, username: &str| {
        json!({ "total": tally.total, "mine": tally.by.get(username).copied().unwrap_or(0), "players": tally.by.len() })
    })
    .when("add", |tally: &mut Tally, who: &str, Add { n }| {
        if !(1..=100).contains(&n) {
            return Err("n is 1 to 100");
        }
        tally.total += n;
        *tally.by.entry(who.to_owned()).or_default() += n;
        Ok(())
    })
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Counter {
    count: u64,
}

#[derive(Deserialize)]
struct Increment {
    by: u64,
}

fn counter() -> StreamModel<Counter> {
    StreamModel::new(Counter::default())
        .when("increment", |counter: &mut Counter, _: &str, Increment { by }| {
            if !(1..=100).contains(&by) {
                return Err("by is 1 to 100");
            }
            counter.count += by;
            Ok(())
        })
        .compaction("snapshot", |counter: &Counter| json!({ "count": counter.count }))
}

struct Node {
    server: Server,
    port: u16,
    tally: Projection<Tally>,
    counter: Stream<Counter>,
    atoms: Atoms,
}

/// A node: a server of its own with the three models on the shared journal, registered in the order of the
/// conformance app's catch-up (atoms, then the stream, then the projection).
async fn node(journal: &MemoryJournal, index: usize, counter: StreamModel<Counter>) -> Node {
    let server = Server::new();
    let on = journal.node(index);
    let atoms = AtomModel::new()
        .strict_key_prefixes(true)
        .register_journaled(&server, "atoms", on.clone())
        .unwrap();
    let counter = counter.register_journaled(&server, "counter", on.clone()).unwrap();
    let tally = tally().register_journaled(&server, "tally", on).unwrap();
    let port = listen(&server).await;
    Node {
        server,
        port,
        tally,
        counter,
        atoms,
    }
}

/// A client, and what a reference client would hold after what it received.
struct Player {
    client: RawClient,
    seen: Replica,
}

impl Player {
    async fn link(port: u16, username: &str) -> Player {
        let client = RawClient::link_as(port, username).await;
        Player {
            client,
            seen: Replica::new(username),
        }
    }

    /// Reads frames until `done` holds for what the client holds (each frame waited for with the helpers' timeout).
    async fn until(&mut self, done: impl Fn(&Replica) -> bool) {
        while !done(&self.seen) {
            let frame = self.client.recv().await;
            self.seen.apply(&frame);
        }
        assert!(self.seen.violations.is_empty(), "{:?}", self.seen.violations);
    }

    async fn add(&mut self, n: i64, id: Option<&str>) {
        let mut payload = json!({ "domain": "tally", "action": { "type": "add", "payload": { "n": n } } });
        if let Some(id) = id {
            payload["optimisticId"] = json!(id);
        }
        self.client
            .send(json!({ "type": "projection/action", "payload": payload }))
            .await;
    }

    fn tally(&self) -> Option<&Value> {
        self.seen.projections.get("tally")
    }

    fn events(&self) -> Vec<(String, Value)> {
        self.seen.events.get("counter").cloned().unwrap_or_default()
    }

    fn resolved(&self) -> Vec<(String, &'static str)> {
        self.seen.resolved.get("tally").cloned().unwrap_or_default()
    }
}

fn increment(by: i64) -> Value {
    json!({ "type": "stream/append", "payload": { "domain": "counter", "dispatcher": "me", "event": { "type": "increment", "payload": { "by": by } } } })
}

fn atom_set(key: &str, atom: Value) -> Value {
    json!({ "type": "atom/set", "payload": { "key": key, "atom": atom } })
}

// ---- the tests ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_one_state_while_its_owner_moves() {
    let journal = MemoryJournal::new();
    let mut nodes = Vec::new();
    for index in 0..3 {
        nodes.push(node(&journal, index, counter()).await);
    }
    let mut alice = Player::link(nodes[0].port, "alice").await;
    let mut bob = Player::link(nodes[1].port, "bob").await;
    let mut carol = Player::link(nodes[2].port, "carol").await;
    for player in [&mut alice, &mut bob, &mut carol] {
        player.until(|seen| seen.projections.contains_key("tally")).await;
        assert_eq!(player.tally(), Some(&json!({ "total": 0, "mine": 0, "players": 0 })));
    }

    // Owned by node 0 (the first to attach): actions from every node.
    alice.add(5, Some("a1")).await;
    bob.add(7, Some("b1")).await;
    carol.add(0, Some("c1")).await; // refused: carol alone is told, once
    carol.add(2, None).await;
    carol.add(500, None).await; // refused without an id: nothing at all
    for player in [&mut alice, &mut bob, &mut carol] {
        player.until(|seen| seen.projections["tally"]["total"] == 14).await;
    }
    journal.settle();

    // The owner moves to node 1; stream events and atoms through it.
    for domain in ["tally", "counter", "atoms"] {
        journal.move_owner(domain, 1);
    }
    // Members out of sorted order: every node echoes the text as alice sent it.
    let sent = r#"{"type":"increment","payload":{"by":3,"why":"z before a"},"a":1}"#;
    alice
        .client
        .send_raw(&format!(
            r#"{{"type":"stream/append","payload":{{"event":{sent},"dispatcher":"me","domain":"counter"}}}}"#
        ))
        .await;
    journal.settle();
    bob.client.send(increment(4)).await;
    bob.client.send(increment(0)).await; // refused: sent to no one
    alice.client.send(atom_set("alice/x", json!(1))).await;
    bob.client.send(atom_set("round", json!(2.5))).await;
    bob.client.send(atom_set("alice/y", json!(true))).await; // another's key: dropped
    journal.settle();

    // It moves again, to node 2, in the middle of more actions.
    alice.add(10, Some("a2")).await;
    for domain in ["tally", "counter", "atoms"] {
        journal.move_owner(domain, 2);
    }
    carol.client.send(increment(5)).await;
    bob.add(1, Some("b2")).await;
    journal.settle();

    let want = json!({ "alice/x": 1, "round": 2.5 });
    for player in [&mut alice, &mut bob, &mut carol] {
        player
            .until(|seen| {
                seen.projections["tally"]["total"] == 25
                    && seen.events.get("counter").is_some_and(|events| events.len() == 3)
                    && seen.atoms.len() == 2
            })
            .await;
    }
    assert_eq!(alice.tally(), Some(&json!({ "total": 25, "mine": 15, "players": 3 })));
    assert_eq!(bob.tally(), Some(&json!({ "total": 25, "mine": 8, "players": 3 })));
    assert_eq!(carol.tally(), Some(&json!({ "total": 25, "mine": 2, "players": 3 })));
    assert_eq!(
        alice.resolved(),
        [("a1".to_owned(), "delta"), ("a2".to_owned(), "delta")]
    );
    assert_eq!(bob.resolved(), [("b1".to_owned(), "delta"), ("b2".to_owned(), "delta")]);
    assert_eq!(carol.resolved(), [("c1".to_owned(), "invalidate")]);
    // One history in one order for everyone (connections have no order among themselves: any order of the three).
    let history = alice.events();
    let mut made: Vec<(&str, i64)> = history
        .iter()
        .map(|(who, event)| (who.as_str(), event["payload"]["by"].as_i64().unwrap()))
        .collect();
    made.sort();
    assert_eq!(made, [("alice", 3), ("bob", 4), ("carol", 5)]);
    assert_eq!(bob.events(), history);
    assert_eq!(carol.events(), history);
    for player in [&alice, &bob, &carol] {
        assert_eq!(serde_json::to_value(&player.seen.atoms).unwrap(), want);
    }
    // The committed event is the text alice sent, which every node echoes verbatim.
    let committed = journal.log("counter");
    assert!(
        committed
            .iter()
            .any(|committed| committed.change["dispatcher"] == "alice" && committed.change["event"] == json!(sent)),
        "{committed:?}"
    );

    // Every node's replica is the one state.
    for node in &nodes {
        assert_eq!(node.tally.with_state(|tally| tally.total), Ok(25));
        assert_eq!(node.counter.with_state(|counter| counter.count), Ok(12));
        assert_eq!(node.counter.len(), 3);
        assert_eq!(serde_json::to_value(node.atoms.all()).unwrap(), want);
    }

    // A user linking later, on any node, gets the catch-up after its snapshot: atoms, the history, the projection.
    let mut dave = RawClient::link_as(nodes[0].port, "dave").await;
    dave.recv_until(&emitter_testing::frames::linked("dave")).await;
    let mut catch_up = Vec::new();
    for _ in 0..6 {
        catch_up.push(dave.recv().await);
    }
    let kinds: Vec<&str> = catch_up.iter().map(|frame| frame["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "atom/set",
            "atom/set",
            "stream/append",
            "stream/append",
            "stream/append",
            "projection/set"
        ]
    );
    assert_eq!(
        catch_up[5]["payload"],
        json!({ "domain": "tally", "projection": { "total": 25, "mine": 0, "players": 3 } })
    );

    // Server-side: a dispatch goes to the owner as that user's; an update cannot be made elsewhere.
    nodes[1]
        .tally
        .dispatch(
            &nodes[1].server,
            "dave",
            &Message::with_payload("add", json!({ "n": 4 })),
            None,
        )
        .unwrap();
    assert_eq!(
        nodes[0].tally.update(&nodes[0].server, |tally| tally.total = 0),
        Err(Error::Journaled)
    );
    journal.settle();
    for node in &nodes {
        assert_eq!(node.tally.with_state(|tally| tally.total), Ok(29));
    }
    let delta = dave.recv_type("projection/delta").await;
    assert!(delta["payload"].get("optimisticId").is_none(), "{delta}");
    journal.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_actions_from_every_node_are_answered_once_each_across_owner_moves() {
    const EACH: usize = 30;
    let journal = MemoryJournal::new();
    let mut nodes = Vec::new();
    for index in 0..3 {
        nodes.push(node(&journal, index, counter()).await);
    }
    let names = ["ann", "ben", "cid"];
    let mut players = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let mut player = Player::link(nodes[index].port, name).await;
        player.until(|seen| seen.projections.contains_key("tally")).await;
        players.push(player);
    }
    // Every player sends its adds (some refused) and increments at once, while the owner moves around.
    let mover = {
        let journal = &journal;
        async move {
            for step in 0..9 {
                tokio::task::yield_now().await;
                journal.move_owner("tally", step % 3);
                journal.move_owner("counter", (step + 1) % 3);
            }
        }
    };
    let sending = futures_util::future::join_all(players.iter_mut().enumerate().map(|(index, player)| async move {
        for k in 0..EACH {
            // Every fifth is refused (n = 0): it must be invalidated, the rest confirmed.
            let n = if k % 5 == 4 { 0 } else { (index + 1) as i64 };
            player.add(n, Some(&format!("{index}-{k}"))).await;
            player.client.send(increment(1)).await;
        }
    }));
    tokio::join!(mover, sending);
    journal.settle();
    let accepted = EACH - EACH / 5;
    let total: u64 = (1..=3).map(|n| n * accepted as u64).sum();
    for (index, player) in players.iter_mut().enumerate() {
        player
            .until(|seen| {
                seen.projections["tally"]["total"] == total
                    && seen
                        .events
                        .get("counter")
                        .is_some_and(|events| events.len() == 3 * EACH)
                    && seen
                        .resolved
                        .get("tally")
                        .is_some_and(|resolved| resolved.len() == EACH)
            })
            .await;
        // Each id answered exactly once, in the order sent, confirmed or invalidated as it should be.
        let expected: Vec<(String, &str)> = (0..EACH)
            .map(|k| (format!("{index}-{k}"), if k % 5 == 4 { "invalidate" } else { "delta" }))
            .collect();
        assert_eq!(player.resolved(), expected);
        assert_eq!(player.tally().unwrap()["mine"], (index + 1) as u64 * accepted as u64);
    }
    // One history, in one order, for everyone.
    let history = players[0].events();
    for player in &players[1..] {
        assert_eq!(player.events(), history);
    }
    for node in &nodes {
        assert_eq!(node.counter.with_state(|counter| counter.count), Ok(3 * EACH as u64));
    }
    journal.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_frees_a_seat_once_on_the_owner_whichever_node_it_was_made_on() {
    #[derive(Default, Serialize, Deserialize)]
    struct Seats {
        seated: Vec<String>,
        freed: u32,
    }
    let seats = || {
        ProjectionModel::new(
            Seats::default(),
            |seats: &Seats, _: &str| json!({ "seated": seats.seated, "freed": seats.freed }),
        )
        .when("sit", |seats: &mut Seats, who: &str, (): ()| {
            seats.seated.push(who.to_owned())
        })
        .on_leave(|seats: &mut Seats, who: &str| {
            if let Some(at) = seats.seated.iter().position(|seated| seated == who) {
                seats.seated.remove(at);
                seats.freed += 1;
            }
        })
    };
    let journal = MemoryJournal::new();
    let mut servers = Vec::new();
    let mut projections = Vec::new();
    for index in 0..2 {
        let server = Server::new();
        projections.push(
            seats()
                .register_journaled(&server, "seats", journal.node(index))
                .unwrap(),
        );
        let port = listen(&server).await;
        servers.push((server, port));
    }
    journal.move_owner("seats", 1);
    let mut alice = Player::link(servers[0].1, "alice").await;
    let mut bob = Player::link(servers[1].1, "bob").await;
    for player in [&mut alice, &mut bob] {
        let sit = json!({ "type": "projection/action", "payload": { "domain": "seats", "action": { "type": "sit" } } });
        player.client.send(sit).await;
    }
    bob.until(|seen| {
        seen.projections
            .get("seats")
            .is_some_and(|seats| seats["seated"].as_array().is_some_and(|seated| seated.len() == 2))
    })
    .await;
    // alice leaves on node 0; the owner, node 1, frees her seat once, and bob on node 1 sees it.
    alice.client.send(json!({ "type": "krmx/leave" })).await;
    bob.until(|seen| seen.projections["seats"]["freed"] == 1).await;
    assert_eq!(bob.seen.projections["seats"]["seated"], json!(["bob"]));
    journal.settle();
    for projection in &projections {
        assert_eq!(
            projection.with_state(|seats| (seats.seated.clone(), seats.freed)),
            Ok((vec!["bob".to_owned()], 1))
        );
    }
    journal.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacting_stream_goes_on_through_its_owner_and_a_reload_sends_nothing_twice() {
    let journal = MemoryJournal::new();
    let compacting = || counter().max_events(4).at_limit(AtLimit::Compact);
    let mut nodes = Vec::new();
    for index in 0..2 {
        nodes.push(node(&journal, index, compacting()).await);
    }
    let mut alice = Player::link(nodes[1].port, "alice").await;
    alice.until(|seen| seen.projections.contains_key("tally")).await;
    for k in 0..10 {
        alice.client.send(increment(1)).await;
        if k == 5 {
            journal.settle();
            journal.move_owner("counter", 1);
        }
    }
    journal.settle();
    // alice got every event live (a compaction sends nothing): her fold is the count.
    alice
        .until(|seen| seen.events.get("counter").is_some_and(|events| events.len() == 10))
        .await;
    let (_, checkpoint) = journal.committed("counter");
    assert!(checkpoint.is_some(), "a compaction is checkpointed");
    // A reload of alice's node sends her nothing she has; then every event goes on as before.
    journal.reload("counter", 1);
    journal.reload("tally", 1);
    alice.client.send(increment(2)).await;
    alice
        .until(|seen| seen.events.get("counter").is_some_and(|events| events.len() == 11))
        .await;
    let last = alice.events().last().cloned().unwrap();
    assert_eq!(last.1["payload"]["by"], 2);
    // A late user's catch-up folds to the server's count: the snapshot event, then the events after it.
    journal.settle();
    for node in &nodes {
        assert_eq!(node.counter.with_state(|counter| counter.count), Ok(12));
        assert!(node.counter.len() <= 4);
    }
    let mut bob = Player::link(nodes[0].port, "bob").await;
    bob.until(|seen| seen.projections.contains_key("tally")).await;
    let mut count = 0;
    for (dispatcher, event) in bob.events() {
        match event["type"].as_str() {
            Some("snapshot") => {
                assert_eq!(dispatcher, emitter_state::SNAPSHOT_DISPATCHER);
                count = event["payload"]["count"].as_u64().unwrap();
            }
            _ => count += event["payload"]["by"].as_u64().unwrap(),
        }
    }
    assert_eq!(count, 12);
    // Server-side compaction and rotation go through the owner too.
    nodes[0].counter.compact().unwrap();
    nodes[0]
        .counter
        .rotate(&nodes[0].server, Counter { count: 100 })
        .unwrap();
    journal.settle();
    for node in &nodes {
        assert_eq!(node.counter.with_state(|counter| counter.count), Ok(100));
        assert_eq!(node.counter.len(), 1);
    }
    let rotated = alice.client.recv_type("stream/append").await;
    assert_eq!(
        rotated["payload"]["event"],
        json!({ "type": "snapshot", "payload": { "count": 100 } })
    );
    journal.stop();
}
