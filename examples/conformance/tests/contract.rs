//! The conformance contract, row by row, over real WebSocket connections on loopback.
//!
//! Every wait is bounded by `TIMEOUT`. To show that a reply did *not* come, the test makes something else happen that
//! must arrive next, and checks that it is the next message.

use std::time::{Duration, Instant};

use emitter_core::Server;
use example_conformance::{NOT_A_USERNAME, SHORT_AUTH};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

const TIMEOUT: Duration = Duration::from_secs(5);
const VERSION: &str = "0.6.0";

/// Both endpoints, started on free loopback ports.
struct Endpoints {
    main: Server,
    main_port: u16,
    closed: Server,
    closed_port: u16,
}

async fn start() -> Endpoints {
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
    }
}

impl Endpoints {
    async fn stop(self) {
        self.main.close().await.unwrap();
        self.closed.close().await.unwrap();
    }
}

/// A raw Krmx client.
struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    name: String,
}

fn joined(username: &str) -> Value {
    json!({"type": "krmx/joined", "payload": {"username": username}})
}
fn linked(username: &str) -> Value {
    json!({"type": "krmx/linked", "payload": {"username": username}})
}
fn unlinked(username: &str) -> Value {
    json!({"type": "krmx/unlinked", "payload": {"username": username}})
}
fn left(username: &str) -> Value {
    json!({"type": "krmx/left", "payload": {"username": username}})
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

impl Client {
    async fn connect(port: u16) -> Client {
        let url = format!("ws://127.0.0.1:{port}/");
        let (ws, _) = tokio::time::timeout(TIMEOUT, connect_async(url))
            .await
            .expect("timed out connecting")
            .expect("could not connect");
        Client {
            ws,
            name: "(unlinked)".to_owned(),
        }
    }

    /// Sends a link request and waits for the answer: `Ok` when accepted, `Err(reason)` when rejected.
    async fn link(&mut self, username: &str, auth: Option<&str>) -> Result<(), String> {
        let mut request = json!({"type": "krmx/link", "payload": {"username": username, "version": VERSION}});
        if let Some(auth) = auth {
            request["payload"]["auth"] = json!(auth);
        }
        self.send(request).await;
        let answer = self.recv().await;
        match answer["type"].as_str() {
            Some("krmx/accepted") => {
                self.name = username.to_owned();
                Ok(())
            }
            Some("krmx/rejected") => Err(answer["payload"]["reason"]
                .as_str()
                .expect("a rejection has a string reason")
                .to_owned()),
            _ => panic!("unexpected answer to a link request: {answer}"),
        }
    }

    /// Connects and asks to link; returns the client and the link answer.
    async fn try_link(port: u16, username: &str, auth: Option<&str>) -> (Client, Result<(), String>) {
        let mut client = Client::connect(port).await;
        let answer = client.link(username, auth).await;
        (client, answer)
    }

    /// Connects, links and reads the snapshot up to and including its own `krmx/linked`.
    async fn linked_as(port: u16, username: &str) -> Client {
        let (mut client, answer) = Client::try_link(port, username, None).await;
        assert_eq!(answer, Ok(()), "{username} should link");
        client.recv_until(&linked(username)).await;
        client
    }

    async fn send(&mut self, message: Value) {
        self.ws
            .send(WsMessage::text(message.to_string()))
            .await
            .expect("send failed");
    }

    /// The next JSON message. Panics on a timeout or when the connection closed.
    async fn recv(&mut self) -> Value {
        loop {
            let next = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: timed out waiting for a message", self.name));
            match next {
                Some(Ok(WsMessage::Text(text))) => {
                    return serde_json::from_str(&text).expect("the server sent invalid JSON")
                }
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => continue,
                other => panic!("{}: connection ended while waiting: {other:?}", self.name),
            }
        }
    }

    /// Asserts the next messages are exactly `expected`, in order.
    async fn expect(&mut self, expected: &[Value]) {
        for message in expected {
            let got = self.recv().await;
            assert_eq!(&got, message, "{} got the wrong message", self.name);
        }
    }

    /// Reads until `expected` arrives; returns what came before it.
    async fn recv_until(&mut self, expected: &Value) -> Vec<Value> {
        let mut before = Vec::new();
        loop {
            let got = self.recv().await;
            if &got == expected {
                return before;
            }
            before.push(got);
        }
    }

    /// Asserts that no message arrives until `deadline`.
    async fn expect_silence_until(&mut self, deadline: Instant) {
        let deadline = tokio::time::Instant::from_std(deadline);
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => continue,
                Ok(other) => panic!("{}: expected no message, got {other:?}", self.name),
            }
        }
    }

    /// Sends `test/users` and returns the list.
    async fn users(&mut self) -> Value {
        self.send(json!({"type": "test/users"})).await;
        let got = self.recv().await;
        assert_eq!(got["type"], "test/users", "{}: {got}", self.name);
        got["payload"].clone()
    }
}

