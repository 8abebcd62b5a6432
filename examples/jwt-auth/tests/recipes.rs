//! The authentication chapter's recipes over a real socket.

mod support;

use std::time::Duration;

use emitter_core::Server;
use example_jwt_auth::recipes::{check_accounts, limit_users, require_token, Accounts};
use support::{attempt, start};

#[tokio::test]
async fn a_shared_token() {
    let server = Server::new();
    require_token(&server, "open-sesame");
    let port = start(&server).await;
    assert_eq!(attempt(port, "simon", Some("open-sesame")).await.1, Ok(()));
    assert_eq!(
        attempt(port, "lisa", Some("guess")).await.1,
        Err("invalid token".to_owned())
    );
    assert_eq!(attempt(port, "lisa", None).await.1, Err("invalid token".to_owned()));
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_full_room_takes_no_new_users_but_lets_old_ones_relink() {
    let server = Server::new();
    limit_users(&server, 1);
    let port = start(&server).await;
    let (simon, outcome) = attempt(port, "simon", None).await;
    assert_eq!(outcome, Ok(()));
    assert_eq!(attempt(port, "lisa", None).await.1, Err("server is full".to_owned()));

    let unlinked = server.wait_for_unlink();
    drop(simon);
    tokio::time::timeout(support::TIMEOUT, unlinked).await.unwrap();
    assert_eq!(attempt(port, "simon", None).await.1, Ok(()));
    server.close().await.unwrap();
}

#[tokio::test]
async fn an_async_account_lookup() {
    let accounts = Accounts::default();
    accounts.insert("simon", "hunter2").await;
    let server = Server::builder().auth_timeout(Duration::from_secs(5)).build();
    check_accounts(&server, accounts);
    let port = start(&server).await;
    assert_eq!(attempt(port, "simon", Some("hunter2")).await.1, Ok(()));
    let wrong = Err("unknown user or wrong password".to_owned());
    assert_eq!(attempt(port, "lisa", Some("hunter2")).await.1, wrong);
    assert_eq!(attempt(port, "simon", Some("hunter3")).await.1, wrong);
    assert_eq!(
        attempt(port, "simon", None).await.1,
        Err("a password is required".to_owned())
    );
    server.close().await.unwrap();
}
