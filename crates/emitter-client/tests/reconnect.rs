//! The opt-in reconnect policy, against emitter's server behind a TCP proxy whose connections the tests cut.

mod support;

use std::sync::Arc;
use std::time::Duration;

use emitter_client::{Client, ClientEvent, ClientStatus, Reconnect};
use emitter_core::{Message, Server};
use parking_lot::Mutex;
use support::{connect_and_link, start_default, within, Proxy};
use tokio::sync::Notify;

fn fast() -> Reconnect {
    Reconnect::new()
        .initial_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(80))
}

/// Records event names in order.
fn record(client: &Client) -> Arc<Mutex<Vec<String>>> {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    client.on_any(move |event| {
        let line = match event {
            ClientEvent::Link { username } | ClientEvent::Unlink { username } => {
                format!("{} {username}", event.name())
            }
            other => other.name().to_owned(),
        };
        s.lock().push(line);
    });
    seen
}

/// A default server, and a proxy in front of it whose connections the test cuts.
async fn proxied() -> (Server, Proxy) {
    let (server, url) = start_default().await;
    let proxy = Proxy::to(&url).await;
    (server, proxy)
}

/// [`proxied`], with `client` linked as simon through the proxy.
async fn simon_through_proxy(client: &Client) -> (Server, Proxy) {
    let (server, proxy) = proxied().await;
    connect_and_link(client, &proxy.url(), "simon").await;
    (server, proxy)
}

/// Cuts every connection through `proxy`, and waits until `client` has seen its own close.
async fn cut_until_closed(proxy: &Proxy, client: &Client) {
    let closed = client.wait_for_close();
    proxy.cut();
    within("close", closed).await;
}

/// Notified on the `n`th close event from now on.
fn nth_close(client: &Client, n: usize) -> Arc<Notify> {
    let closes = Arc::new(Mutex::new(0usize));
    let nth = Arc::new(Notify::new());
    let notify = nth.clone();
    // Kept for the client's lifetime.
    client.on_close(move || {
        let mut closes = closes.lock();
        *closes += 1;
        if *closes == n {
            notify.notify_one();
        }
    });
    nth
}

#[tokio::test]
async fn a_dropped_connection_is_reconnected_and_the_user_relinked() {
    let (server, proxy) = proxied().await;
    let client = Client::builder().reconnect(fast()).build();
    within("connect", client.connect(&proxy.url())).await.unwrap();
    within("link", client.link("simon", Some("token"))).await.unwrap();
    let seen = record(&client);

    let server_unlinked = server.wait_for_unlink();
    let server_relinked = server.wait_for_event(|event| match event {
        emitter_core::Event::Authenticate { username, info } => {
            Some((username.to_string(), (info.is_new_user, info.auth.clone())))
        }
        _ => None,
    });
    let relinked = client.wait_for_link_when(|u| u == "simon");
    proxy.cut();
    assert_eq!(within("server unlink", server_unlinked).await.unwrap(), "simon");
    let (username, (is_new_user, auth)) = within("relink request", server_relinked).await.unwrap();
    assert_eq!(username, "simon");
    assert!(!is_new_user, "the same user, kept by the server");
    assert_eq!(auth.as_deref(), Some("token"), "the same auth");
    within("relink", relinked).await;
    assert_eq!(client.status(), ClientStatus::Linked);
    assert_eq!(client.username().as_deref(), Some("simon"));
    assert_eq!(
        *seen.lock(),
        [
            "close",
            "connecting",
            "connect",
            "linking",
            "accept",
            "join",
            "link simon"
        ]
    );

    // Linked for real: messages flow both ways again.
    let received = server.wait_for_message();
    client.send(&Message::new("custom/back")).unwrap();
    assert_eq!(within("message", received).await.unwrap().0, "simon");
    within("disconnect", client.disconnect(true)).await.unwrap();
    within("server close", server.close()).await.unwrap();
}