// ---- endpoints ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn main_accepts_new_users_at_once() {
    let endpoints = start().await;
    let (mut simon, answer) = Client::try_link(endpoints.main_port, "simon", None).await;
    assert_eq!(answer, Ok(()));
    simon.expect(&[joined("simon"), linked("simon")]).await;
    endpoints.stop().await;
}

#[tokio::test]
async fn closed_refuses_new_users() {
    let endpoints = start().await;
    let (_client, answer) = Client::try_link(endpoints.closed_port, "simon", None).await;
    assert_eq!(answer, Err("server is not accepting new users".to_owned()));
    endpoints.stop().await;
}

#[tokio::test]
async fn closed_has_admin_joined_at_start() {
    let endpoints = start().await;
    let users = endpoints.closed.users();
    assert_eq!(users.len(), 1);
    assert_eq!((users[0].username.as_str(), users[0].is_linked), ("admin", false));

    let (mut admin, answer) = Client::try_link(endpoints.closed_port, "admin", None).await;
    assert_eq!(answer, Ok(()));
    admin.expect(&[joined("admin"), linked("admin")]).await;
    assert_eq!(admin.users().await, json!([user("admin", true)]));
    endpoints.stop().await;
}

#[tokio::test]
async fn closed_lets_a_user_joined_server_side_link() {
    let endpoints = start().await;
    let mut admin = Client::linked_as(endpoints.closed_port, "admin").await;
    admin.send(json!({"type": "test/join", "payload": "guest"})).await;
    admin
        .expect(&[joined("guest"), reply("test/joined-ok", json!("guest"))])
        .await;
    let (mut guest, answer) = Client::try_link(endpoints.closed_port, "guest", None).await;
    assert_eq!(answer, Ok(()));
    guest
        .expect(&[joined("admin"), linked("admin"), joined("guest"), linked("guest")])
        .await;
    endpoints.stop().await;
}

// ---- authentication rules ----------------------------------------------------------------------------------------

#[tokio::test]
async fn rule_1_reject_me_is_rejected_by_app() {
    let endpoints = start().await;
    let (_c, answer) = Client::try_link(endpoints.main_port, "simon", Some("reject-me")).await;
    assert_eq!(answer, Err("rejected by app".to_owned()));
    // Rule 1 comes before the username rules: a `slow…` user with `reject-me` is rejected, not accepted later.
    let (_c, answer) = Client::try_link(endpoints.main_port, "slowpoke", Some("reject-me")).await;
    assert_eq!(answer, Err("rejected by app".to_owned()));
    assert!(endpoints.main.users().is_empty());
    endpoints.stop().await;
}

#[tokio::test]
async fn rule_2_report_is_new_tells_whether_the_user_is_new() {
    let endpoints = start().await;
    let (_c, answer) = Client::try_link(endpoints.main_port, "simon", Some("report-is-new")).await;
    assert_eq!(answer, Err("isNewUser=true".to_owned()));
    // Rule 2 comes before rule 3.
    let (_c, answer) = Client::try_link(endpoints.main_port, "throwaway", Some("report-is-new")).await;
    assert_eq!(answer, Err("isNewUser=true".to_owned()));

    let (_c, answer) = Client::try_link(endpoints.closed_port, "admin", Some("report-is-new")).await;
    assert_eq!(answer, Err("isNewUser=false".to_owned()));

    let mut lisa = Client::linked_as(endpoints.main_port, "lisa").await;
    lisa.send(json!({"type": "test/join", "payload": "bob"})).await;
    lisa.expect(&[joined("bob"), reply("test/joined-ok", json!("bob"))])
        .await;
    let (_c, answer) = Client::try_link(endpoints.main_port, "bob", Some("report-is-new")).await;
    assert_eq!(answer, Err("isNewUser=false".to_owned()));
    endpoints.stop().await;
}

