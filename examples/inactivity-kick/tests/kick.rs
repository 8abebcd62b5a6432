//! Inactivity kicks over a real socket on loopback. Every wait is on a server event, bounded by a timeout.

use std::time::{Duration, Instant};

use emitter_core::Server;
use emitter_testing::{ws_url, TestClient};

const TIMEOUT: Duration = Duration::from_secs(10);

async fn start(after: Duration) -> (Server, String) {
    let server = example_inactivity_kick::server(after);
    let port = emitter_testing::listen(&server).await;
    (server, ws_url(port, "/"))
}

async fn link(url: &str, username: &str) -> TestClient {
    let (client, outcome) = TestClient::attempt(url, username, None).await;
    assert_eq!(outcome, Ok(()), "{username}");
    client
}

/// Drops the connection and waits until the server has unlinked the user.
async fn disconnect(server: &Server, client: TestClient, username: &'static str) {
    let unlinked = server.wait_for_unlink_when(move |name| name == username);
    drop(client);
    tokio::time::timeout(TIMEOUT, unlinked).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_user_unlinked_too_long_is_kicked() {
    let after = Duration::from_millis(300);
    let (server, url) = start(after).await;
    let alice = link(&url, "alice").await;
    let left = server.wait_for_leave_when(|name| name == "alice");
    let unlinked_at = Instant::now();
    disconnect(&server, alice, "alice").await;
    tokio::time::timeout(TIMEOUT, left).await.unwrap().unwrap();
    assert!(unlinked_at.elapsed() >= after);
    assert_eq!(server.user("alice"), None);
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_user_who_relinks_in_time_stays() {
    let (server, url) = start(Duration::from_secs(1)).await;
    let bob = link(&url, "bob").await;
    disconnect(&server, bob, "bob").await;
    let _bob = link(&url, "bob").await; // well within the second

    // Carol's countdown starts after bob's would have: once carol is kicked, bob's would have run out too.
    let carol = link(&url, "carol").await;
    let left = server.wait_for_leave_when(|name| name == "carol");
    disconnect(&server, carol, "carol").await;
    tokio::time::timeout(TIMEOUT, left).await.unwrap().unwrap();
    assert!(server.user("bob").is_some_and(|user| user.is_linked));
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_joined_user_nobody_links_to_is_kicked() {
    let (server, _url) = start(Duration::from_millis(200)).await;
    let left = server.wait_for_leave_when(|name| name == "ghost");
    server.join("ghost").unwrap();
    tokio::time::timeout(TIMEOUT, left).await.unwrap().unwrap();
    assert!(server.users().is_empty());
    server.close().await.unwrap();
}
