//! Properties of the models over random sequences of links, unlinks, dropped connections and changes, driven on one
//! thread through the core (messages are handled inline, so each step's messages are queued when it returns): every
//! replica of a reference client applies what it gets and ends equal to the server, every optimistic id is answered
//! exactly once, and a stream's history keeps to its bound.

mod support;

use std::collections::BTreeMap;

use emitter_core::Server;
use emitter_state::{AtomModel, Projection, ProjectionModel, Stream, StreamModel};
use proptest::prelude::*;
use serde_json::{json, Value};
use support::{listening, Conn, Replica};

const USERS: [&str; 3] = ["ann", "ben", "cat"];

#[derive(Debug, Clone)]
enum Step {
    /// The user links on a new connection (if it has none linked).
    Link(usize),
    /// The user unlinks and links again on the same connection.
    Relink(usize),
    /// The user's connection drops.
    Drop(usize),
    /// The user leaves.
    Leave(usize),
    /// The user changes something, with or without an optimistic id: `kind` picks what.
    Change {
        user: usize,
        kind: u8,
        n: u8,
        optimistic: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0..USERS.len()).prop_map(Step::Link),
        1 => (0..USERS.len()).prop_map(Step::Relink),
        1 => (0..USERS.len()).prop_map(Step::Drop),
        1 => (0..USERS.len()).prop_map(Step::Leave),
        6 => (0..USERS.len(), 0..4u8, 0..5u8, any::<bool>())
            .prop_map(|(user, kind, n, optimistic)| Step::Change { user, kind, n, optimistic }),
    ]
}

/// One user's client: its connection, if linked, and the replica of what it got.
#[derive(Default)]
struct Client {
    conn: Option<Conn>,
    replica: Replica,
}

/// Plays `steps` on `server`; `change` sends what a `Change` step sends, with an optimistic id when the step asks for
/// one and `optimistic_ids` is set (then its answer is checked). Returns the clients, with everything they got read
/// into their replicas.
fn play(
    server: &Server,
    steps: &[Step],
    optimistic_ids: bool,
    change: impl Fn(&Conn, u8, u8, Option<String>),
) -> Vec<Client> {
    let mut clients: Vec<Client> = USERS.iter().map(|_| Client::default()).collect();
    let mut next_id = 0;
    for step in steps {
        match *step {
            Step::Link(user) => {
                if clients[user].conn.is_none() {
                    clients[user].replica = Replica::new(USERS[user]);
                    clients[user].conn = Some(Conn::linked(server, USERS[user]));
                }
            }
            Step::Relink(user) => {
                if let Some(conn) = &mut clients[user].conn {
                    conn.send(json!({"type": "krmx/unlink"}));
                    conn.link(USERS[user]);
                }
            }
            Step::Drop(user) => {
                if let Some(conn) = clients[user].conn.take() {
                    conn.disconnect();
                }
            }
            Step::Leave(user) => {
                if let Some(conn) = clients[user].conn.take() {
                    conn.send(json!({"type": "krmx/leave"}));
                }
            }
            Step::Change {
                user,
                kind,
                n,
                optimistic,
            } => {
                if let Some(conn) = &clients[user].conn {
                    let id = (optimistic && optimistic_ids).then(|| {
                        next_id += 1;
                        format!("opt-{next_id}")
                    });
                    change(conn, kind, n, id.clone());
                    if let Some(id) = id {
                        // The action was handled inline: its answer is queued now, and must be the only one.
                        let client = &mut clients[user];
                        read(client);
                        let answers = client
                            .replica
                            .resolved
                            .get("d")
                            .map_or(0, |r| r.iter().filter(|(i, _)| *i == id).count());
                        assert_eq!(answers, 1, "{id} of {}", USERS[user]);
                    }
                }
            }
        }
        for client in &mut clients {
            read(client);
        }
    }
    clients
}

fn read(client: &mut Client) {
    if let Some(conn) = &mut client.conn {
        client.replica.apply_all(&conn.read());
        assert_eq!(client.replica.violations, Vec::<String>::new());
    }
}

