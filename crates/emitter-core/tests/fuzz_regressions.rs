//! Regression tests for what the fuzz targets (`fuzz/`) found.
//!
//! - The `actions` target's first run stopped on a LeakSanitizer report: every server its harness built was leaked.
//!   The harness's listeners hold clones of the server (as the crate's own examples do), the listener lists live in
//!   the server, and nothing ever empties them: a reference cycle, which `close()` does not break. One server per
//!   process never notices; an application that makes a server per room, or a test suite, leaks each one with
//!   everything its listeners hold. The fuzz runs pass `-detect_leaks=0` until this is fixed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use emitter_core::Server;

/// Sets its flag when dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn listener_state(server: &Server, hold_server: bool) -> Arc<AtomicBool> {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(dropped.clone());
    let held = hold_server.then(|| server.clone());
    server.on_join(move |_| {
        let _ = (&flag, &held);
    });
    dropped
}

#[test]
fn a_server_whose_listeners_hold_nothing_is_freed() {
    let server = Server::new();
    let dropped = listener_state(&server, false);
    drop(server);
    assert!(dropped.load(Ordering::SeqCst));
}

#[tokio::test]
async fn a_closed_server_whose_listeners_hold_a_clone_of_it_is_freed() {
    let server = Server::new();
    let dropped = listener_state(&server, true);
    server.host().start().unwrap();
    server.host().listening(1).unwrap();
    server.close().await.unwrap();
    drop(server);
    assert!(
        dropped.load(Ordering::SeqCst),
        "the server and its listeners were leaked"
    );
}

/// Found by the `parse` target: a JSON array is read as a message, its items taken as `type` and `payload` in order
/// (serde's derived `Deserialize` accepts a sequence for a struct). The reference, and `InvalidMessage`'s own
/// documentation, say a message is an object with a string `type`; anything else is `invalid message`.
#[test]
fn an_array_is_not_a_message() {
    use emitter_core::protocol::{parse, parse_bounded, ClientMessage};
    for raw in [
        r#"["krmx/leave"]"#,
        r#"["app/x", 1]"#,
        r#"["krmx/link", {"username": "simon", "version": "0.6.0"}]"#,
    ] {
        assert!(
            parse(raw.as_bytes()).is_err(),
            "{raw} parsed as {:?}",
            parse(raw.as_bytes())
        );
        assert!(parse_bounded(raw.as_bytes(), 32).is_err(), "{raw}");
    }
    // What it leads to: a linked client's array is handled like the object it is not.
    let leave = parse(br#"["krmx/leave"]"#).map(ClientMessage::from);
    assert!(leave.is_err(), "{leave:?}");
}

/// Found by the `parse` target: a number in a client's message can change when the message is relayed. serde_json,
/// without its `float_roundtrip` feature, parses some decimal numbers to a neighbour of the nearest double; the relay
/// then writes that neighbour, which reads back as yet another double. Here 8888888888888888088888888888888888888888
/// 888888888888888888 comes back out as 8.888888888888888e57 and, read again, as 8.888888888888889e57.
#[test]
fn a_relayed_number_is_unchanged() {
    use emitter_core::protocol::{parse, Frame};
    let raw = br#"{"type":"app/n","payload":8888888888888888088888888888888888888888888888888888888888}"#;
    let message = parse(raw).unwrap();
    let relayed = Frame::from(&message);
    assert_eq!(
        parse(relayed.bytes()).unwrap(),
        message,
        "relayed as {}",
        relayed.as_str()
    );
    let exact: f64 = "8888888888888888088888888888888888888888888888888888888888"
        .parse()
        .unwrap();
    assert_eq!(message.payload.unwrap().as_f64(), Some(exact), "not the nearest double");
}
