//! The application-facing API: typed payloads, the checks on what the server sends, and futures that end with the
//! server.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use emitter_core::{Error, Message, Server};
use parking_lot::Mutex;
use serde_json::json;
use support::{connect, link_request, listening, send};

#[derive(Debug, PartialEq, serde::Deserialize)]
struct Move {
    x: u8,
    y: u8,
}

#[test]
fn on_payload_reads_its_type_and_counts_what_does_not_fit() {
    let server = listening(Server::builder());
    let moves: Arc<Mutex<Vec<(String, Move)>>> = Arc::default();
    let m = moves.clone();
    server.on_payload("game/move", move |u, mv: Move| m.lock().push((u.to_string(), mv)));
    let (id, _) = connect(&server);
    send(&server, id, link_request("ann"));
    send(&server, id, json!({"type": "game/move", "payload": {"x": 1, "y": 2}}));
    send(&server, id, json!({"type": "game/move", "payload": "sideways"}));
    send(&server, id, json!({"type": "game/move"}));
    send(&server, id, json!({"type": "game/other", "payload": {"x": 3, "y": 4}}));
    assert_eq!(*moves.lock(), [("ann".to_owned(), Move { x: 1, y: 2 })]);
    assert_eq!(
        server.stats().payload_mismatches,
        2,
        "the string and the missing payload"
    );
}

#[test]
fn a_missing_payload_reads_as_null_or_as_an_empty_object() {
    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(default)]
    struct Options {
        fast: bool,
    }
    let bare = Message::new("game/start");
    assert_eq!(bare.payload_as::<Option<u8>>().unwrap(), None);
    assert_eq!(bare.payload_as::<()>().unwrap(), ());
    assert_eq!(bare.payload_as::<Options>().unwrap(), Options::default());
    assert!(
        bare.payload_as::<Move>().is_err(),
        "a struct with required fields still needs them"
    );
}

#[test]
fn the_server_sends_no_krmx_messages_of_its_own_and_reports_payloads_it_cannot_serialize() {
    let server = listening(Server::builder());
    let (id, outbox) = connect(&server);
    send(&server, id, link_request("ann"));
    outbox.take();
    let fake = Message::with_payload("krmx/left", json!({"username": "ann"}));
    let reserved = Error::ReservedType("krmx/left".to_owned());
    assert_eq!(server.send("ann", &fake), Err(reserved.clone()));
    assert_eq!(server.broadcast(&fake, None), Err(reserved.clone()));
    assert_eq!(
        server.send_payload("ann", "krmx/left", &json!({"username": "ann"})),
        Err(reserved)
    );
    assert_eq!(
        Error::ReservedType("krmx/x".into()).to_string(),
        "cannot send a message of type krmx/x: the krmx/ prefix is reserved for the protocol"
    );
    // JSON object keys are strings: a map keyed by tuples does not serialize.
    let unserializable: HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
    let error = server
        .broadcast_payload("game/board", &unserializable, None)
        .unwrap_err();
    assert!(matches!(error, Error::Serialize(_)), "{error}");
    assert!(error.to_string().starts_with("cannot serialize the payload: "));
    assert!(outbox.take().is_empty(), "nothing was sent");

    server.send_payload("ann", "game/board", &[[0u8; 3]; 3]).unwrap();
    assert_eq!(
        outbox.take(),
        [json!({"type": "game/board", "payload": [[0, 0, 0], [0, 0, 0], [0, 0, 0]]})]
    );
}

#[test]
fn listeners_get_the_server_and_need_no_clone_of_it() {
    let server = listening(Server::builder());
    server.on_link(|u| {
        u.send_payload("room/welcome", &u.server().users().len()).unwrap();
    });
    let (id, outbox) = connect(&server);
    send(&server, id, link_request("ann"));
    assert_eq!(
        outbox.take().last(),
        Some(&json!({"type": "room/welcome", "payload": 1}))
    );
}

#[tokio::test]
async fn a_pending_wait_ends_with_an_error_when_the_server_closes() {
    let server = listening(Server::builder());
    let link = server.wait_for_link();
    let message = server.wait_for_message_when(|_, m| m.kind == "never");
    server.close().await.unwrap();
    let link = tokio::time::timeout(Duration::from_secs(5), link)
        .await
        .expect("it ended");
    assert_eq!(link, Err(Error::ServerClosed));
    let message = tokio::time::timeout(Duration::from_secs(5), message)
        .await
        .expect("it ended");
    assert!(matches!(message, Err(Error::ServerClosed)));
}

#[tokio::test]
async fn a_pending_wait_does_not_keep_the_server_alive() {
    let server = Server::new();
    let link = server.wait_for_link();
    drop(server);
    let ended = tokio::time::timeout(Duration::from_secs(5), link)
        .await
        .expect("it ended");
    assert_eq!(
        ended,
        Err(Error::ServerClosed),
        "the server was dropped, and its listeners with it"
    );
}

/// On one process every change is this process's: `on_membership` hears each, numbered from 1, before the change's
/// own listeners (so a change a `join` listener makes comes after it), and `send_here` sends to a linked user.
#[test]
fn on_membership_hears_every_change_of_one_process_in_order() {
    let server = listening(Server::builder());
    type Heard = Vec<(u64, &'static str, String)>;
    let heard: Arc<Mutex<Heard>> = Arc::default();
    let h = heard.clone();
    server.on_membership(move |server, change| {
        h.lock()
            .push((change.seq, change.kind.name(), change.username.to_owned()));
        if change.kind == emitter_core::MembershipKind::Link {
            assert!(server.is_linked_here(change.username));
            server
                .send_payload_here(change.username, "app/hi", &change.seq)
                .unwrap();
        }
    });
    // A join listener that kicks a bot at once: its leave comes after its join, for every listener.
    server.on_join(|u| {
        if u == "bot" {
            let _ = u.server().kick("bot");
        }
    });
    let (id, outbox) = connect(&server);
    send(&server, id, link_request("ann"));
    server.join("bot").unwrap();
    send(&server, id, json!({"type": "krmx/unlink"}));
    assert_eq!(
        *heard.lock(),
        [
            (1, "join", "ann".to_owned()),
            (2, "link", "ann".to_owned()),
            (3, "join", "bot".to_owned()),
            (4, "leave", "bot".to_owned()),
            (5, "unlink", "ann".to_owned()),
        ]
    );
    let frames = outbox.frames();
    assert!(frames.contains(&json!({"type": "app/hi", "payload": 2})), "{frames:?}");
    assert!(!server.is_linked_here("ann"));
    assert_eq!(
        server.send_here("ann", &Message::new("app/x")),
        Err(Error::SendToUnlinkedUser)
    );
}