#[tokio::test]
async fn failed_attempts_back_off_and_retry_until_the_server_is_back() {
    let client = Client::builder().reconnect(fast()).build();
    let (server, proxy) = simon_through_proxy(&client).await;

    // While the proxy refuses, every attempt fails to connect (a close event each, after the drop's own).
    let three_failures = nth_close(&client, 4);
    proxy.refuse(true);
    let before = proxy.accepted();
    let relinked = client.wait_for_link_when(|u| u == "simon");
    proxy.cut();
    within("three failed attempts", three_failures.notified()).await;
    assert!(proxy.accepted() - before >= 3);
    assert_ne!(client.status(), ClientStatus::Linked);
    proxy.refuse(false);
    within("relink", relinked).await;
    assert_eq!(client.status(), ClientStatus::Linked);
    within("disconnect", client.disconnect(true)).await.unwrap();
    within("server close", server.close()).await.unwrap();
}

#[tokio::test]
async fn the_policy_gives_up_after_max_attempts() {
    let client = Client::builder()
        .reconnect(
            Reconnect::new()
                .initial_delay(Duration::from_millis(10))
                .max_delay(Duration::from_millis(10))
                .max_attempts(2),
        )
        .build();
    let (server, proxy) = simon_through_proxy(&client).await;
    let seen = record(&client);
    let third_close = nth_close(&client, 3);
    proxy.refuse(true);
    proxy.cut();
    // The drop's close, then one per failed attempt.
    within("two failed attempts", third_close.notified()).await;
    // Then nothing: a quiet window of thirty delays in which a third attempt would have started.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        *seen.lock(),
        ["close", "connecting", "close", "connecting", "close"],
        "exactly two attempts"
    );
    assert_eq!(client.status(), ClientStatus::Closed);
    within("server close", server.close()).await.unwrap();
}

#[tokio::test]
async fn asked_for_closes_and_server_side_unlinks_do_not_reconnect() {
    let (server, proxy) = proxied().await;
    let client = Client::builder().reconnect(fast()).build();

    // disconnect(true) while linked.
    connect_and_link(&client, &proxy.url(), "simon").await;
    within("disconnect", client.disconnect(true)).await.unwrap();
    // Kicked, then the connection drops while only connected.
    connect_and_link(&client, &proxy.url(), "simon").await;
    let kicked = client.wait_for_leave();
    server.kick("simon").unwrap();
    within("kick", kicked).await;
    cut_until_closed(&proxy, &client).await;
    // A user who connects on their own stops nothing and starts nothing: a fresh connection is the only one.
    let accepted = proxy.accepted();
    let seen = record(&client);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(seen.lock().is_empty(), "no reconnect: {:?}", seen.lock());
    assert_eq!(proxy.accepted(), accepted);
    assert_eq!(client.status(), ClientStatus::Closed);
    within("server close", server.close()).await.unwrap();
}

#[tokio::test]
async fn a_user_action_stops_a_reconnect_under_way() {
    let (server, url) = start_default().await;
    let proxy = Proxy::to(&url).await;
    let first_retry = Duration::from_secs(1);
    let client = Client::builder()
        .reconnect(Reconnect::new().initial_delay(first_retry))
        .build();
    connect_and_link(&client, &proxy.url(), "simon").await;
    cut_until_closed(&proxy, &client).await;
    let closed_at = tokio::time::Instant::now();
    // Before the first retry, the user connects straight to the server and links someone else.
    connect_and_link(&client, &url, "lisa").await;
    let accepted = proxy.accepted();
    // Past the time of the first retry, nothing went through the proxy.
    tokio::time::sleep_until(closed_at + first_retry + Duration::from_millis(300)).await;
    assert_eq!(proxy.accepted(), accepted, "the reconnect stopped");
    assert_eq!(client.username().as_deref(), Some("lisa"));
    assert_eq!(client.status(), ClientStatus::Linked);
    within("server close", server.close()).await.unwrap();
}

#[tokio::test]
async fn without_a_policy_a_dropped_connection_stays_closed() {
    let client = Client::new();
    let (server, proxy) = simon_through_proxy(&client).await;
    cut_until_closed(&proxy, &client).await;
    assert_eq!(client.status(), ClientStatus::Closed);
    assert_eq!(client.username(), None);
    assert!(client.users().is_empty());
    // The application relinks by hand, as with the reference client.
    connect_and_link(&client, &proxy.url(), "simon").await;
    within("server close", server.close()).await.unwrap();
}
