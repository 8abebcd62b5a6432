//! JWT authentication over a real socket: each way a token can fail, and the one way it passes.

mod support;

use std::time::Duration;

use example_jwt_auth::{build, expires_in, issue, Bans};
use support::{attempt, start};

const SECRET: &[u8] = b"test-secret";

fn token(username: &str) -> String {
    issue(SECRET, username, expires_in(Duration::from_secs(60))).unwrap()
}

#[tokio::test]
async fn a_valid_token_for_the_username_links() {
    let server = build(SECRET, Bans::default());
    let port = start(&server).await;
    let (_simon, outcome) = attempt(port, "simon", Some(&token("simon"))).await;
    assert_eq!(outcome, Ok(()));
    assert!(server.user("simon").is_some_and(|user| user.is_linked));
    server.close().await.unwrap();
}

#[tokio::test]
async fn bad_tokens_are_rejected_with_a_reason() {
    let bans = Bans::default();
    bans.ban("mallory").await;
    let server = build(SECRET, bans);
    let port = start(&server).await;

    let expired = issue(SECRET, "simon", 1_000_000).unwrap(); // in 1970
    let forged = issue(b"another-secret", "simon", expires_in(Duration::from_secs(60))).unwrap();
    let cases = [
        ("simon", None, "a token is required"),
        ("simon", Some("not-a-jwt".to_owned()), "invalid token"),
        ("simon", Some(forged), "invalid token"),
        ("simon", Some(expired), "token expired"),
        ("simon", Some(token("lisa")), "the token is for another user"),
        ("mallory", Some(token("mallory")), "mallory is banned"),
    ];
    for (username, auth, reason) in cases {
        let (_ws, outcome) = attempt(port, username, auth.as_deref()).await;
        assert_eq!(outcome, Err(reason.to_owned()), "{username} {auth:?}");
    }
    assert!(server.users().is_empty());
    server.close().await.unwrap();
}
