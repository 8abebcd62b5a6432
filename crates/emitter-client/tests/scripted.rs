//! The client against a scripted WebSocket server that sends exactly what each test says, including what no good
//! server sends: the client must ignore it and carry on.

mod support;

use std::sync::Arc;

use emitter_client::{Client, ClientStatus, User};
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{json, Value};
use support::within;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

struct Peer {
    socket: WebSocketStream<TcpStream>,
}

impl Peer {
    async fn recv(&mut self) -> Value {
        loop {
            match within("a frame from the client", self.socket.next()).await {
                Some(Ok(WsMessage::Text(text))) => return serde_json::from_str(&text).unwrap(),
                Some(Ok(_)) => continue,
                other => panic!("the client went away: {other:?}"),
            }
        }
    }

    async fn send(&mut self, text: &str) {
        self.socket.send(WsMessage::text(text.to_owned())).await.unwrap();
    }

    async fn send_json(&mut self, value: Value) {
        self.send(&value.to_string()).await;
    }
}

/// Listens on a loopback port; returns the URL and the first connection, once the client opened it.
async fn scripted(client: &Client) -> Peer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://127.0.0.1:{}/", listener.local_addr().unwrap().port());
    let accepted = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        tokio_tungstenite::accept_async(stream).await.unwrap()
    });
    within("connect", client.connect(&url)).await.unwrap();
    Peer {
        socket: within("accept", accepted).await.unwrap(),
    }
}

