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
    assert_eq!(
        TestClient::attempt(&url, "lisa", Some("guess")).await.1,
        Err("invalid token".to_owned())
    );
    assert_eq!(
        TestClient::attempt(&url, "lisa", None).await.1,
        Err("invalid token".to_owned())
    );
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_full_room_takes_no_new_users_but_lets_old_ones_relink() {
    let server = Server::new();
    limit_users(&server, 1);
    let url = ws_url(emitter_testing::listen(&server).await, "/");
    let (simon, outcome) = TestClient::attempt(&url, "simon", None).await;
    assert_eq!(outcome, Ok(()));
    assert_eq!(
        TestClient::attempt(&url, "lisa", None).await.1,
        Err("server is full".to_owned())
    );

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
    let wrong = Err("unknown user or wrong password".to_owned());
    assert_eq!(TestClient::attempt(&url, "lisa", Some("hunter2")).await.1, wrong);
    assert_eq!(TestClient::attempt(&url, "simon", Some("hunter3")).await.1, wrong);
    assert_eq!(
        TestClient::attempt(&url, "simon", None).await.1,
        Err("a password is required".to_owned())
    );
    server.close().await.unwrap();
}
