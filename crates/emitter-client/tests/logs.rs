//! What the client logs holds no secret: its URL without the query or the user info, over real sockets.

use emitter_client::{Client, Error};
use emitter_core::Server;
use emitter_testing::{listen, within, CapturedLogs};

#[tokio::test]
async fn the_url_is_logged_without_its_query_or_user_info() {
    let (logs, _capturing) = CapturedLogs::capture();
    let server = Server::new();
    let port = listen(&server).await;

    let client = Client::new();
    within(
        "connect",
        client.connect(&format!("ws://127.0.0.1:{port}/?token=query-s3cret")),
    )
    .await
    .unwrap();
    within("link", client.link("simon", Some("auth-s3cret"))).await.unwrap();
    within("disconnect", client.disconnect(true)).await.unwrap();

    // A connection that fails: its error and its log lines name the server without the secrets.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("ws://me:password-s3cret@127.0.0.1:{closed_port}/ws?token=query-s3cret#frag-s3cret");
    let error = within("a failed connect", client.connect(&url)).await.unwrap_err();
    let Error::Connect { url: reported, .. } = &error else {
        panic!("expected a connect error, got {error:?}")
    };
    assert_eq!(reported, &format!("ws://127.0.0.1:{closed_port}/ws"));
    assert!(!error.to_string().contains("s3cret"), "{error}");
    assert!(!format!("{error:?}").contains("s3cret"), "{error:?}");

    let lines = logs.all();
    assert!(
        lines
            .iter()
            .any(|(_, line)| line.contains(&format!("ws://127.0.0.1:{port}/"))),
        "the URL is logged: {lines:?}"
    );
    for (_, line) in &lines {
        assert!(!line.contains("s3cret"), "a secret was logged: {line}");
    }
    server.close().await.unwrap();
}
