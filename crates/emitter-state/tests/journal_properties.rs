//! The journaled models over random runs: three servers ("nodes", driven through the core without sockets, each with
//! its own users) share the in-memory journal of `support/journal.rs`, while users link, drop and link again on any
//! node, act, and the owner of a domain moves or a node's replica loads again at any point. Once the journal settled,
//! every node's replica is the same state, and every linked client holds exactly what its node's replica says it
//! should (its projection by the mapper, the history, the atoms), with each optimistic id it sent answered exactly
//! once, in the order sent. (An action is its user's, not its connection's: one that the user's previous connection
//! sent and that was committed after the user linked again is answered on the new connection, which a client takes as
//! an id it does not know. Those may come first, once each.)

mod support;

use std::collections::BTreeMap;

use emitter_core::Server;
use emitter_state::{AtLimit, AtomModel, Atoms, Projection, ProjectionModel, Stream, StreamModel};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use support::journal::MemoryJournal;
use support::{listening, Conn, Replica};

const NODES: usize = 3;
const USERS: [&str; 3] = ["ann", "ben", "cat"];
const DOMAINS: [&str; 3] = ["atoms", "log", "score"];

#[derive(Debug, Clone)]
enum Step {
    /// The user links on a node (dropping its connection first, if it has one).
    Link(usize, usize),
    /// The user's connection drops.
    Drop(usize),
    /// The user acts: `kind` picks what, `n` how much (0 is refused), with or without an optimistic id.
    Act {
        user: usize,
        kind: u8,
        n: u8,
        optimistic: bool,
    },
    /// The owner of a domain moves to a node.
    Move(usize, usize),
    /// A node's replica of a domain loads again.
    Reload(usize, usize),
    /// The journal catches up with every request.
    Settle,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0..USERS.len(), 0..NODES).prop_map(|(user, node)| Step::Link(user, node)),
        1 => (0..USERS.len()).prop_map(Step::Drop),
        8 => (0..USERS.len(), 0..3u8, 0..4u8, any::<bool>())
            .prop_map(|(user, kind, n, optimistic)| Step::Act { user, kind, n, optimistic }),
        2 => (0..DOMAINS.len(), 0..NODES).prop_map(|(domain, node)| Step::Move(domain, node)),
        1 => (0..DOMAINS.len(), 0..NODES).prop_map(|(domain, node)| Step::Reload(domain, node)),
        1 => Just(Step::Settle),
    ]
}

#[derive(Default, Serialize, Deserialize)]
struct Score {
    by: BTreeMap<String, u64>,
}

#[derive(Default, Serialize, Deserialize)]
struct Sum {
    sum: u64,
}

struct Node {
    server: Server,
    score: Projection<Score>,
    log: Stream<Sum>,
    atoms: Atoms,
}

fn node(journal: &MemoryJournal, index: usize) -> Node {
    let server = listening();
    let on = journal.node(index);
    let atoms = AtomModel::new()
        .register_journaled(&server, "atoms", on.clone())
        .unwrap();
    let log = StreamModel::new(Sum::default())
        .when("add", |sum: &mut Sum, _: &str, n: u64| {
            if n == 0 {
                return Err("nothing to add");
            }
            sum.sum += n;
            Ok(())
        })
        .compaction("snapshot", |sum: &Sum| sum.sum)
        .max_events(5)
        .at_limit(AtLimit::Compact)
        .register_journaled(&server, "log", on.clone())
        .unwrap();
    let score = ProjectionModel::new(Score::default(), |score: &Score, username: &str| {
        json!({ "mine": score.by.get(username), "total": score.by.values().sum::<u64>() })
    })
    .when("score", |score: &mut Score, who: &str, n: u64| {
        if n == 0 {
            return Err("no score");
        }
        *score.by.entry(who.to_owned()).or_default() += n;
        Ok(())
    })
    .register_journaled(&server, "score", on)
    .unwrap();
    Node {
        server,
        score,
        log,
        atoms,
    }
}

/// A user's client on one node: its connection, what it got, and the optimistic ids it sent.
struct Client {
    node: usize,
    conn: Conn,
    replica: Replica,
    ids: Vec<String>,
    /// The ids the user's previous connections sent and did not get an answer to.
    stale: Vec<String>,
}

impl Client {
    fn answered(&self) -> Vec<String> {
        self.replica
            .resolved
            .get("score")
            .map(|resolved| resolved.iter().map(|(id, _)| id.clone()).collect())
            .unwrap_or_default()
    }

    /// The ids it sent that it had no answer to.
    fn unanswered(&self) -> Vec<String> {
        let answered = self.answered();
        let mut unanswered = self.stale.clone();
        unanswered.extend(self.ids.iter().cloned());
        unanswered.retain(|id| !answered.contains(id));
        unanswered
    }
}

