//! What a transport's writer sees: it waits on a connection's outbox and wakes for everything that has something for
//! that connection (a test with a waiting writer, not a harness that reads after every step).

mod support;

use std::time::Duration;

use emitter_core::protocol::Frame;
use emitter_core::transport::Outbox;
use emitter_core::{Message, Server};
use serde_json::{json, Value};
use support::{connect, link_request, listening, send};
use tokio::sync::mpsc;

/// A writer task: waits for the outbox, takes what it has, hands it on.
fn writer(outbox: Outbox) -> mpsc::UnboundedReceiver<Value> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            outbox.ready().await;
            let mut frames: Vec<Frame> = Vec::new();
            let closing = outbox.take(&mut frames, 64);
            for frame in frames {
                let _ = tx.send(serde_json::from_str::<Value>(frame.as_str()).unwrap());
            }
            if closing {
                return;
            }
        }
    });
    rx
}

async fn next(frames: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(5), frames.recv())
        .await
        .expect("the writer was not woken")
        .expect("the writer stopped")
}

fn about(kind: &str, username: &str) -> Value {
    json!({"type": kind, "payload": {"username": username}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_writer_wakes_for_everything_that_is_for_it() {
    let server = listening(Server::builder());
    // The connection under test, read by a real waiting writer.
    let (ann, outbox) = server.host().connect().unwrap();
    let mut frames = writer(outbox);
    server.host().receive(ann, link_request("ann").to_string().as_bytes());
    assert_eq!(next(&mut frames).await["type"], "krmx/accepted");
    assert_eq!(next(&mut frames).await, about("krmx/joined", "ann"));
    assert_eq!(next(&mut frames).await, about("krmx/linked", "ann"));

    // Each change on its own, so that no other change's wake-up covers for a missing one.
    server.join("bob").unwrap();
    assert_eq!(next(&mut frames).await, about("krmx/joined", "bob"));
    let (bob, _) = connect(&server);
    send(&server, bob, link_request("bob"));
    assert_eq!(next(&mut frames).await, about("krmx/linked", "bob"));
    server.broadcast(&Message::new("app/all"), None).unwrap();
    assert_eq!(next(&mut frames).await["type"], "app/all");
    server.send("ann", &Message::new("app/only-ann")).unwrap();
    assert_eq!(next(&mut frames).await["type"], "app/only-ann");
    send(&server, bob, json!({"type": "krmx/unlink"}));
    assert_eq!(next(&mut frames).await, about("krmx/unlinked", "bob"));
    server.kick("bob").unwrap();
    assert_eq!(next(&mut frames).await, about("krmx/left", "bob"));
    server.join("cat").unwrap();
    assert_eq!(next(&mut frames).await, about("krmx/joined", "cat"));
    server.unlink("ann").unwrap();
    assert_eq!(next(&mut frames).await, about("krmx/unlinked", "ann"));
    // Unlinked, the connection hears of nobody else, but still gets the replies to its own requests.
    server.join("dan").unwrap();
    send(&server, ann, json!({"type": "app/anything"}));
    assert_eq!(next(&mut frames).await["payload"]["reason"], "unlinked connection");
}
