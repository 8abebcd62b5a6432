//! First checks over real sockets: linking, the snapshot, messages, unlink and leave.

use emitter_testing::*;
use serde_json::json;

#[tokio::test]
async fn accepts_a_valid_link_and_sends_the_snapshot() {
    let (server, events, port) = start_default().await;
    let mut simon = RawClient::link_as(port, "simon").await;
    simon.expect_all(&[joined("simon"), linked("simon")]).await;
    events.wait_for("link simon").await;
    assert_eq!(
        events.lines()[1..],
        ["authenticate simon new=true auth=None", "join simon", "link simon"]
    );

    let mut lisa = RawClient::link_as(port, "lisa").await;
    lisa.expect_all(&snapshot(&["simon", "lisa"])).await;
    simon.expect_all(&[joined("lisa"), linked("lisa")]).await;

    lisa.send(json!({"type": "custom/hello", "payload": {"key": "value"}}))
        .await;
    let (from, message) = server.wait_for_message().await.unwrap();
    assert_eq!(from, "lisa");
    assert_eq!(message.payload, Some(json!({"key": "value"})));

    lisa.send(json!({"type": "krmx/leave"})).await;
    lisa.expect_all(&[unlinked("lisa"), left("lisa")]).await;
    simon.expect_all(&[unlinked("lisa"), left("lisa")]).await;
    events.wait_for("leave lisa").await;
    assert_eq!(server.users().len(), 1);
    server.close().await.unwrap();
    assert!(events.contains("close"));
}
