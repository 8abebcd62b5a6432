//! JWT authentication over a real socket: each way a token can fail, and the one way it passes.

use std::time::Duration;

use emitter_testing::{ws_url, TestClient};
use example_jwt_auth::{build, expires_in, issue, Bans};

const SECRET: &[u8] = b"test-secret";

fn token(username: &str) -> String {
    issue(SECRET, username, expires_in(Duration::from_secs(60))).unwrap()
}

#[tokio::test]
async fn a_valid_token_for_the_username_links() {
    let server = build(SECRET, Bans::default());
    let url = ws_url(emitter_testing::listen(&server).await, "/");
    let (_simon, outcome) = TestClient::attempt(&url, "simon", Some(&token("simon"))).await;
    assert_eq!(outcome, Ok(()));
    assert!(server.user("simon").is_some_and(|user| user.is_linked));
    server.close().await.unwrap();
}

#[tokio::test]
async fn bad_tokens_are_rejected_with_a_reason() {
    let bans = Bans::default();
    bans.ban("mallory").await;
    let server = build(SECRET, bans);
    let url = ws_url(emitter_testing::listen(&server).await, "/");

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
        let (_ws, outcome) = TestClient::attempt(&url, username, auth.as_deref()).await;
        assert_eq!(outcome, Err(reason.to_owned()), "{username} {auth:?}");
    }
    assert!(server.users().is_empty());
    server.close().await.unwrap();
}
