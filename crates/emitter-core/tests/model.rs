//! Model-based property tests: random interleavings of client and server actions, driven through the real state
//! machine with fake connections, checked step by step against a simple model and the design invariants.
//!
//! What is checked, and how, is in `model/harness.rs`. Each property runs proptest's default number of cases (256,
//! or `PROPTEST_CASES`); a failing case is shrunk to a short sequence of actions and printed.

#[path = "model/harness.rs"]
mod harness;

use harness::{link, observe, populated, Action, Ask, ClientAction, Harness, SeenStep, Setup, NAMES};
use proptest::prelude::*;
use serde_json::{json, Value};

fn name() -> impl Strategy<Value = usize> {
    // Mostly the three plain valid names, so that users collide; sometimes the ones with listener reactions or an
    // invalid one.
    prop_oneof![
        6 => 0..3usize,
        3 => 3..6usize,
        1 => 6..NAMES.len(),
    ]
}

fn ask() -> impl Strategy<Value = Ask> {
    prop::sample::select(Ask::ALL.to_vec())
}

fn client_action() -> impl Strategy<Value = ClientAction> {
    prop_oneof![
        10 => (name(), prop::bool::weighted(0.9))
            .prop_map(|(name, good_version)| ClientAction::Link { name, good_version }),
        1 => Just(ClientAction::LinkMalformed),
        2 => Just(ClientAction::Unlink),
        2 => Just(ClientAction::Leave),
        4 => Just(ClientAction::Custom),
        4 => (ask(), name()).prop_map(|(ask, name)| ClientAction::Ask { ask, name }),
        1 => Just(ClientAction::UnknownReserved),
        1 => Just(ClientAction::Invalid),
        1 => prop::collection::vec(any::<u8>(), 0..24).prop_map(ClientAction::Raw),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => Just(Action::Connect),
        12 => (0..5usize, client_action()).prop_map(|(c, client)| Action::Send(c, client)),
        2 => (0..6usize).prop_map(Action::Drop),
        1 => name().prop_map(Action::Join),
        1 => name().prop_map(Action::Unlink),
        1 => name().prop_map(Action::Kick),
        2 => name().prop_map(Action::SendTo),
        1 => prop::option::of(name()).prop_map(Action::Broadcast),
    ]
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.3),
        prop::option::weighted(0.15, 0..6usize),
        prop::option::weighted(0.15, 0..4usize),
        prop::option::weighted(0.2, 0..4usize),
    )
        .prop_map(
            |(accept_new_users, close_at_end, max_connections, max_unlinked_connections, max_users)| Setup {
                accept_new_users,
                close_at_end,
                max_connections,
                max_unlinked_connections,
                max_users,
            },
        )
}

proptest! {
    /// The server agrees with the model, and the invariants hold, after every step of any interleaving; half the
    /// runs start from a populated server.
    #[test]
    fn the_server_follows_the_model(
        setup in setup(),
        busy in any::<bool>(),
        actions in prop::collection::vec(action(), 1..80),
    ) {
        let actions = if busy { [populated(), actions].concat() } else { actions };
        if let Err(divergence) = Harness::run(setup, &actions) {
            return Err(TestCaseError::fail(divergence));
        }
    }

    /// New users welcome: the longest interleavings, where the most users are linked at once.
    #[test]
    fn long_runs(actions in prop::collection::vec(action(), 60..160)) {
        let setup = Setup { close_at_end: true, ..Setup::plain() };
        let actions = [populated(), actions].concat();
        if let Err(divergence) = Harness::run(setup, &actions) {
            return Err(TestCaseError::fail(divergence));
        }
    }
}

// ---- the harness can fail: each check catches a wrong server ----------------------------------------------------------

