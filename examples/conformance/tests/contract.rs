//! The conformance contract, row by row, over real WebSocket connections on loopback.
//!
//! The contract is about frames, so the client is the raw one of `emitter-testing`: it shows every frame, in order,
//! where a client library hides some (emitter-client drops an application message that reaches it unlinked). Every
//! wait is bounded. To show that a reply did *not* come, the test makes something else happen that must arrive next,
//! and checks that it is the next message.

use std::time::{Duration, Instant};

use emitter_core::Server;
use emitter_testing::redis::RedisServer;
use emitter_testing::{joined, left, linked, snapshot, unlinked, RawClient, Receive};
use example_conformance::{NOT_A_USERNAME, SHORT_AUTH};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// Both endpoints, started on free loopback ports.
///
/// With `CONFORMANCE_REDIS=1` every endpoint is node `one` of a two-node cluster on a throwaway Redis, node `two`
/// serving beside it: the contract must hold unchanged for a client of one node of a cluster.
struct Endpoints {
    main: Server,
    main_port: u16,
    closed: Server,
    closed_port: u16,
    cluster: Option<ClusterSetup>,
}

/// What a cluster run keeps alive: the Redis, and the second node of each endpoint.
struct ClusterSetup {
    _redis: RedisServer,
    others: Vec<Server>,
    /// The main endpoint's port on node `two`.
    other_main_port: u16,
}

async fn start() -> Endpoints {
    if std::env::var("CONFORMANCE_REDIS").is_ok_and(|value| value == "1") {
        return start_on_cluster().await;
    }
    let (main, main_port) = example_conformance::serve_main(TcpListener::bind("127.0.0.1:0").await.unwrap())
        .await
        .unwrap();
    let (closed, closed_port) = example_conformance::serve_closed(TcpListener::bind("127.0.0.1:0").await.unwrap())
        .await
        .unwrap();
    Endpoints {
        main,
        main_port,
        closed,
        closed_port,
        cluster: None,
    }
}

async fn start_on_cluster() -> Endpoints {
    let redis = RedisServer::start().expect("CONFORMANCE_REDIS=1 needs redis-server on PATH");
    let mut servers = Vec::new();
    let mut ports = Vec::new();
    for node in ["one", "two"] {
        for closed in [false, true] {
            let (server, cluster) = match closed {
                false => (example_conformance::build_main(), "contract"),
                true => (example_conformance::build_closed(), "contract-closed"),
            };
            let options = emitter_redis::Options::default();
            example_conformance::join_cluster(&server, &redis.url(), cluster, node, options)
                .await
                .unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = match closed {
                false => example_conformance::serve_main_server(&server, listener).await.unwrap(),
                true => example_conformance::serve_closed_server(&server, listener)
                    .await
                    .unwrap(),
            };
            servers.push(server);
            ports.push(port);
        }
    }
    let others = servers.split_off(2);
    let closed = servers.pop().unwrap();
    let main = servers.pop().unwrap();
    Endpoints {
        main,
        main_port: ports[0],
        closed,
        closed_port: ports[1],
        cluster: Some(ClusterSetup {
            _redis: redis,
            others,
            other_main_port: ports[2],
        }),
    }
}

impl Endpoints {
    async fn stop(self) {
        self.main.close().await.unwrap();
        self.closed.close().await.unwrap();
        if let Some(cluster) = self.cluster {
            for other in cluster.others {
                other.close().await.unwrap();
            }
        }
    }
}

/// A raw client of the contract. The main endpoint also serves the state app (the README's *State* section), whose
/// catch-up follows every link there; the contract's clients ignore the state app's messages, as the state app
/// ignores theirs, so this client skips them (`tests/state.rs` checks them).
struct Client(RawClient);

/// The types of the state app's messages.
const STATE_TYPES: [&str; 5] = [
    "atom/set",
    "stream/append",
    "projection/set",
    "projection/delta",
    "projection/invalidate",
];

impl Receive for Client {
    async fn try_recv(&mut self) -> Option<Value> {
        loop {
            let frame = self.0.try_recv().await?;
            if !STATE_TYPES.iter().any(|kind| frame["type"] == *kind) {
                return Some(frame);
            }
        }
    }

    fn name(&self) -> String {
        self.0.name()
    }
}

impl std::ops::Deref for Client {
    type Target = RawClient;
    fn deref(&self) -> &RawClient {
        &self.0
    }
}

