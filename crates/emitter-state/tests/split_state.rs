//! A model kept in this process's memory (`register`) on a node of a cluster: each node has its own state, so the
//! model says so, once, the first time it serves a request there (or at registration, on a node already). A plain
//! single-process server hears nothing of it.

mod support;

use std::sync::Arc;

use emitter_core::cluster::{Change, ClusterHost, LinkAddr, LogEntry, LogEvent, Refused, Sequencer};
use emitter_core::protocol::Frame;
use emitter_core::Server;
use emitter_state::{AtomModel, Atoms, Projection, ProjectionModel, Stream, StreamModel};
use emitter_testing::CapturedLogs;
use parking_lot::Mutex;
use serde_json::json;
use support::Conn;

const WARNING: &str = "a model registered with `register` keeps its state on this node only";

/// The order of a cluster of one node, in memory: it links this node's connections (joining new users first) and
/// refuses every other change. Enough for a linked user to send requests to a node.
#[derive(Default)]
struct OneNode {
    /// The last seq given, and the users that joined.
    state: Mutex<(u64, Vec<String>)>,
}

impl Sequencer for OneNode {
    fn node(&self) -> &str {
        "n1"
    }
    fn owns(&self, link: &LinkAddr) -> bool {
        link.node == "n1" && link.generation == 1
    }
    fn submit(&self, change: Change) -> Result<Vec<LogEntry>, Refused> {
        let Change::Link { user, connection, .. } = change else {
            return Err(Refused::Unavailable("this test links only".to_owned()));
        };
        let (seq, users) = &mut *self.state.lock();
        let mut entry = |event| {
            *seq += 1;
            LogEntry {
                seq: *seq,
                event,
                by: "n1".to_owned(),
            }
        };
        let mut entries = Vec::new();
        if !users.contains(&user) {
            users.push(user.clone());
            entries.push(entry(LogEvent::Joined { user: user.clone() }));
        }
        let link = LinkAddr {
            node: "n1".to_owned(),
            generation: 1,
            connection,
        };
        entries.push(entry(LogEvent::Linked { user, link }));
        Ok(entries)
    }
    fn entries_after(&self, _: u64) -> Result<Vec<LogEntry>, String> {
        Ok(Vec::new())
    }
    fn publish_broadcast(&self, _: u64, _: Option<&str>, _: &Frame) {}
    fn publish_send(&self, _: &LinkAddr, _: &str, _: u64, _: &Frame) {}
    fn publish_kept(&self, _: &str, _: u64, _: &Frame) {}
}

/// One model of each kind, in memory.
fn models(server: &Server) -> (Atoms, Stream<Vec<String>>, Projection<i64>) {
    let atoms = AtomModel::new().register(server);
    let chat = StreamModel::new(Vec::<String>::new())
        .when("say", |lines: &mut Vec<String>, _: &str, line: String| lines.push(line))
        .register(server, "chat");
    let score = ProjectionModel::new(0_i64, |score: &i64, _: &str| *score)
        .when("add", |score: &mut i64, _: &str, by: i64| *score += by)
        .register(server, "score");
    (atoms, chat, score)
}

fn make_node(server: &Server) {
    ClusterHost::of(server)
        .install(Arc::new(OneNode::default()), 0, Vec::new())
        .unwrap();
}

fn listen(server: &Server) {
    server.host().start().unwrap();
    server.host().listening(4321).unwrap();
}

/// A request for each model, and a message for none of them.
fn send_requests(alice: &Conn) {
    alice.send(json!({"type": "app/hello"}));
    alice.send(json!({"type": "atom/set", "payload": {"key": "color", "atom": "blue"}}));
    alice.send(
        json!({"type": "stream/append", "payload": {"domain": "chat", "dispatcher": "alice",
        "event": {"type": "say", "payload": "hi"}}}),
    );
    alice.send(json!({"type": "projection/action", "payload": {"domain": "score",
        "action": {"type": "add", "payload": 2}}}));
}

fn warnings(logs: &CapturedLogs) -> Vec<String> {
    logs.lines(tracing::Level::WARN, WARNING)
}

#[test]
fn an_in_memory_model_on_a_node_warns_once_at_its_first_request() {
    let (logs, _guard) = CapturedLogs::capture();
    let server = Server::new();
    // As an app does it: the models first, then the cluster layer makes the server a node.
    let (atoms, chat, score) = models(&server);
    assert_eq!(warnings(&logs), Vec::<String>::new(), "not a node when registered");
    make_node(&server);
    assert!(server.is_cluster_node());
    listen(&server);
    let alice = Conn::settled(&server, "alice");
    assert_eq!(warnings(&logs), Vec::<String>::new(), "no request yet");

    alice.send(json!({"type": "app/hello"}));
    assert_eq!(
        warnings(&logs),
        Vec::<String>::new(),
        "a message for no model is no model's request"
    );
    for _ in 0..3 {
        send_requests(&alice);
    }
    // The requests were served, each by its model.
    assert_eq!(atoms.stats().accepted, 3);
    assert_eq!(chat.stats().accepted, 3);
    assert_eq!(score.stats().accepted, 3);
    let mut said = warnings(&logs);
    said.sort();
    let line = |model: &str, domain: &str| {
        format!(
            "{WARNING}: each node of the cluster has its own, seen by the users linked to it; `register_journaled` \
             shares it across the cluster model={model:?} domain={domain:?}"
        )
    };
    assert_eq!(
        said,
        [
            line("atoms", "atoms"),
            line("projection", "score"),
            line("stream", "chat")
        ],
        "once per model"
    );
}

#[test]
fn an_in_memory_model_registered_on_a_node_warns_at_registration_and_not_again() {
    let (logs, _guard) = CapturedLogs::capture();
    let server = Server::new();
    make_node(&server);
    let (atoms, _chat, _score) = models(&server);
    assert_eq!(warnings(&logs).len(), 3, "one per model, at registration");
    listen(&server);
    let alice = Conn::settled(&server, "alice");
    send_requests(&alice);
    assert_eq!(atoms.stats().accepted, 1);
    assert_eq!(warnings(&logs).len(), 3, "told already");
}

#[test]
fn a_single_process_server_says_nothing_of_it() {
    let (logs, _guard) = CapturedLogs::capture();
    let server = Server::new();
    let (atoms, chat, score) = models(&server);
    listen(&server);
    assert!(!server.is_cluster_node());
    let alice = Conn::settled(&server, "alice");
    send_requests(&alice);
    assert_eq!(
        (atoms.stats().accepted, chat.stats().accepted, score.stats().accepted),
        (1, 1, 1)
    );
    assert_eq!(warnings(&logs), Vec::<String>::new());
}
