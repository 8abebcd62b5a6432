//! The Rust client against the reference server, `@krmx/server` from npm, started by
//! `node tests/interop/krmx-server.js`.
//!
//! Skipped, with a printed note, when `tests/interop/node_modules` is absent (a machine with only the Rust
//! toolchain); with `EMITTER_INTEROP=1` (as CI's `.ci/steps/30-interop.sh` sets it) a missing install fails instead.
//! The npm server is a 0.5 release: it accepts `0.5.*` link requests only, so these clients send version 0.5.5.

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use emitter_client::{Client, ClientEvent, ClientStatus, Error, Message, Reconnect};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::json;
use support::{as_simon, check_every_event, connect_and_link, user, within, Proxy};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const VERSION: &str = "0.5.5";

/// A running `@krmx/server`; killed when dropped.
struct NodeServer {
    port: u16,
    _child: Child,
}

impl NodeServer {
    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }
}

fn interop_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop");
    if dir.join("node_modules/@krmx/server").is_dir() {
        return Some(dir);
    }
    if std::env::var("EMITTER_INTEROP").is_ok_and(|value| value == "1") {
        panic!(
            "EMITTER_INTEROP=1 but {} has no node_modules/@krmx/server: run `npm ci` in tests/interop/",
            dir.display()
        );
    }
    // Written to stderr directly, past the test harness's capture, so that a plain `cargo test` shows it (once).
    static NOTE: std::sync::Once = std::sync::Once::new();
    NOTE.call_once(|| {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED interop_krmx_server: tests/interop/node_modules is absent, so the Rust client is not checked against \
             the real @krmx/server. Run `npm ci` in tests/interop/ (or `just interop`) to check it."
        );
    });
    None
}

/// Starts the npm server on a free loopback port, or `None` when the interop packages are not installed.
async fn start() -> Option<NodeServer> {
    let dir = interop_dir()?;
    let mut child = Command::new("node")
        .arg("krmx-server.js")
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot run `node`: is Node.js installed?");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let port = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("reading the node server's output") {
            if let Some(port) = line.strip_prefix("port ") {
                return port.trim().parse::<u16>().expect("a port number");
            }
        }
        panic!("the node server exited before printing its port");
    })
    .await
    .expect("the node server did not print its port in time");
    Some(NodeServer { port, _child: child })
}

fn client() -> Client {
    Client::builder().version(VERSION).build()
}

async fn linked(url: &str, username: &str) -> Client {
    let client = client();
    connect_and_link(&client, url, username).await;
    client
}