impl std::ops::DerefMut for Client {
    fn deref_mut(&mut self) -> &mut RawClient {
        &mut self.0
    }
}

impl Client {
    async fn connect(port: u16) -> Client {
        Client(RawClient::connect(port).await)
    }

    /// Connects, links, and reads the snapshot up to the user's own `krmx/linked`, and on the main endpoint the state
    /// app's catch-up up to its last message (the tally's `projection/set`): nothing is left to read.
    async fn link_and_settle(port: u16, username: &str) -> Client {
        let mut client = RawClient::link_and_settle(port, username).await;
        // The catch-up of an empty state app is the tally's projection/set alone.
        let catch_up = client.recv().await;
        assert_eq!(catch_up["type"], "projection/set", "{username}: {catch_up}");
        Client(client)
    }

    /// [`RawClient::link_pair`], each catch-up read: two users with nothing left to read.
    async fn link_pair(port: u16, first: &str, second: &str) -> (Client, Client) {
        let mut one = Client::link_and_settle(port, first).await;
        let two = Client::link_and_settle(port, second).await;
        one.expect_all(&[joined(second), linked(second)]).await;
        (one, two)
    }
}

fn reply(kind: &str, payload: Value) -> Value {
    json!({"type": kind, "payload": payload})
}
fn error(text: &str) -> Value {
    reply("test/error", json!(text))
}
fn user(username: &str, is_linked: bool) -> Value {
    json!({"username": username, "isLinked": is_linked})
}

/// Connects and asks to link; returns the client and the link answer: `Ok` when accepted, `Err(reason)` when
/// rejected.
async fn try_link(port: u16, username: &str, auth: Option<&str>) -> (Client, Result<(), String>) {
    let mut client = Client::connect(port).await;
    let answer = client.link(username, auth).await;
    (client, answer)
}

/// Sends `test/users` and returns the list.
async fn test_users(client: &mut Client) -> Value {
    client.send(json!({"type": "test/users"})).await;
    let got = client.recv().await;
    assert_eq!(got["type"], "test/users", "{:?}: {got}", client.username);
    got["payload"].clone()
}

// ---- endpoints ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn main_accepts_new_users_at_once() {
    let endpoints = start().await;
    let (mut simon, answer) = try_link(endpoints.main_port, "simon", None).await;
    assert_eq!(answer, Ok(()));
    simon.expect_all(&[joined("simon"), linked("simon")]).await;
    endpoints.stop().await;
}

#[tokio::test]
async fn main_port_serves_metrics_and_health() {
    let endpoints = start().await;
    let health = emitter_testing::http_get(endpoints.main_port, "/health").await;
    assert_eq!(health.status_body(), (200, "ok\n"));
    let (mut simon, answer) = try_link(endpoints.main_port, "simon", None).await;
    assert_eq!(answer, Ok(()));
    simon.expect_all(&[joined("simon"), linked("simon")]).await;
    let metrics = emitter_testing::http_get(endpoints.main_port, "/metrics").await;
    assert_eq!(metrics.status, 200);
    let accepted = metrics
        .body
        .lines()
        .find_map(|line| line.strip_prefix("krmx_link_attempts_total{outcome=\"accepted\"} "))
        .and_then(|value| value.parse::<u64>().ok());
    assert_eq!(accepted, Some(1), "{}", metrics.body);
    endpoints.stop().await;
}

#[tokio::test]
async fn closed_refuses_new_users() {
    let endpoints = start().await;
    let (_client, answer) = try_link(endpoints.closed_port, "simon", None).await;
    assert_eq!(answer, Err("server is not accepting new users".to_owned()));
    endpoints.stop().await;
}

#[tokio::test]
async fn closed_has_admin_joined_at_start() {
    let endpoints = start().await;
    let users = endpoints.closed.users();
    assert_eq!(users.len(), 1);
    assert_eq!((users[0].username.as_str(), users[0].is_linked), ("admin", false));

    let (mut admin, answer) = try_link(endpoints.closed_port, "admin", None).await;
    assert_eq!(answer, Ok(()));
    admin.expect_all(&[joined("admin"), linked("admin")]).await;
    assert_eq!(test_users(&mut admin).await, json!([user("admin", true)]));
    endpoints.stop().await;
}