#[tokio::test]
async fn rule_3_throw_is_rejected_with_the_panic_message() {
    let endpoints = start().await;
    let (mut client, answer) = Client::try_link(endpoints.main_port, "throwaway", None).await;
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
    let (mut slow, answer) = Client::try_link(endpoints.main_port, "slowpoke", None).await;
    let elapsed = started.elapsed();
    assert_eq!(answer, Ok(()));
    assert!(elapsed >= SHORT_AUTH, "accepted after {elapsed:?}");
    slow.expect(&[joined("slowpoke"), linked("slowpoke")]).await;
    endpoints.stop().await;
}

#[tokio::test]
async fn rule_5_late_times_out_and_is_never_linked() {
    let endpoints = start().await;
    let mut watcher = Client::linked_as(endpoints.main_port, "watcher").await;

    let started = Instant::now();
    let (mut late, answer) = Client::try_link(endpoints.main_port, "latecomer", None).await;
    let elapsed = started.elapsed();
    assert_eq!(answer, Err("authentication timeout".to_owned()));
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_millis(1900),
        "rejected after {elapsed:?}, expected about 500 ms"
    );

    // Past the moment the late work would have finished, nobody joined or linked.
    let after_late_work = started + example_conformance::LATE_AUTH + Duration::from_millis(300);
    watcher.expect_silence_until(after_late_work).await;
    assert_eq!(watcher.users().await, json!([user("watcher", true)]));

    // The rejected connection is free again.
    assert_eq!(late.link("simon", None).await, Ok(()));
    endpoints.stop().await;
}

#[tokio::test]
async fn rule_6_deny_is_rejected_by_app_after_200_ms() {
    let endpoints = start().await;
    let started = Instant::now();
    let (_c, answer) = Client::try_link(endpoints.main_port, "denyme", None).await;
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
    let (_c, answer) = Client::try_link(endpoints.main_port, "failure", None).await;
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
    let mut simon = Client::linked_as(endpoints.main_port, "simon").await;
    let mut lisa = Client::linked_as(endpoints.main_port, "lisa").await;
    simon.expect(&[joined("lisa"), linked("lisa")]).await;

    simon
        .send(json!({"type": "test/echo", "payload": {"a": [1, "two"]}}))
        .await;
    simon.expect(&[reply("test/echoed", json!({"a": [1, "two"]}))]).await;
    simon.send(json!({"type": "test/echo"})).await;
    simon.expect(&[json!({"type": "test/echoed"})]).await;
    simon.send(json!({"type": "test/echo", "payload": null})).await;
    simon.expect(&[json!({"type": "test/echoed", "payload": null})]).await;

    // Lisa got none of it: her next message is her own echo.
    lisa.send(json!({"type": "test/echo", "payload": "mine"})).await;
    lisa.expect(&[reply("test/echoed", json!("mine"))]).await;
    endpoints.stop().await;
}

#[tokio::test]
async fn broadcast_reaches_everyone_the_sender_included() {
    let endpoints = start().await;
    let mut simon = Client::linked_as(endpoints.main_port, "simon").await;
    let mut lisa = Client::linked_as(endpoints.main_port, "lisa").await;
    simon.expect(&[joined("lisa"), linked("lisa")]).await;

    simon.send(json!({"type": "test/broadcast", "payload": {"n": 1}})).await;
    let expected = reply("test/broadcasted", json!({"from": "simon", "payload": {"n": 1}}));
    simon.expect(std::slice::from_ref(&expected)).await;
    lisa.expect(&[expected]).await;

    lisa.send(json!({"type": "test/broadcast"})).await;
    let expected = reply("test/broadcasted", json!({"from": "lisa"}));
    simon.expect(std::slice::from_ref(&expected)).await;
    lisa.expect(&[expected]).await;
    endpoints.stop().await;
}

#[tokio::test]
async fn broadcast_skip_reaches_everyone_but_the_sender() {
    let endpoints = start().await;
    let mut simon = Client::linked_as(endpoints.main_port, "simon").await;
    let mut lisa = Client::linked_as(endpoints.main_port, "lisa").await;
    simon.expect(&[joined("lisa"), linked("lisa")]).await;

    simon
        .send(json!({"type": "test/broadcast-skip", "payload": "hi"}))
        .await;
    lisa.expect(&[reply("test/broadcasted", json!({"from": "simon", "payload": "hi"}))])
        .await;
    simon.send(json!({"type": "test/broadcast-skip"})).await;
    lisa.expect(&[reply("test/broadcasted", json!({"from": "simon"}))])
        .await;
    // Simon got neither: his next message is his own echo.
    simon.send(json!({"type": "test/echo", "payload": "marker"})).await;
    simon.expect(&[reply("test/echoed", json!("marker"))]).await;
    endpoints.stop().await;
}