fn run(steps: &[Step]) -> Result<(), TestCaseError> {
    let journal = MemoryJournal::new();
    let nodes: Vec<Node> = (0..NODES).map(|index| node(&journal, index)).collect();
    let mut clients: Vec<Option<Client>> = (0..USERS.len()).map(|_| None).collect();
    // Per user, the ids its dropped connections sent and had no answer to.
    let mut leftover: Vec<Vec<String>> = vec![Vec::new(); USERS.len()];
    let mut next_id = 0;
    for step in steps {
        match *step {
            Step::Link(user, node) => {
                if let Some(old) = clients[user].take() {
                    old.conn.disconnect();
                    leftover[user] = old.unanswered();
                }
                let stale = std::mem::take(&mut leftover[user]);
                let mut replica = Replica::new(USERS[user]);
                let mut conn = Conn::linked(&nodes[node].server, USERS[user]);
                replica.apply_all(&conn.read());
                clients[user] = Some(Client {
                    node,
                    conn,
                    replica,
                    ids: Vec::new(),
                    stale,
                });
            }
            Step::Drop(user) => {
                if let Some(old) = clients[user].take() {
                    old.conn.disconnect();
                    leftover[user] = old.unanswered();
                }
            }
            Step::Act {
                user,
                kind,
                n,
                optimistic,
            } => {
                let Some(client) = clients[user].as_mut() else { continue };
                let message = match kind {
                    0 => {
                        let mut payload = json!({ "domain": "score", "action": { "type": "score", "payload": n } });
                        if optimistic {
                            next_id += 1;
                            let id = format!("id{next_id}");
                            payload["optimisticId"] = json!(id);
                            client.ids.push(id);
                        }
                        json!({ "type": "projection/action", "payload": payload })
                    }
                    1 => {
                        json!({ "type": "stream/append", "payload": { "domain": "log", "dispatcher": "me", "event": { "type": "add", "payload": n } } })
                    }
                    _ => json!({ "type": "atom/set", "payload": { "key": format!("k{n}"), "atom": USERS[user] } }),
                };
                client.conn.send(message);
            }
            Step::Move(domain, node) => journal.move_owner(DOMAINS[domain], node),
            Step::Reload(domain, node) => journal.reload(DOMAINS[domain], node),
            Step::Settle => journal.settle(),
        }
        for client in clients.iter_mut().flatten() {
            let frames = client.conn.read();
            client.replica.apply_all(&frames);
        }
    }
    journal.settle();
    // Every node's replica is the one state.
    let first = &nodes[0];
    for node in &nodes[1..] {
        prop_assert_eq!(
            node.score.projection_of("ann").unwrap(),
            first.score.projection_of("ann").unwrap()
        );
        prop_assert_eq!(node.log.history(), first.log.history());
        prop_assert_eq!(node.log.with_state(|sum| sum.sum), first.log.with_state(|sum| sum.sum));
        prop_assert_eq!(node.atoms.all(), first.atoms.all());
    }
    // Every linked client holds what its node says.
    for (user, client) in clients.iter_mut().enumerate() {
        let Some(client) = client else { continue };
        client.replica.apply_all(&client.conn.read());
        let replica = &client.replica;
        prop_assert!(replica.violations.is_empty(), "{:?}", replica.violations);
        let node = &nodes[client.node];
        prop_assert_eq!(
            replica.projections.get("score"),
            Some(&node.score.projection_of(USERS[user]).unwrap())
        );
        let history: Vec<(String, Value)> = node
            .log
            .history()
            .into_iter()
            .map(|entry| (entry.dispatcher, entry.event))
            .collect();
        // Live, a compaction is not sent: the client holds every event since its link (from the snapshot it got
        // then), which folds to the same sum as the history (once each: every event adds at least 1).
        let held = replica.events.get("log").cloned().unwrap_or_default();
        let fold = |events: &[(String, Value)]| {
            events.iter().fold(0, |sum, (_, event)| match event["type"].as_str() {
                Some("snapshot") => event["payload"].as_u64().unwrap(),
                _ => sum + event["payload"].as_u64().unwrap(),
            })
        };
        prop_assert_eq!(fold(&held), fold(&history));
        let atoms: BTreeMap<String, Value> = node
            .atoms
            .all()
            .into_iter()
            .map(|(key, atom)| (key, serde_json::to_value(atom).unwrap()))
            .collect();
        prop_assert_eq!(&replica.atoms, &atoms);
        let answered = client.answered();
        let (earlier, own) = answered.split_at(answered.len().saturating_sub(client.ids.len()));
        prop_assert_eq!(own, &client.ids[..], "each id answered once, in order: {:?}", answered);
        let mut stale = client.stale.iter();
        prop_assert!(
            earlier.iter().all(|id| stale.any(|left| left == id)),
            "answers before its own are its user's earlier ones, once each: {:?} of {:?}",
            earlier,
            client.stale
        );
    }
    journal.stop();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn every_client_on_every_node_holds_the_one_state(steps in proptest::collection::vec(step(), 1..60)) {
        run(&steps)?;
    }
}