#[tokio::test]
async fn closed_lets_a_user_joined_server_side_link() {
    let endpoints = start().await;
    // The closed endpoint has no state app: nothing follows the snapshot.
    let mut admin = Client(RawClient::link_and_settle(endpoints.closed_port, "admin").await);
    admin.send(json!({"type": "test/join", "payload": "guest"})).await;
    admin
        .expect_all(&[joined("guest"), reply("test/joined-ok", json!("guest"))])
        .await;
    let (mut guest, answer) = try_link(endpoints.closed_port, "guest", None).await;
    assert_eq!(answer, Ok(()));
    guest.expect_all(&snapshot(&["admin", "guest"])).await;
    endpoints.stop().await;
}

// ---- authentication rules ----------------------------------------------------------------------------------------

/// `already linked` is checked before the app's authenticate runs, as the reference checks: with `reject-me` (rule 1)
/// the app would say `rejected by app`. On a cluster it holds on the other node too, where alice is linked elsewhere.
#[tokio::test]
async fn already_linked_comes_before_the_authentication_rules() {
    let endpoints = start().await;
    let (_alice, answer) = try_link(endpoints.main_port, "alice", None).await;
    assert_eq!(answer, Ok(()));
    let busy = Err("user alice is already linked to a connection".to_owned());
    let (_c, answer) = try_link(endpoints.main_port, "alice", Some("reject-me")).await;
    assert_eq!(answer, busy);
    if let Some(cluster) = &endpoints.cluster {
        // Node two learns of alice's link from the log; until it has, the claim in Redis refuses her anyway (after
        // authentication): wait for its view, then the refusal must come first.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cluster.others[0]
            .users()
            .iter()
            .any(|user| user.username == "alice" && user.is_linked)
        {
            assert!(Instant::now() < deadline, "node two never saw alice linked");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (_c, answer) = try_link(cluster.other_main_port, "alice", Some("reject-me")).await;
        assert_eq!(answer, busy);
    }
    endpoints.stop().await;
}

#[tokio::test]
async fn rule_1_reject_me_is_rejected_by_app() {
    let endpoints = start().await;
    let (_c, answer) = try_link(endpoints.main_port, "simon", Some("reject-me")).await;
    assert_eq!(answer, Err("rejected by app".to_owned()));
    // Rule 1 comes before the username rules: a `slow…` user with `reject-me` is rejected, not accepted later.
    let (_c, answer) = try_link(endpoints.main_port, "slowpoke", Some("reject-me")).await;
    assert_eq!(answer, Err("rejected by app".to_owned()));
    assert!(endpoints.main.users().is_empty());
    endpoints.stop().await;
}

#[tokio::test]
async fn rule_2_report_is_new_tells_whether_the_user_is_new() {
    let endpoints = start().await;
    let (_c, answer) = try_link(endpoints.main_port, "simon", Some("report-is-new")).await;
    assert_eq!(answer, Err("isNewUser=true".to_owned()));
    // Rule 2 comes before rule 3.
    let (_c, answer) = try_link(endpoints.main_port, "throwaway", Some("report-is-new")).await;
    assert_eq!(answer, Err("isNewUser=true".to_owned()));

    let (_c, answer) = try_link(endpoints.closed_port, "admin", Some("report-is-new")).await;
    assert_eq!(answer, Err("isNewUser=false".to_owned()));

    let mut lisa = Client::link_and_settle(endpoints.main_port, "lisa").await;
    lisa.send(json!({"type": "test/join", "payload": "bob"})).await;
    lisa.expect_all(&[joined("bob"), reply("test/joined-ok", json!("bob"))])
        .await;
    let (_c, answer) = try_link(endpoints.main_port, "bob", Some("report-is-new")).await;
    assert_eq!(answer, Err("isNewUser=false".to_owned()));
    endpoints.stop().await;
}

#[tokio::test]
async fn rule_3_throw_is_rejected_with_the_panic_message() {
    let endpoints = start().await;
    let (mut client, answer) = try_link(endpoints.main_port, "throwaway", None).await;
    assert_eq!(answer, Err("thrown by app".to_owned()));
    assert!(endpoints.main.users().is_empty());
    // The connection survives the listener's panic and can link as someone else.
    assert_eq!(client.link("simon", None).await, Ok(()));
    endpoints.stop().await;
}

#[tokio::test]
async fn rule_4_slow_is_accepted_after_200_ms() {
    let endpoints = start().await;
    let started = Instant::now();
    let (mut slow, answer) = try_link(endpoints.main_port, "slowpoke", None).await;
    let elapsed = started.elapsed();
    assert_eq!(answer, Ok(()));
    assert!(elapsed >= SHORT_AUTH, "accepted after {elapsed:?}");
    slow.expect_all(&[joined("slowpoke"), linked("slowpoke")]).await;
    endpoints.stop().await;
}

#[tokio::test]
async fn rule_5_late_times_out_and_is_never_linked() {
    let endpoints = start().await;
    let mut watcher = Client::link_and_settle(endpoints.main_port, "watcher").await;

    let started = Instant::now();
    let (mut late, answer) = try_link(endpoints.main_port, "latecomer", None).await;
    let elapsed = started.elapsed();
    assert_eq!(answer, Err("authentication timeout".to_owned()));
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_millis(1900),
        "rejected after {elapsed:?}, expected about 500 ms"
    );

    // Past the moment the late work would have finished, nobody joined or linked.
    let after_late_work = started + example_conformance::LATE_AUTH + Duration::from_millis(300);
    watcher.expect_silence_until(after_late_work).await;
    assert_eq!(test_users(&mut watcher).await, json!([user("watcher", true)]));

    // The rejected connection is free again.
    assert_eq!(late.link("simon", None).await, Ok(()));
    endpoints.stop().await;
}

