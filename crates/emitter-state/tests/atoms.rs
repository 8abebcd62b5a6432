//! The Atom model over the core, without sockets: what clients send and get.

mod support;

use emitter_state::{Atom, AtomModel};
use serde_json::{json, Value};
use support::{listening, Conn};

fn set(key: &str, atom: Value) -> Value {
    json!({"type": "atom/set", "payload": {"key": key, "atom": atom}})
}

#[test]
fn a_set_goes_to_everyone_the_sender_included_and_a_linking_user_gets_every_atom() {
    let server = listening();
    let atoms = AtomModel::new().register(&server);
    let (mut alice, mut bob) = (Conn::settled(&server, "alice"), Conn::settled(&server, "bob"));

    alice.send(set("color", json!("blue")));
    alice.send(set("volume", json!(0.5)));
    bob.send(set("muted", json!(false)));
    let expected = [
        set("color", json!("blue")),
        set("volume", json!(0.5)),
        set("muted", json!(false)),
    ];
    assert_eq!(alice.read_app(), expected);
    assert_eq!(bob.read_app(), expected);
    assert_eq!(atoms.get("volume"), Some(Atom::number(0.5).unwrap()));

    // One atom/set per atom, after the snapshot.
    let mut carol = Conn::linked(&server, "carol");
    let frames = carol.read();
    let linked_self = frames
        .iter()
        .position(|f| f["type"] == "krmx/linked" && f["payload"]["username"] == "carol")
        .unwrap();
    let replay: Vec<&Value> = frames[linked_self + 1..].iter().collect();
    assert_eq!(
        replay,
        [
            &set("color", json!("blue")),
            &set("muted", json!(false)),
            &set("volume", json!(0.5))
        ]
    );
    assert_eq!(atoms.stats().accepted, 3);
}

#[test]
fn anything_but_a_string_number_or_boolean_is_dropped_and_counted() {
    let server = listening();
    let atoms = AtomModel::new().register(&server);
    let mut alice = Conn::settled(&server, "alice");
    for bad in [
        set("k", json!(null)),
        set("k", json!({"a": 1})),
        set("k", json!([1])),
        json!({"type": "atom/set", "payload": {"key": 3, "atom": 1}}),
        json!({"type": "atom/set", "payload": "k"}),
        json!({"type": "atom/set"}),
    ] {
        alice.send(bad);
    }
    alice.send(set("k", json!(1)));
    assert_eq!(alice.read_app(), [set("k", json!(1))]);
    assert_eq!(atoms.stats().malformed, 6);
    assert_eq!(atoms.stats().accepted, 1);
}

#[test]
fn with_strict_prefixes_a_user_sets_only_its_own_keys_and_keys_without_a_slash() {
    let server = listening();
    let atoms = AtomModel::new().strict_key_prefixes(true).register(&server);
    let mut alice = Conn::settled(&server, "alice");
    alice.send(set("alice/color", json!("red")));
    alice.send(set("bob/color", json!("red")));
    alice.send(set("alicex/color", json!("red")));
    alice.send(set("round", json!(2)));
    assert_eq!(
        alice.read_app(),
        [set("alice/color", json!("red")), set("round", json!(2))]
    );
    assert_eq!(atoms.stats().forbidden, 2);

    // The server is not bound by the rule.
    atoms.set(&server, "bob/color", "green").unwrap();
    assert_eq!(alice.read_app(), [set("bob/color", json!("green"))]);
}

#[test]
fn without_strict_prefixes_anyone_sets_any_key() {
    let server = listening();
    let atoms = AtomModel::new().register(&server);
    let mut alice = Conn::settled(&server, "alice");
    alice.send(set("bob/color", json!("red")));
    assert_eq!(alice.read_app(), [set("bob/color", json!("red"))]);
    assert_eq!(atoms.stats().forbidden, 0);
}

#[test]
fn the_atoms_are_cleared_when_the_last_user_leaves_if_asked() {
    let server = listening();
    let kept = AtomModel::new().register(&server);
    let cleared = AtomModel::new().clear_when_empty(true).register(&server);
    let mut alice = Conn::linked(&server, "alice");
    let bob = Conn::linked(&server, "bob");
    alice.send(set("k", json!(1)));
    alice.send(json!({"type": "krmx/leave"}));
    assert_eq!(cleared.keys(), ["k"]); // bob is still there
    bob.send(json!({"type": "krmx/leave"}));
    assert!(cleared.keys().is_empty());
    assert_eq!(kept.keys(), ["k"]);
    alice.read();
}

#[test]
fn new_keys_beyond_the_bound_are_dropped_but_known_keys_still_change() {
    let server = listening();
    let atoms = AtomModel::new().max_atoms(2).register(&server);
    let mut alice = Conn::settled(&server, "alice");
    alice.send(set("a", json!(1)));
    alice.send(set("b", json!(1)));
    alice.send(set("c", json!(1)));
    alice.send(set("a", json!(2)));
    assert_eq!(
        alice.read_app(),
        [set("a", json!(1)), set("b", json!(1)), set("a", json!(2))]
    );
    assert_eq!(atoms.stats().full, 1);
    atoms.set(&server, "c", true).unwrap(); // the server is not bound
    assert_eq!(atoms.keys(), ["a", "b", "c"]);
}

#[test]
fn a_model_registered_on_a_running_server_catches_up_the_users_linked_already() {
    let server = listening();
    let mut alice = Conn::settled(&server, "alice");
    let atoms = AtomModel::new().register(&server);
    atoms.set(&server, "k", "v").unwrap();
    assert_eq!(alice.read_app(), [set("k", json!("v"))]);
    atoms.unregister();
    alice.send(set("k", json!("w")));
    assert_eq!(alice.read_app(), Vec::<Value>::new());
    assert_eq!(atoms.get("k"), Some(Atom::from("v")));
}
