//! The authentication chapter's recipes over a real socket.

use std::time::Duration;

use emitter_core::Server;
use emitter_testing::{within, ws_url, TestClient};
use example_jwt_auth::recipes::{check_accounts, limit_users, require_token, Accounts};

#[tokio::test]
async fn a_shared_token() {
    let server = Server::new();
    require_token(&server, "open-sesame");
    let url = ws_url(emitter_testing::listen(&server).await, "/");
    assert_eq!(TestClient::attempt(&url, "simon", Some("open-sesame")).await.1, Ok(()));
    TestClient::expect_rejected(&url, "lisa", Some("guess"), "invalid token").await;
    TestClient::expect_rejected(&url, "lisa", None, "invalid token").await;
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_full_room_takes_no_new_users_but_lets_old_ones_relink() {
    let server = Server::new();
    limit_users(&server, 1);
    let url = ws_url(emitter_testing::listen(&server).await, "/");
    let (simon, outcome) = TestClient::attempt(&url, "simon", None).await;
    assert_eq!(outcome, Ok(()));
    TestClient::expect_rejected(&url, "lisa", None, "server is full").await;

    let unlinked = server.wait_for_unlink();
    drop(simon);
    within("simon's unlink", unlinked).await.unwrap();
    assert_eq!(TestClient::attempt(&url, "simon", None).await.1, Ok(()));
    server.close().await.unwrap();
}

#[tokio::test]
async fn an_async_account_lookup() {
    let accounts = Accounts::default();
    accounts.insert("simon", "hunter2").await;
    let server = Server::builder().auth_timeout(Duration::from_secs(5)).build();
    check_accounts(&server, accounts);
    let url = ws_url(emitter_testing::listen(&server).await, "/");
    assert_eq!(TestClient::attempt(&url, "simon", Some("hunter2")).await.1, Ok(()));
    let wrong = "unknown user or wrong password";
    TestClient::expect_rejected(&url, "lisa", Some("hunter2"), wrong).await;
    TestClient::expect_rejected(&url, "simon", Some("hunter3"), wrong).await;
    TestClient::expect_rejected(&url, "simon", None, "a password is required").await;
    server.close().await.unwrap();
}