/// Each user's pile of numbers; everyone sees every pile's size, only their own pile's numbers.
fn piles(server: &Server) -> Projection<BTreeMap<String, Vec<u8>>> {
    type Piles = BTreeMap<String, Vec<u8>>;
    ProjectionModel::new(Piles::new(), |piles: &Piles, username: &str| {
        json!({
            "mine": piles.get(username),
            "sizes": piles.iter().map(|(who, pile)| (who.clone(), pile.len())).collect::<BTreeMap<_, _>>(),
        })
    })
    .when("push", |piles: &mut Piles, who: &str, n: u8| {
        piles.entry(who.to_owned()).or_default().push(n)
    })
    .when("pop", |piles: &mut Piles, who: &str, (): ()| {
        piles.get_mut(who).and_then(Vec::pop).map(|_| ()).ok_or("an empty pile")
    })
    .when("peek", |_: &mut Piles, _: &str, (): ()| {})
    .register(server, "d")
}

fn notes(server: &Server, max_events: usize) -> Stream<Vec<String>> {
    StreamModel::new(Vec::new())
        .when("note", |notes: &mut Vec<String>, who: &str, n: u8| {
            notes.push(format!("{who}{n}"))
        })
        .when(
            "odd",
            |_: &mut Vec<String>, _: &str, n: u8| if n % 2 == 1 { Ok(()) } else { Err("even") },
        )
        .max_events(max_events)
        .register(server, "d")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn projection_replicas_apply_every_delta_and_end_equal(steps in prop::collection::vec(step(), 1..60)) {
        let server = listening();
        let piles = piles(&server);
        let clients = play(&server, &steps, true, |conn, kind, n, id| {
            let action = match kind {
                0 | 1 => json!({"type": "push", "payload": n}),
                2 => json!({"type": "pop"}),
                _ => json!({"type": if n % 2 == 0 { "peek" } else { "unknown" }}),
            };
            let mut payload = json!({"domain": "d", "action": action});
            if let Some(id) = id {
                payload["optimisticId"] = Value::String(id);
            }
            conn.send(json!({"type": "projection/action", "payload": payload}));
        });
        for (user, client) in clients.iter().enumerate() {
            if client.conn.is_some() {
                prop_assert_eq!(&client.replica.projections["d"], &piles.projection_of(USERS[user]).unwrap());
            }
        }
    }

    #[test]
    fn every_linked_client_holds_the_bounded_history(
        steps in prop::collection::vec(step(), 1..60),
        max_events in 0..12usize,
    ) {
        let server = listening();
        let stream = notes(&server, max_events);
        let clients = play(&server, &steps, false, |conn, kind, n, _| {
            let event = if kind < 2 { json!({"type": "note", "payload": n}) } else { json!({"type": "odd", "payload": n}) };
            conn.send(json!({"type": "stream/append", "payload": {"domain": "d", "dispatcher": "x", "event": event}}));
        });
        let history: Vec<(String, Value)> = stream.history().into_iter().map(|e| (e.dispatcher, e.event)).collect();
        prop_assert!(history.len() <= max_events);
        let stats = stream.stats();
        prop_assert_eq!(stats.accepted as usize, history.len());
        for client in &clients {
            if client.conn.is_some() {
                prop_assert_eq!(client.replica.events.get("d").cloned().unwrap_or_default(), history.clone());
            }
        }
    }

    #[test]
    fn every_linked_client_ends_with_the_servers_atoms(steps in prop::collection::vec(step(), 1..60)) {
        let server = listening();
        let atoms = AtomModel::new().strict_key_prefixes(true).clear_when_empty(true).register(&server);
        let clients = play(&server, &steps, false, |conn, kind, n, _| {
            let key = match kind {
                0 => "shared".to_owned(),
                1 => format!("{}/k", USERS[usize::from(n) % USERS.len()]), // often another user's: forbidden
                _ => format!("k{n}"),
            };
            conn.send(json!({"type": "atom/set", "payload": {"key": key, "atom": n}}));
        });
        let expected: BTreeMap<String, Value> =
            atoms.all().into_iter().map(|(k, a)| (k, serde_json::to_value(a).unwrap())).collect();
        for client in &clients {
            if client.conn.is_some() {
                prop_assert_eq!(&client.replica.atoms, &expected);
            }
        }
    }
}
