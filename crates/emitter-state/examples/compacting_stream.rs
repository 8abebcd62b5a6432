//! A compacting stream for the interop test against the reference client (`tests/interop/test/stream-compaction.test.js`).
//!
//! Serves, on a free loopback port, the stream `counter`: state `{count, last}`, event `increment` with an integer
//! payload `by` (`count += by`, `last` = the dispatcher), a snapshot event `snapshot` whose payload is the state as
//! the client holds it, a history of `MAX_EVENTS` events (10 unless set) compacted at the limit. A linked user's
//! message `test/rotate` rotates the stream back to `{count: 0, last: null}`. Prints `counter on ws://127.0.0.1:PORT/`
//! once it listens, and serves until it is killed.

use emitter_core::Server;
use emitter_state::{AtLimit, StreamModel};
use serde::Serialize;

#[derive(Debug, Default, Clone, Serialize)]
struct Counter {
    count: i64,
    last: Option<String>,
}

#[tokio::main]
async fn main() {
    let max_events = std::env::var("MAX_EVENTS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(10);
    let server = Server::new();
    let counter = StreamModel::new(Counter::default())
        .when("increment", |counter: &mut Counter, dispatcher: &str, by: i64| {
            counter.count += by;
            counter.last = Some(dispatcher.to_owned());
        })
        .compaction("snapshot", Counter::clone)
        .max_events(max_events)
        .at_limit(AtLimit::Compact)
        .register(&server, "counter");
    let _rotate = server.on_message(move |user, message| {
        if message.kind == "test/rotate" {
            if let Err(error) = counter.rotate(user.server(), Counter::default()) {
                eprintln!("could not rotate: {error}");
            }
        }
    });
    let port = emitter_testing::listen(&server).await;
    println!("counter on ws://127.0.0.1:{port}/");
    std::future::pending::<()>().await;
}