#[tokio::test]
async fn rule_6_deny_is_rejected_by_app_after_200_ms() {
    let endpoints = start().await;
    let started = Instant::now();
    let (_c, answer) = try_link(endpoints.main_port, "denyme", None).await;
    let elapsed = started.elapsed();
    assert_eq!(answer, Err("denied by app".to_owned()));
    assert!(elapsed >= SHORT_AUTH, "rejected after {elapsed:?}");
    assert!(endpoints.main.users().is_empty());
    endpoints.stop().await;
}

#[tokio::test]
async fn rule_7_fail_is_rejected_with_the_error() {
    let endpoints = start().await;
    let started = Instant::now();
    let (_c, answer) = try_link(endpoints.main_port, "failure", None).await;
    let elapsed = started.elapsed();
    assert_eq!(answer, Err("failed by app".to_owned()));
    assert!(elapsed >= SHORT_AUTH, "rejected after {elapsed:?}");
    assert!(endpoints.main.users().is_empty());
    endpoints.stop().await;
}

// ---- custom messages ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn echo_replies_to_the_sender_with_the_payload() {
    let endpoints = start().await;
    let (mut simon, mut lisa) = Client::link_pair(endpoints.main_port, "simon", "lisa").await;

    simon
        .send(json!({"type": "test/echo", "payload": {"a": [1, "two"]}}))
        .await;
    simon
        .expect_all(&[reply("test/echoed", json!({"a": [1, "two"]}))])
        .await;
    simon.send(json!({"type": "test/echo"})).await;
    simon.expect_all(&[json!({"type": "test/echoed"})]).await;
    simon.send(json!({"type": "test/echo", "payload": null})).await;
    simon
        .expect_all(&[json!({"type": "test/echoed", "payload": null})])
        .await;

    // Lisa got none of it: her next message is her own echo.
    lisa.send(json!({"type": "test/echo", "payload": "mine"})).await;
    lisa.expect_all(&[reply("test/echoed", json!("mine"))]).await;
    endpoints.stop().await;
}

#[tokio::test]
async fn broadcast_reaches_everyone_the_sender_included() {
    let endpoints = start().await;
    let (mut simon, mut lisa) = Client::link_pair(endpoints.main_port, "simon", "lisa").await;

    simon.send(json!({"type": "test/broadcast", "payload": {"n": 1}})).await;
    let expected = reply("test/broadcasted", json!({"from": "simon", "payload": {"n": 1}}));
    simon.expect_all(std::slice::from_ref(&expected)).await;
    lisa.expect_all(&[expected]).await;

    lisa.send(json!({"type": "test/broadcast"})).await;
    let expected = reply("test/broadcasted", json!({"from": "lisa"}));
    simon.expect_all(std::slice::from_ref(&expected)).await;
    lisa.expect_all(&[expected]).await;
    endpoints.stop().await;
}