#[tokio::test]
async fn kick_a_linked_user_then_reply() {
    let endpoints = start().await;
    let mut simon = Client::linked_as(endpoints.main_port, "simon").await;
    let mut lisa = Client::linked_as(endpoints.main_port, "lisa").await;
    simon.expect(&[joined("lisa"), linked("lisa")]).await;

    simon.send(json!({"type": "test/kick", "payload": "lisa"})).await;
    simon
        .expect(&[unlinked("lisa"), left("lisa"), reply("test/kicked-ok", json!("lisa"))])
        .await;
    lisa.expect(&[unlinked("lisa"), left("lisa")]).await;
    assert_eq!(simon.users().await, json!([user("simon", true)]));
    // Lisa's connection stays open and may link again.
    assert_eq!(lisa.link("lisa", None).await, Ok(()));
    endpoints.stop().await;
}

#[tokio::test]
async fn kick_an_unlinked_user_then_reply() {
    let endpoints = start().await;
    let mut simon = Client::linked_as(endpoints.main_port, "simon").await;
    simon.send(json!({"type": "test/join", "payload": "bob"})).await;
    simon
        .expect(&[joined("bob"), reply("test/joined-ok", json!("bob"))])
        .await;
    simon.send(json!({"type": "test/kick", "payload": "bob"})).await;
    simon
        .expect(&[left("bob"), reply("test/kicked-ok", json!("bob"))])
        .await;
    endpoints.stop().await;
}

#[tokio::test]
async fn kick_yourself_gets_no_reply() {
    let endpoints = start().await;
    let mut simon = Client::linked_as(endpoints.main_port, "simon").await;
    simon.send(json!({"type": "test/kick", "payload": "simon"})).await;
    simon.expect(&[unlinked("simon"), left("simon")]).await;
    // No `test/kicked-ok`: the next message is the answer to a new link request.
    assert_eq!(simon.link("simon", None).await, Ok(()));
    simon.expect(&[joined("simon"), linked("simon")]).await;
    endpoints.stop().await;
}

#[tokio::test]
async fn kick_errors() {
    let endpoints = start().await;
    let mut simon = Client::linked_as(endpoints.main_port, "simon").await;
    simon.send(json!({"type": "test/kick", "payload": "nobody"})).await;
    simon.expect(&[error("cannot kick a user that does not exist")]).await;
    simon.send(json!({"type": "test/kick"})).await;
    simon.expect(&[error(NOT_A_USERNAME)]).await;
    simon.send(json!({"type": "test/kick", "payload": 42})).await;
    simon.expect(&[error(NOT_A_USERNAME)]).await;
    endpoints.stop().await;
}

#[tokio::test]
async fn unlink_a_linked_user_then_reply() {
    let endpoints = start().await;
    let mut simon = Client::linked_as(endpoints.main_port, "simon").await;
    let mut lisa = Client::linked_as(endpoints.main_port, "lisa").await;
    simon.expect(&[joined("lisa"), linked("lisa")]).await;

    simon.send(json!({"type": "test/unlink", "payload": "lisa"})).await;
    simon
        .expect(&[unlinked("lisa"), reply("test/unlinked-ok", json!("lisa"))])
        .await;
    lisa.expect(&[unlinked("lisa")]).await;
    assert_eq!(simon.users().await, json!([user("simon", true), user("lisa", false)]));
    // Lisa's connection stays open and may link to her user again.
    assert_eq!(lisa.link("lisa", None).await, Ok(()));
    lisa.expect(&[joined("simon"), linked("simon"), joined("lisa"), linked("lisa")])
        .await;
    endpoints.stop().await;
}

#[tokio::test]
async fn unlink_yourself_gets_no_reply() {
    let endpoints = start().await;
    let mut simon = Client::linked_as(endpoints.main_port, "simon").await;
    simon.send(json!({"type": "test/unlink", "payload": "simon"})).await;
    simon.expect(&[unlinked("simon")]).await;
    // No `test/unlinked-ok`: the next message is the answer to a new link request.
    assert_eq!(simon.link("simon", None).await, Ok(()));
    simon.expect(&[joined("simon"), linked("simon")]).await;
    endpoints.stop().await;
}

