//! [`RawClient`]: Krmx frames written and read by hand over a real WebSocket.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{connect_async, connect_async_with_config, MaybeTlsStream, WebSocketStream};

use crate::frames::{accepted, joined, link_request, linked, snapshot, unlinked};
use crate::{Receive, TIMEOUT};

/// The WebSocket under a [`RawClient`], for a test that drives it itself (a flood, a reader that never reads).
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// WebSocket opcodes, for [`RawClient::send_frame`].
pub mod opcode {
    /// A text frame.
    pub const TEXT: u8 = 0x1;
    /// A binary frame.
    pub const BINARY: u8 = 0x2;
}

/// A Krmx client that reads and writes frames as they are: it checks nothing and hides nothing, so a test sees exactly
/// what the server sent, in order, and can send what a client library would refuse to.
pub struct RawClient {
    ws: WsStream,
    /// The user this connection linked to, for messages; `None` before a link was accepted.
    pub username: Option<String>,
}

/// Reads the frames the server sent, as they came; see [`Receive`] for the rest.
impl Receive for RawClient {
    async fn try_recv(&mut self) -> Option<Value> {
        loop {
            let next = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for a message ({:?})", self.username));
            match next {
                Some(Ok(WsMessage::Text(text))) => return Some(serde_json::from_str(&text).unwrap()),
                Some(Ok(WsMessage::Binary(_))) => panic!("the server sent a binary frame"),
                Some(Ok(WsMessage::Close(_))) => {
                    // Answer the close frame (the WebSocket layer queued the answer) as a browser does.
                    let _ = self.ws.flush().await;
                    return None;
                }
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    fn name(&self) -> String {
        format!("{:?}", self.username)
    }
}

impl RawClient {
    /// Opens a connection to `ws://127.0.0.1:{port}{path_and_query}`; `Err` holds the handshake's error.
    pub async fn connect_to(port: u16, path_and_query: &str) -> Result<RawClient, String> {
        let url = format!("ws://127.0.0.1:{port}{path_and_query}");
        match tokio::time::timeout(TIMEOUT, connect_async(url)).await {
            Ok(Ok((ws, _))) => Ok(RawClient { ws, username: None }),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => panic!("timed out connecting"),
        }
    }

    /// A client on a WebSocket the test opened itself (with headers of its own, say).
    pub fn on(ws: WsStream) -> RawClient {
        RawClient { ws, username: None }
    }

    /// Opens a connection to path `/`.
    pub async fn connect(port: u16) -> RawClient {
        RawClient::connect_to(port, "/").await.unwrap()
    }

    /// Opens a connection to path `/` on a socket with Nagle's algorithm off (`TCP_NODELAY`), so that any wait on a
    /// reply is the server's.
    pub async fn connect_nodelay(port: u16) -> RawClient {
        let url = format!("ws://127.0.0.1:{port}/");
        let (ws, _) = tokio::time::timeout(TIMEOUT, connect_async_with_config(url, None, true))
            .await
            .expect("timed out connecting")
            .unwrap();
        RawClient { ws, username: None }
    }

    /// Connects and links as `username` with an optional `auth`; `Err` holds the reject reason, or
    /// `connection closed`. On success the next message to read is the first of the user snapshot.
    pub async fn link_with(port: u16, username: &str, auth: Option<&str>) -> Result<RawClient, String> {
        let mut client = RawClient::connect(port).await;
        client.link(username, auth).await?;
        Ok(client)
    }

    /// Connects and links as `username`; panics unless accepted. The snapshot is left unread.
    pub async fn link_as(port: u16, username: &str) -> RawClient {
        RawClient::link_with(port, username, None)
            .await
            .unwrap_or_else(|reason| panic!("{username} was rejected: {reason}"))
    }

    /// Connects, links, and reads the snapshot up to and including the user's own `krmx/linked`.
    pub async fn link_and_settle(port: u16, username: &str) -> RawClient {
        let mut client = RawClient::link_as(port, username).await;
        client.recv_until(&linked(username)).await;
        client
    }

    /// Links `first`, then `second`, each up to its own `krmx/linked`, and reads `second`'s `krmx/joined` and
    /// `krmx/linked` on `first`'s connection: two users with nothing left to read.
    pub async fn link_pair(port: u16, first: &str, second: &str) -> (RawClient, RawClient) {
        RawClient::link_pair_on((port, first), (port, second)).await
    }

    /// [`link_pair`](Self::link_pair) with each user on a port of its own (nodes of one cluster): `(port, username)`.
    pub async fn link_pair_on(first: (u16, &str), second: (u16, &str)) -> (RawClient, RawClient) {
        let mut one = RawClient::link_and_settle(first.0, first.1).await;
        let two = RawClient::link_and_settle(second.0, second.1).await;
        one.expect_all(&[joined(second.1), linked(second.1)]).await;
        (one, two)
    }

    /// A takeover under `LinkPolicy::Replace`, checked frame by frame: with bob and alice linked on `port` (as
    /// [`link_pair`](Self::link_pair) links them), alice links again on a new connection. Returns bob and alice's new
    /// connection, with nothing left to read (dropping them closes them).
    pub async fn take_over_alice(port: u16) -> (RawClient, RawClient) {
        let (mut bob, mut old) = RawClient::link_pair(port, "bob", "alice").await;
        let mut new = RawClient::link_as(port, "alice").await;
        // The old connection hears of its unlink, then is closed.
        old.expect(unlinked("alice")).await;
        old.expect_closed().await;
        // Everyone else sees one unlink and one link.
        bob.expect_all(&[unlinked("alice"), linked("alice")]).await;
        // The new connection gets the snapshot, as any newcomer.
        new.expect_all(&snapshot(&["bob", "alice"])).await;
        (bob, new)
    }

    /// Sends a link request on this connection and waits for accepted or rejected.
    pub async fn link(&mut self, username: &str, auth: Option<&str>) -> Result<(), String> {
        let mut request = link_request(username);
        if let Some(auth) = auth {
            request["payload"]["auth"] = json!(auth);
        }
        self.send(request).await;
        match self.try_recv().await {
            Some(message) if message == accepted() => {
                self.username = Some(username.to_owned());
                Ok(())
            }
            Some(message) if message["type"] == "krmx/rejected" => {
                Err(message["payload"]["reason"].as_str().unwrap_or_default().to_owned())
            }
            Some(other) => panic!("unexpected reply to a link request: {other}"),
            None => Err("connection closed".to_owned()),
        }
    }

    /// Sends `message` as one text frame.
    pub async fn send(&mut self, message: Value) {
        self.send_raw(&message.to_string()).await;
    }

    /// Sends `text` as one text frame, whatever it is.
    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(WsMessage::text(text.to_owned())).await.unwrap();
    }

    /// Sends `data` as one binary frame.
    pub async fn send_binary(&mut self, data: &[u8]) {
        self.ws.send(WsMessage::binary(data.to_vec())).await.unwrap();
    }

    /// Writes one WebSocket frame built by hand, straight to the socket: with any payload (invalid UTF-8 in a text
    /// frame) and masked or not (a client must mask).
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8], masked: bool) {
        let mut frame = vec![0x80 | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            len if len < 126 => frame.push(mask_bit | len as u8),
            len if len <= usize::from(u16::MAX) => {
                frame.push(mask_bit | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(mask_bit | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            let key = [0x37, 0xfa, 0x21, 0x3d];
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            frame.extend_from_slice(payload);
        }
        self.write_bytes(&frame).await;
    }

    /// Writes `bytes` straight to the socket, past the WebSocket layer: bytes that are no frame at all.
    pub async fn write_bytes(&mut self, bytes: &[u8]) {
        // Every send above flushes, so nothing of the WebSocket layer's is waiting to be written before these bytes.
        self.ws.get_mut().write_all(bytes).await.unwrap();
    }

    /// Asserts that no message arrives until `deadline`.
    pub async fn expect_silence_until(&mut self, deadline: std::time::Instant) {
        let deadline = tokio::time::Instant::from_std(deadline);
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => continue,
                Ok(other) => panic!("{:?}: expected no message, got {other:?}", self.username),
            }
        }
    }

    /// Reads until the server's close frame, skipping the frames before it, and answers it as a browser does. Returns
    /// its code and reason, or `None` for a close frame without a code. Panics when the connection ends without a
    /// close frame, or after [`TIMEOUT`].
    pub async fn expect_close_frame(&mut self) -> Option<(u16, String)> {
        loop {
            let next = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for a close frame ({:?})", self.username));
            match next {
                Some(Ok(WsMessage::Close(frame))) => {
                    let _ = self.ws.flush().await;
                    return frame.map(|frame| (u16::from(frame.code), frame.reason.as_str().to_owned()));
                }
                Some(Ok(_)) => continue,
                other => panic!(
                    "{:?}: the connection ended without a close frame: {other:?}",
                    self.username
                ),
            }
        }
    }

    /// Reads up to the close frame (see [`expect_close_frame`](Self::expect_close_frame)) and asserts that it carries
    /// `code` and `reason`.
    pub async fn expect_close_with(&mut self, code: u16, reason: &str) {
        let frame = self.expect_close_frame().await;
        assert_eq!(
            frame,
            Some((code, reason.to_owned())),
            "{:?}'s close frame",
            self.username
        );
    }

    /// Closes the connection from the client side and waits until the server has seen it.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(TIMEOUT, self.ws.next()).await {}
    }

    /// The WebSocket itself. Pings are answered only while it is read.
    pub fn into_inner(self) -> WsStream {
        self.ws
    }
}