#[tokio::test]
async fn broadcast_skip_reaches_everyone_but_the_sender() {
    let endpoints = start().await;
    let (mut simon, mut lisa) = Client::link_pair(endpoints.main_port, "simon", "lisa").await;

    simon
        .send(json!({"type": "test/broadcast-skip", "payload": "hi"}))
        .await;
    lisa.expect_all(&[reply("test/broadcasted", json!({"from": "simon", "payload": "hi"}))])
        .await;
    simon.send(json!({"type": "test/broadcast-skip"})).await;
    lisa.expect_all(&[reply("test/broadcasted", json!({"from": "simon"}))])
        .await;
    // Simon got neither: his next message is his own echo.
    simon.send(json!({"type": "test/echo", "payload": "marker"})).await;
    simon.expect_all(&[reply("test/echoed", json!("marker"))]).await;
    endpoints.stop().await;
}

#[tokio::test]
async fn kick_a_linked_user_then_reply() {
    let endpoints = start().await;
    let (mut simon, mut lisa) = Client::link_pair(endpoints.main_port, "simon", "lisa").await;

    simon.send(json!({"type": "test/kick", "payload": "lisa"})).await;
    simon
        .expect_all(&[unlinked("lisa"), left("lisa"), reply("test/kicked-ok", json!("lisa"))])
        .await;
    lisa.expect_all(&[unlinked("lisa"), left("lisa")]).await;
    assert_eq!(test_users(&mut simon).await, json!([user("simon", true)]));
    // Lisa's connection stays open and may link again.
    assert_eq!(lisa.link("lisa", None).await, Ok(()));
    endpoints.stop().await;
}

#[tokio::test]
async fn kick_an_unlinked_user_then_reply() {
    let endpoints = start().await;
    let mut simon = Client::link_and_settle(endpoints.main_port, "simon").await;
    simon.send(json!({"type": "test/join", "payload": "bob"})).await;
    simon
        .expect_all(&[joined("bob"), reply("test/joined-ok", json!("bob"))])
        .await;
    simon.send(json!({"type": "test/kick", "payload": "bob"})).await;
    simon
        .expect_all(&[left("bob"), reply("test/kicked-ok", json!("bob"))])
        .await;
    endpoints.stop().await;
}

#[tokio::test]
async fn kick_yourself_gets_no_reply() {
    let endpoints = start().await;
    let mut simon = Client::link_and_settle(endpoints.main_port, "simon").await;
    simon.send(json!({"type": "test/kick", "payload": "simon"})).await;
    simon.expect_all(&[unlinked("simon"), left("simon")]).await;
    // No `test/kicked-ok`: the next message is the answer to a new link request.
    assert_eq!(simon.link("simon", None).await, Ok(()));
    simon.expect_all(&[joined("simon"), linked("simon")]).await;
    endpoints.stop().await;
}

#[tokio::test]
async fn kick_errors() {
    let endpoints = start().await;
    let mut simon = Client::link_and_settle(endpoints.main_port, "simon").await;
    simon.send(json!({"type": "test/kick", "payload": "nobody"})).await;
    simon
        .expect_all(&[error("cannot kick a user that does not exist")])
        .await;
    simon.send(json!({"type": "test/kick"})).await;
    simon.expect_all(&[error(NOT_A_USERNAME)]).await;
    simon.send(json!({"type": "test/kick", "payload": 42})).await;
    simon.expect_all(&[error(NOT_A_USERNAME)]).await;
    endpoints.stop().await;
}

#[tokio::test]
async fn unlink_a_linked_user_then_reply() {
    let endpoints = start().await;
    let (mut simon, mut lisa) = Client::link_pair(endpoints.main_port, "simon", "lisa").await;

    simon.send(json!({"type": "test/unlink", "payload": "lisa"})).await;
    simon
        .expect_all(&[unlinked("lisa"), reply("test/unlinked-ok", json!("lisa"))])
        .await;
    lisa.expect_all(&[unlinked("lisa")]).await;
    assert_eq!(
        test_users(&mut simon).await,
        json!([user("simon", true), user("lisa", false)])
    );
    // Lisa's connection stays open and may link to her user again.
    assert_eq!(lisa.link("lisa", None).await, Ok(()));
    lisa.expect_all(&snapshot(&["simon", "lisa"])).await;
    endpoints.stop().await;
}