#[tokio::test]
async fn unlink_errors() {
    let endpoints = start().await;
    let mut simon = Client::linked_as(endpoints.main_port, "simon").await;
    simon.send(json!({"type": "test/unlink", "payload": "nobody"})).await;
    simon
        .expect(&[error("cannot unlink a connection from a user that does not exist")])
        .await;
    simon.send(json!({"type": "test/join", "payload": "bob"})).await;
    simon
        .expect(&[joined("bob"), reply("test/joined-ok", json!("bob"))])
        .await;
    simon.send(json!({"type": "test/unlink", "payload": "bob"})).await;
    simon
        .expect(&[error("cannot unlink a connection from a user that is not linked")])
        .await;
    simon.send(json!({"type": "test/unlink", "payload": ["simon"]})).await;
    simon.expect(&[error(NOT_A_USERNAME)]).await;
    endpoints.stop().await;
}

#[tokio::test]
async fn join_tells_everyone_then_replies() {
    let endpoints = start().await;
    let mut simon = Client::linked_as(endpoints.main_port, "simon").await;
    let mut lisa = Client::linked_as(endpoints.main_port, "lisa").await;
    simon.expect(&[joined("lisa"), linked("lisa")]).await;

    simon.send(json!({"type": "test/join", "payload": "bob"})).await;
    simon
        .expect(&[joined("bob"), reply("test/joined-ok", json!("bob"))])
        .await;
    lisa.expect(&[joined("bob")]).await;
    // Bob is unlinked and can be linked to.
    let (mut bob, answer) = Client::try_link(endpoints.main_port, "bob", None).await;
    assert_eq!(answer, Ok(()));
    bob.recv_until(&linked("bob")).await;
    endpoints.stop().await;
}

#[tokio::test]
async fn join_errors() {
    let endpoints = start().await;
    let mut simon = Client::linked_as(endpoints.main_port, "simon").await;
    simon.send(json!({"type": "test/join", "payload": "simon"})).await;
    simon.expect(&[error("cannot join a user that already exist")]).await;
    simon.send(json!({"type": "test/join", "payload": "x"})).await;
    simon
        .expect(&[error("cannot join a user with an invalid username")])
        .await;
    simon.send(json!({"type": "test/join"})).await;
    simon.expect(&[error(NOT_A_USERNAME)]).await;
    simon
        .send(json!({"type": "test/join", "payload": {"username": "bob"}}))
        .await;
    simon.expect(&[error(NOT_A_USERNAME)]).await;
    endpoints.stop().await;
}

#[tokio::test]
async fn users_lists_everyone_in_join_order() {
    let endpoints = start().await;
    let mut simon = Client::linked_as(endpoints.main_port, "simon").await;
    let lisa = Client::linked_as(endpoints.main_port, "lisa").await;
    simon.expect(&[joined("lisa"), linked("lisa")]).await;
    simon.send(json!({"type": "test/join", "payload": "bob"})).await;
    simon
        .expect(&[joined("bob"), reply("test/joined-ok", json!("bob"))])
        .await;
    simon.send(json!({"type": "test/unlink", "payload": "lisa"})).await;
    simon
        .expect(&[unlinked("lisa"), reply("test/unlinked-ok", json!("lisa"))])
        .await;
    assert_eq!(
        simon.users().await,
        json!([user("simon", true), user("lisa", false), user("bob", false)])
    );
    drop(lisa);
    endpoints.stop().await;
}

#[tokio::test]
async fn other_types_are_ignored_and_the_sender_stays_linked() {
    let endpoints = start().await;
    let mut simon = Client::linked_as(endpoints.main_port, "simon").await;
    simon.send(json!({"type": "test/unknown", "payload": 1})).await;
    simon.send(json!({"type": "chat/message", "payload": "hi"})).await;
    simon.send(json!({"type": "test/echoed"})).await;
    simon.send(json!({"type": "test/echo", "payload": "marker"})).await;
    simon.expect(&[reply("test/echoed", json!("marker"))]).await;
    assert_eq!(simon.users().await, json!([user("simon", true)]));
    endpoints.stop().await;
}