async fn link(client: &Client, peer: &mut Peer, username: &str) {
    let linked = client.link(username, None);
    let request = peer.recv().await;
    assert_eq!(request["type"], "krmx/link");
    peer.send(r#"{"type":"krmx/accepted"}"#).await;
    peer.send_json(json!({"type": "krmx/joined", "payload": {"username": username}}))
        .await;
    peer.send_json(json!({"type": "krmx/linked", "payload": {"username": username}}))
        .await;
    within("link", linked).await.unwrap();
}

#[tokio::test]
async fn the_link_request_has_the_reference_shape() {
    let client = Client::builder().version("0.5.4").build();
    let mut peer = scripted(&client).await;
    let _linking = client.link("simon", None);
    assert_eq!(
        peer.recv().await,
        json!({"type": "krmx/link", "payload": {"username": "simon", "version": "0.5.4"}})
    );
    peer.send_json(json!({"type": "krmx/rejected", "payload": {"reason": "no"}}))
        .await;
    let _ = within("reject", client.wait_for_reject()).await;
    let _linking = client.link("simon", Some("secret"));
    assert_eq!(
        peer.recv().await,
        json!({"type": "krmx/link", "payload": {"username": "simon", "version": "0.5.4", "auth": "secret"}})
    );
}

#[tokio::test]
async fn unlink_leave_and_messages_have_the_reference_shape() {
    let client = Client::new();
    let mut peer = scripted(&client).await;
    link(&client, &mut peer, "simon").await;
    client.send(&emitter_client::Message::new("custom/a")).unwrap();
    assert_eq!(peer.recv().await, json!({"type": "custom/a"}));
    client.send_payload("custom/b", &json!({"x": null})).unwrap();
    assert_eq!(peer.recv().await, json!({"type": "custom/b", "payload": {"x": null}}));
    let _unlinking = client.unlink();
    assert_eq!(peer.recv().await, json!({"type": "krmx/unlink"}));
    peer.send_json(json!({"type": "krmx/unlinked", "payload": {"username": "simon"}}))
        .await;
    within("unlink", _unlinking).await.unwrap();
    link(&client, &mut peer, "simon").await;
    let _leaving = client.leave();
    assert_eq!(peer.recv().await, json!({"type": "krmx/leave"}));
}

#[tokio::test]
async fn frames_no_good_server_sends_are_ignored() {
    let client = Client::new();
    let mut peer = scripted(&client).await;
    let received = Arc::new(Mutex::new(Vec::new()));
    let r = received.clone();
    let _messages = client.on_message(move |message| r.lock().push(message.kind.clone()));

    // A custom message before linking is not delivered (the reference logs and drops it too).
    peer.send(r#"{"type":"custom/too-early"}"#).await;
    // So is an accepted that answers no request.
    peer.send(r#"{"type":"krmx/accepted"}"#).await;
    link(&client, &mut peer, "simon").await;

    for garbage in [
        "",
        "not json",
        "42",
        "null",
        "[]",
        r#"{"type":3}"#,
        r#"{"payload":"no type"}"#,
        r#"{"type":"krmx/unknown"}"#,
        r#"{"type":"krmx/linked"}"#,
        r#"{"type":"krmx/joined","payload":{"username":7}}"#,
        r#"{"type":"krmx/rejected"}"#,
        r#"{"type":"krmx/linked","payload":{"username":"ghost"}}"#,
        r#"{"type":"krmx/unlinked","payload":{"username":"ghost"}}"#,
        r#"{"type":"krmx/rejected","payload":{"reason":"late"}}"#,
    ] {
        peer.send(garbage).await;
    }
    // A binary frame holding a message is read like a text frame.
    peer.socket
        .send(WsMessage::binary(br#"{"type":"custom/binary"}"#.to_vec()))
        .await
        .unwrap();
    let marker = client.wait_for_message_when(|m| m.kind == "custom/marker");
    peer.send(r#"{"type":"custom/marker"}"#).await;
    within("marker", marker).await;
    assert_eq!(*received.lock(), ["custom/binary", "custom/marker"]);
    assert_eq!(client.status(), ClientStatus::Linked);
    assert_eq!(
        client.users(),
        [User {
            username: "simon".into(),
            is_linked: true
        }]
    );
}

/// A server rejects every message that reached it after it unlinked the connection with `unlinked connection`.
/// Such a late reply may arrive while the client is already linking again; it must not end that link request.
#[tokio::test]
async fn a_late_unlinked_connection_rejection_does_not_end_a_new_link_request() {
    let client = Client::new();
    let mut peer = scripted(&client).await;
    link(&client, &mut peer, "simon").await;
    let rejects = Arc::new(Mutex::new(Vec::new()));
    let r = rejects.clone();
    let _rejects = client.on_reject(move |reason| r.lock().push(reason.to_owned()));
    // The server unlinks simon while simon's message is on its way.
    client.send(&emitter_client::Message::new("custom/in-flight")).unwrap();
    peer.send_json(json!({"type": "krmx/unlinked", "payload": {"username": "simon"}}))
        .await;
    assert_eq!(peer.recv().await["type"], "custom/in-flight");
    within("unlink", client.wait_for_unlink()).await;
    let linking = client.link("simon", None);
    assert_eq!(peer.recv().await["type"], "krmx/link");
    // The late reply to the in-flight message, then the answer to the link request.
    peer.send(r#"{"type":"krmx/rejected","payload":{"reason":"unlinked connection"}}"#)
        .await;
    peer.send(r#"{"type":"krmx/accepted"}"#).await;
    peer.send(r#"{"type":"krmx/joined","payload":{"username":"simon"}}"#)
        .await;
    peer.send(r#"{"type":"krmx/linked","payload":{"username":"simon"}}"#)
        .await;
    within("link", linking).await.unwrap();
    assert_eq!(client.status(), ClientStatus::Linked);
    assert!(rejects.lock().is_empty());
}

#[tokio::test]
async fn the_server_closing_the_socket_closes_the_client() {
    let client = Client::new();
    let mut peer = scripted(&client).await;
    link(&client, &mut peer, "simon").await;
    let closed = client.wait_for_close();
    peer.socket.close(None).await.unwrap();
    // A well-behaved server reads the echoed close frame and ends the connection.
    while let Some(Ok(_)) = within("the echoed close", peer.socket.next()).await {}
    drop(peer);
    within("close", closed).await;
    assert_eq!(client.status(), ClientStatus::Closed);
    assert_eq!(client.username(), None);
    assert!(client.users().is_empty());
}

#[tokio::test]
async fn a_server_that_closes_but_keeps_the_connection_is_given_the_close_timeout() {
    let client = Client::builder()
        .close_timeout(std::time::Duration::from_millis(100))
        .build();
    let mut peer = scripted(&client).await;
    link(&client, &mut peer, "simon").await;
    let closed = client.wait_for_close();
    peer.socket.close(None).await.unwrap();
    // The peer never reads again and keeps the TCP connection open.
    within("close", closed).await;
    assert_eq!(client.status(), ClientStatus::Closed);
    drop(peer);
}

#[tokio::test]
async fn disconnect_completes_the_close_handshake() {
    let client = Client::new();
    let mut peer = scripted(&client).await;
    link(&client, &mut peer, "simon").await;
    let disconnecting = client.disconnect(true);
    // The peer sees a close frame (tungstenite answers it) and then the end of the stream.
    match within("close frame", peer.socket.next()).await {
        Some(Ok(WsMessage::Close(_))) => {}
        other => panic!("expected a close frame, got {other:?}"),
    }
    while let Some(Ok(_)) = within("end", peer.socket.next()).await {}
    drop(peer); // the server ends the TCP connection
    within("disconnect", disconnecting).await.unwrap();
    assert_eq!(client.status(), ClientStatus::Closed);
}
