//! Every configurable limit, crossed over real WebSocket connections on loopback.

use std::time::{Duration, Instant};

use emitter_core::Server;
use emitter_testing::*;
use serde_json::json;

#[tokio::test]
async fn connections_past_the_cap_are_refused_with_503() {
    let (server, _events, port) = start(Server::builder().max_connections(2)).await;
    let _a = RawClient::link_and_settle(port, "ann").await;
    let _b = RawClient::connect(port).await;
    let refused = RawClient::connect_to(port, "/").await.err().unwrap_or_default();
    assert!(refused.contains("503"), "{refused}");
    server.close().await.unwrap();
}

#[tokio::test]
async fn unlinked_connections_past_their_cap_are_refused_until_one_links() {
    let (server, _events, port) = start(Server::builder().max_unlinked_connections(1)).await;
    let mut first = RawClient::connect(port).await;
    let refused = RawClient::connect_to(port, "/").await.err().unwrap_or_default();
    assert!(refused.contains("503"), "{refused}");
    first.link("ann", None).await.unwrap();
    let mut second = RawClient::connect(port).await;
    second.link("bob", None).await.unwrap();
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_connection_that_never_links_is_closed_at_the_deadline() {
    let deadline = Duration::from_millis(300);
    let (server, events, port) = start(Server::builder().link_deadline(deadline)).await;
    let started = Instant::now();
    let mut idle = RawClient::connect(port).await;
    let mut linked = RawClient::link_and_settle(port, "ann").await;
    idle.expect_closed().await;
    assert!(started.elapsed() >= deadline, "closed after {:?}", started.elapsed());
    // The linked user was not touched, and after an unlink its connection gets the same deadline.
    server.send("ann", &marker("still-here")).unwrap();
    linked.expect(marker_json("still-here")).await;
    server.unlink("ann").unwrap();
    linked.expect(unlinked("ann")).await;
    linked.expect_closed().await;
    events.wait_for("unlink ann").await;
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_client_over_its_rate_limit_is_closed_and_unlinked() {
    let (server, events, port) = start(Server::builder().rate_limit(1.0, 5.0)).await;
    let mut flooder = RawClient::link_and_settle(port, "flood").await;
    let mut calm = RawClient::link_and_settle(port, "calm").await;
    for n in 0..20 {
        flooder.send(json!({"type": "app/spam", "payload": n})).await;
    }
    flooder.expect_closed().await;
    events.wait_for("unlink flood").await;
    let handled = events.count("message flood app/spam");
    assert!(
        handled <= 4,
        "at most the burst (5, one spent on the link) got through: {handled}"
    );
    calm.send(json!({"type": "app/ok"})).await;
    events.wait_for("message calm app/ok").await;
    server.close().await.unwrap();
}

#[tokio::test]
async fn deeply_nested_json_is_an_invalid_message() {
    let (server, events, port) = start(Server::builder().max_json_depth(8)).await;
    let mut client = RawClient::connect(port).await;
    let bomb = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
    client.send_raw(&bomb).await;
    client.expect(rejected("invalid message")).await;
    client.link("ann", None).await.unwrap();
    client.recv_until(&linked("ann")).await;
    let deep = format!(r#"{{"type":"app/x","payload":{}1{}}}"#, "[".repeat(8), "]".repeat(8));
    client.send_raw(&deep).await;
    client.expect(unlinked("ann")).await;
    events.wait_for("unlink ann").await;
    assert!(!events.lines().iter().any(|line| line.starts_with("message")));
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_snapshot_bigger_than_the_queue_is_one_entry() {
    let (server, _events, port) = start(Server::builder().outbound_queue(4)).await;
    for n in 0..30 {
        server.join(&format!("user{n}")).unwrap();
    }
    // 31 users: the newcomer's snapshot is 62 frames, far over a queue of 4 entries.
    let mut late = RawClient::link_as(port, "late").await;
    let snapshot = late.recv_until(&linked("late")).await;
    assert_eq!(snapshot.len(), 30 + 1, "30 joined users and the newcomer's own joined");
    assert!(server.user("late").unwrap().is_linked);
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_link_that_would_create_a_user_past_max_users_is_rejected_but_relinks_are_not() {
    let (server, events, port) = start(Server::builder().max_users(2)).await;
    let ann = RawClient::link_and_settle(port, "ann").await;
    let _bob = RawClient::link_and_settle(port, "bob").await;
    let mut cat = RawClient::connect(port).await;
    assert_eq!(cat.link("cat", None).await, Err("server has too many users".to_owned()));
    assert_eq!(server.users().len(), 2);
    let metrics = server.metrics_text();
    assert!(
        metrics.contains(r#"krmx_rejections_total{reason="too_many_users"} 1"#),
        "{metrics}"
    );
    // Ann's tab closes: she is unlinked but still a user, and her relink is never refused by the cap.
    ann.close().await;
    events.wait_for("unlink ann").await;
    let mut ann = RawClient::connect(port).await;
    assert_eq!(ann.link("ann", None).await, Ok(()));
    // A user that leaves makes room for a new one, on the connection that was refused.
    server.kick("bob").unwrap();
    events.wait_for("leave bob").await;
    assert_eq!(cat.link("cat", None).await, Ok(()));
    server.close().await.unwrap();
}