async fn rejection(client: &Client, username: &str, auth: Option<&str>) -> String {
    match within("link", client.link(username, auth)).await {
        Err(Error::Rejected(reason)) => reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn the_version_is_what_the_npm_server_checks() {
    let Some(server) = start().await else { return };
    let default = Client::new();
    within("connect", default.connect(&server.url())).await.unwrap();
    let reason = rejection(&default, "simon", None).await;
    assert_eq!(
        reason,
        format!(
            "krmx server version mismatch (server=0.5.*,client={})",
            emitter_client::DEFAULT_VERSION
        )
    );
    let client = client();
    connect_and_link(&client, &server.url(), "simon").await;
    assert_eq!(client.status(), ClientStatus::Linked);
}

#[tokio::test]
async fn rejections_carry_the_reference_servers_reasons() {
    let Some(server) = start().await else { return };
    let client = client();
    within("connect", client.connect(&server.url())).await.unwrap();
    assert_eq!(rejection(&client, "a", None).await, "invalid username");
    assert_eq!(rejection(&client, "simon", Some("reject-me")).await, "rejected by app");
    assert_eq!(
        rejection(&client, "simon", Some("report-is-new")).await,
        "isNewUser=true"
    );
    assert_eq!(client.status(), ClientStatus::Connected);
    assert_eq!(client.username(), None);
    within("link", client.link("simon", Some("token"))).await.unwrap();
    let second = self::client();
    within("connect", second.connect(&server.url())).await.unwrap();
    assert_eq!(
        rejection(&second, "simon", None).await,
        "user simon is already linked to a connection"
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Move {
    x: i32,
    y: i32,
}

#[tokio::test]
async fn messages_flow_both_ways() {
    let Some(server) = start().await else { return };
    let anna = linked(&server.url(), "anna").await;
    let bert = linked(&server.url(), "bert").await;

    let echoed = anna.wait_for_payload::<Move>("test/echoed");
    anna.send_payload("test/echo", &Move { x: 1, y: -2 }).unwrap();
    assert_eq!(within("echo", echoed).await.unwrap(), Move { x: 1, y: -2 });

    let echoed = anna.wait_for_message_when(|m| m.kind == "test/echoed");
    anna.send(&Message::new("test/echo")).unwrap();
    assert_eq!(within("echo", echoed).await, Message::new("test/echoed"));

    let at_anna = anna.wait_for_message_when(|m| m.kind == "test/broadcasted");
    let at_bert = bert.wait_for_message_when(|m| m.kind == "test/broadcasted");
    anna.send_json(&json!({"type": "test/broadcast", "payload": [1, "two", null]}))
        .unwrap();
    let expected = Some(json!({"from": "anna", "payload": [1, "two", null]}));
    assert_eq!(within("broadcast at anna", at_anna).await.payload, expected);
    assert_eq!(within("broadcast at bert", at_bert).await.payload, expected);
}

#[tokio::test]
async fn others_join_link_unlink_and_leave() {
    let Some(server) = start().await else { return };
    let watcher = linked(&server.url(), "watcher").await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let _any = watcher.on_any(move |event| match event {
        ClientEvent::Join { username }
        | ClientEvent::Link { username }
        | ClientEvent::Unlink { username }
        | ClientEvent::Leave { username } => s.lock().push(format!("{} {username}", event.name())),
        _ => {}
    });

    let other = client();
    within("connect", other.connect(&server.url())).await.unwrap();
    let seen_link = watcher.wait_for_link_when(|u| u == "other");
    within("link", other.link("other", None)).await.unwrap();
    within("link other", seen_link).await;
    assert_eq!(watcher.users(), [user("watcher", true), user("other", true)]);
    assert_eq!(other.users(), [user("other", true), user("watcher", true)]);

    let seen_unlink = watcher.wait_for_unlink_when(|u| u == "other");
    within("unlink", other.unlink()).await.unwrap();
    within("unlink other", seen_unlink).await;
    assert_eq!(watcher.users(), [user("watcher", true), user("other", false)]);

    let seen_leave = watcher.wait_for_leave_when(|u| u == "other");
    within("link", other.link("other", None)).await.unwrap();
    within("leave", other.leave()).await.unwrap();
    within("leave other", seen_leave).await;
    assert_eq!(watcher.users(), [user("watcher", true)]);
    assert_eq!(other.status(), ClientStatus::Connected);

    // Server-side join and kick.
    let joined = watcher.wait_for_message_when(|m| m.kind == "test/joined-ok");
    watcher.send_payload("test/join", "carl").unwrap();
    within("joined-ok", joined).await;
    assert_eq!(watcher.users(), [user("watcher", true), user("carl", false)]);
    let kicked = watcher.wait_for_message_when(|m| m.kind == "test/kicked-ok");
    watcher.send_payload("test/kick", "carl").unwrap();
    within("kicked-ok", kicked).await;
    assert_eq!(
        *seen.lock(),
        [
            "join other",
            "link other",
            "unlink other",
            "link other",
            "unlink other",
            "leave other",
            "join carl",
            "leave carl"
        ]
    );
    let error = watcher.wait_for_payload::<String>("test/error");
    watcher.send_payload("test/kick", "nobody").unwrap();
    assert_eq!(
        within("error", error).await.unwrap(),
        "cannot kick a user that does not exist"
    );
}

/// The reference client's event test, with the reference server: every event with the state a listener sees.
#[tokio::test]
async fn every_event_with_the_state_at_that_moment() {
    let Some(server) = start().await else { return };
    let client = client();
    let while_linked = async {
        let joined = client.wait_for_message_when(|m| m.kind == "test/joined-ok");
        client.send_payload("test/join", "lisa").unwrap();
        within("joined-ok", joined).await;
        let kicked = client.wait_for_message_when(|m| m.kind == "test/kicked-ok");
        client.send_payload("test/kick", "lisa").unwrap();
        within("kicked-ok", kicked).await;
    };
    let both = [user("simon", true), user("lisa", false)];
    let alone = [user("simon", true)];
    let expected = vec![
        as_simon("join lisa", &both),
        as_simon("message test/joined-ok", &both),
        as_simon("leave lisa", &alone),
        as_simon("message test/kicked-ok", &alone),
    ];
    check_every_event(&client, &server.url(), while_linked, expected).await;
}

#[tokio::test]
async fn a_dropped_connection_is_relinked_by_the_reconnect_policy() {
    let Some(server) = start().await else { return };
    let proxy = Proxy::start(server.port).await;
    let watcher = linked(&server.url(), "watcher").await;
    let client = Client::builder()
        .version(VERSION)
        .reconnect(Reconnect::new().initial_delay(Duration::from_millis(20)))
        .build();
    connect_and_link(&client, &proxy.url(), "dropper").await;

    let unlinked = watcher.wait_for_unlink_when(|u| u == "dropper");
    let relinked_seen = watcher.wait_for_link_when(|u| u == "dropper");
    let relinked = client.wait_for_link_when(|u| u == "dropper");
    proxy.cut();
    within("watcher sees the unlink", unlinked).await;
    within("relink", relinked).await;
    within("watcher sees the link", relinked_seen).await;
    assert_eq!(client.status(), ClientStatus::Linked);
    assert_eq!(client.users(), [user("dropper", true), user("watcher", true)]);
    let echoed = client.wait_for_payload::<String>("test/echoed");
    client.send_payload("test/echo", "back").unwrap();
    assert_eq!(within("echo", echoed).await.unwrap(), "back");
    within("disconnect", client.disconnect(true)).await.unwrap();
}

#[tokio::test]
async fn a_forced_disconnect_unlinks_and_the_user_can_come_back() {
    let Some(server) = start().await else { return };
    let watcher = linked(&server.url(), "watcher").await;
    let client = linked(&server.url(), "simon").await;
    let unlinked = watcher.wait_for_unlink_when(|u| u == "simon");
    within("disconnect", client.disconnect(true)).await.unwrap();
    within("unlink", unlinked).await;
    within("connect", client.connect(&server.url())).await.unwrap();
    assert_eq!(
        rejection(&client, "simon", Some("report-is-new")).await,
        "isNewUser=false"
    );
    // The client's own user first, then the others as the server lists them (join order: the watcher).
    let snapshot_done = client.wait_for_join_when(|u| u == "watcher");
    within("link", client.link("simon", None)).await.unwrap();
    within("snapshot", snapshot_done).await;
    assert_eq!(client.users(), [user("simon", true), user("watcher", true)]);
}