/// A sequence that the model and the checks must accept, written out by hand: two users, a relink, a kick from a
/// listener, a slow consumer and a close.
#[test]
fn a_hand_written_run_passes() {
    use Action::*;
    let actions = [
        Connect,
        Connect,
        Connect,
        link(0, 0),
        link(1, 1),
        link(2, 0), // already linked
        link(2, 3), // kim: accepted, then kicked on join
        link(2, 4), // kai
        Send(
            0,
            ClientAction::Ask {
                ask: Ask::Unlink,
                name: 4,
            },
        ), // kai is kicked on unlink
        Send(2, ClientAction::Custom), // unlinked connection
        Drop(1),
        Connect,
        link(3, 1), // bob relinks
        SendTo(1),
        Broadcast(Some(0)),
        Kick(0),
        Send(0, ClientAction::Leave), // no longer linked
    ];
    let setup = Setup {
        close_at_end: true,
        ..Setup::plain()
    };
    Harness::run(setup, &actions).unwrap();
}

/// The invariant checks are not vacuous: a listener that sends to a connection the harness believes unlinked (a
/// server that leaked frames) is caught.
#[test]
fn a_frame_to_an_unlinked_connection_is_caught() {
    use Action::*;
    let mut harness = Harness::new(Setup::plain());
    for action in [Connect, Connect, link(0, 0)] {
        harness.apply(&action).unwrap();
    }
    // Behind the model's back: the server joins a user. Every later check must notice.
    harness.server().join("bob").unwrap();
    let error = harness.apply(&Action::Broadcast(None)).unwrap_err();
    assert!(error.contains("the model expects"), "{error}");
}

fn user_frame(kind: &str, username: &str) -> Value {
    json!({"type": kind, "payload": {"username": username}})
}

fn step(frames: Vec<Value>, own: bool, asked: Option<&str>) -> SeenStep<'_> {
    SeenStep { frames, own, asked }
}

/// The per-connection observer, on its own: it accepts the protocol's streams and rejects the ones the invariants
/// forbid, whatever the model says.
#[test]
fn the_observer_accepts_what_the_protocol_sends_and_nothing_else() {
    let accepted = json!({"type": "krmx/accepted"});
    let rejected = json!({"type": "krmx/rejected", "payload": {"reason": "invalid username"}});
    // Rejected, then accepted with a snapshot; then others come and go; then unlinked, then its own left.
    let linking = vec![
        step(vec![rejected.clone()], true, Some("1up")),
        step(
            vec![
                accepted.clone(),
                user_frame("krmx/joined", "bob"),
                user_frame("krmx/joined", "ann"),
                user_frame("krmx/linked", "ann"),
            ],
            true,
            Some("ann"),
        ),
        step(
            vec![user_frame("krmx/linked", "bob"), json!({"type": "app/x"})],
            false,
            None,
        ),
    ];
    let view = observe(&linking).unwrap();
    assert_eq!(view, Some(vec![("bob".to_owned(), true), ("ann".to_owned(), true)]));
    let mut leaving = linking;
    leaving.push(step(
        vec![user_frame("krmx/unlinked", "ann"), user_frame("krmx/left", "ann")],
        true,
        None,
    ));
    assert_eq!(observe(&leaving).unwrap(), None);

    // Anything to an unlinked connection in a step that was not its own.
    let stray = [step(vec![user_frame("krmx/joined", "bob")], false, None)];
    assert!(observe(&stray).unwrap_err().contains("unlinked connection"));
    // An application message to an unlinked connection, even in its own step.
    let stray = [step(vec![json!({"type": "app/x"})], true, None)];
    assert!(observe(&stray).is_err());
    // Its own left long after its unlink.
    let mut late = leaving.clone();
    late.truncate(3);
    late.push(step(vec![user_frame("krmx/unlinked", "ann")], false, None));
    late.push(step(vec![user_frame("krmx/left", "ann")], false, None));
    assert!(observe(&late).is_err());
    // A view that does not add up: linked about a user never joined, a user left while linked.
    let mut inconsistent = leaving.clone();
    inconsistent.truncate(3);
    inconsistent.push(step(vec![user_frame("krmx/linked", "cat")], false, None));
    assert!(observe(&inconsistent).unwrap_err().contains("does not fit"));
    let mut inconsistent = leaving.clone();
    inconsistent.truncate(3);
    inconsistent.push(step(vec![user_frame("krmx/left", "bob")], false, None));
    assert!(observe(&inconsistent).is_err());
    // A reply to a link request on a linked connection.
    let mut twice = leaving.clone();
    twice.truncate(3);
    twice.push(step(vec![accepted], true, Some("bob")));
    assert!(observe(&twice).is_err());
}