#[tokio::test]
async fn unlink_yourself_gets_no_reply() {
    let endpoints = start().await;
    let mut simon = Client::link_and_settle(endpoints.main_port, "simon").await;
    simon.send(json!({"type": "test/unlink", "payload": "simon"})).await;
    simon.expect_all(&[unlinked("simon")]).await;
    // No `test/unlinked-ok`: the next message is the answer to a new link request.
    assert_eq!(simon.link("simon", None).await, Ok(()));
    simon.expect_all(&[joined("simon"), linked("simon")]).await;
    endpoints.stop().await;
}

#[tokio::test]
async fn unlink_errors() {
    let endpoints = start().await;
    let mut simon = Client::link_and_settle(endpoints.main_port, "simon").await;
    simon.send(json!({"type": "test/unlink", "payload": "nobody"})).await;
    simon
        .expect_all(&[error("cannot unlink a connection from a user that does not exist")])
        .await;
    simon.send(json!({"type": "test/join", "payload": "bob"})).await;
    simon
        .expect_all(&[joined("bob"), reply("test/joined-ok", json!("bob"))])
        .await;
    simon.send(json!({"type": "test/unlink", "payload": "bob"})).await;
    simon
        .expect_all(&[error("cannot unlink a connection from a user that is not linked")])
        .await;
    simon.send(json!({"type": "test/unlink", "payload": ["simon"]})).await;
    simon.expect_all(&[error(NOT_A_USERNAME)]).await;
    endpoints.stop().await;
}

#[tokio::test]
async fn join_tells_everyone_then_replies() {
    let endpoints = start().await;
    let (mut simon, mut lisa) = Client::link_pair(endpoints.main_port, "simon", "lisa").await;

    simon.send(json!({"type": "test/join", "payload": "bob"})).await;
    simon
        .expect_all(&[joined("bob"), reply("test/joined-ok", json!("bob"))])
        .await;
    lisa.expect_all(&[joined("bob")]).await;
    // Bob is unlinked and can be linked to.
    let (mut bob, answer) = try_link(endpoints.main_port, "bob", None).await;
    assert_eq!(answer, Ok(()));
    bob.recv_until(&linked("bob")).await;
    endpoints.stop().await;
}

#[tokio::test]
async fn join_errors() {
    let endpoints = start().await;
    let mut simon = Client::link_and_settle(endpoints.main_port, "simon").await;
    simon.send(json!({"type": "test/join", "payload": "simon"})).await;
    simon
        .expect_all(&[error("cannot join a user that already exist")])
        .await;
    simon.send(json!({"type": "test/join", "payload": "x"})).await;
    simon
        .expect_all(&[error("cannot join a user with an invalid username")])
        .await;
    simon.send(json!({"type": "test/join"})).await;
    simon.expect_all(&[error(NOT_A_USERNAME)]).await;
    simon
        .send(json!({"type": "test/join", "payload": {"username": "bob"}}))
        .await;
    simon.expect_all(&[error(NOT_A_USERNAME)]).await;
    endpoints.stop().await;
}

#[tokio::test]
async fn users_lists_everyone_in_join_order() {
    let endpoints = start().await;
    let (mut simon, lisa) = Client::link_pair(endpoints.main_port, "simon", "lisa").await;
    simon.send(json!({"type": "test/join", "payload": "bob"})).await;
    simon
        .expect_all(&[joined("bob"), reply("test/joined-ok", json!("bob"))])
        .await;
    simon.send(json!({"type": "test/unlink", "payload": "lisa"})).await;
    simon
        .expect_all(&[unlinked("lisa"), reply("test/unlinked-ok", json!("lisa"))])
        .await;
    assert_eq!(
        test_users(&mut simon).await,
        json!([user("simon", true), user("lisa", false), user("bob", false)])
    );
    drop(lisa);
    endpoints.stop().await;
}

#[tokio::test]
async fn other_types_are_ignored_and_the_sender_stays_linked() {
    let endpoints = start().await;
    let mut simon = Client::link_and_settle(endpoints.main_port, "simon").await;
    simon.send(json!({"type": "test/unknown", "payload": 1})).await;
    simon.send(json!({"type": "chat/message", "payload": "hi"})).await;
    simon.send(json!({"type": "test/echoed"})).await;
    simon.send(json!({"type": "test/echo", "payload": "marker"})).await;
    simon.expect_all(&[reply("test/echoed", json!("marker"))]).await;
    assert_eq!(test_users(&mut simon).await, json!([user("simon", true)]));
    endpoints.stop().await;
}
