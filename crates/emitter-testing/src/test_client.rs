//! [`TestClient`]: emitter-client, with what it received kept in order.

use emitter_client::{Client, ClientEvent, Error};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::frames::{accepted, joined, left, linked, rejected, unlinked};
use crate::{within, Receive, TIMEOUT};

/// What the client received: a frame, as the JSON the server sent, or the end of the connection.
enum Received {
    Frame(Value),
    Closed,
}

/// A well-behaved Krmx client for tests: an [`emitter_client::Client`] whose events are also kept, in order, as the
/// frames the server sent for them (`krmx/accepted`, `krmx/joined` …, and every application message), so that a test
/// can say both "the client saw this" and "this came next".
///
/// The client's own events (`connecting`, `linking`, …) are not frames and are not kept; a closed connection is.
/// Unlike [`RawClient`](crate::RawClient), it sends only what `emitter-client` sends, and sees only what it delivers
/// (an application message reaches it only while it is linked).
pub struct TestClient {
    client: Client,
    received: mpsc::UnboundedReceiver<Received>,
}

impl TestClient {
    /// Connects to `url` (`ws://127.0.0.1:PORT/path`), or returns the client's error.
    pub async fn try_connect(url: &str) -> Result<TestClient, Error> {
        let client = Client::new();
        let (tx, received) = mpsc::unbounded_channel();
        client.on_any(move |event| {
            let received = match *event {
                ClientEvent::Accept => Received::Frame(accepted()),
                ClientEvent::Reject { reason } => Received::Frame(rejected(reason)),
                ClientEvent::Join { username } => Received::Frame(joined(username)),
                ClientEvent::Link { username } => Received::Frame(linked(username)),
                ClientEvent::Unlink { username } => Received::Frame(unlinked(username)),
                ClientEvent::Leave { username } => Received::Frame(left(username)),
                ClientEvent::Message { message } => Received::Frame(json!(message)),
                ClientEvent::Close => Received::Closed,
                _ => return,
            };
            let _ = tx.send(received);
        });
        within("connect", client.connect(url)).await?;
        Ok(TestClient { client, received })
    }

    /// Connects to `url`; panics if it cannot.
    pub async fn connect(url: &str) -> TestClient {
        TestClient::try_connect(url)
            .await
            .unwrap_or_else(|error| panic!("cannot connect to {url}: {error}"))
    }

    /// Links as `username` with an optional `auth`: `Ok` once the server linked it, `Err` with the server's reason.
    /// The answer (`krmx/accepted` or `krmx/rejected`) is read; the next message to read is the first of the
    /// snapshot.
    pub async fn link(&mut self, username: &str, auth: Option<&str>) -> Result<(), String> {
        match within("a link", self.client.link(username, auth)).await {
            Ok(()) => {
                assert_eq!(
                    self.recv().await,
                    accepted(),
                    "{username}: the answer to its link request"
                );
                Ok(())
            }
            Err(Error::Rejected(reason)) => {
                assert_eq!(
                    self.recv().await,
                    rejected(&reason),
                    "{username}: the answer to its link request"
                );
                Err(reason)
            }
            Err(error) => Err(error.to_string()),
        }
    }

    /// Connects to `url` and asks to link as `username`; returns the client and the answer.
    pub async fn attempt(url: &str, username: &str, auth: Option<&str>) -> (TestClient, Result<(), String>) {
        let mut client = TestClient::connect(url).await;
        let outcome = client.link(username, auth).await;
        (client, outcome)
    }

    /// Asserts that a link attempt as `username` with `auth` (see [`attempt`](Self::attempt)) is rejected with `reason`.
    pub async fn expect_rejected(url: &str, username: &str, auth: Option<&str>, reason: &str) {
        let (_client, outcome) = TestClient::attempt(url, username, auth).await;
        assert_eq!(outcome, Err(reason.to_owned()), "{username} with {auth:?}");
    }

    /// Connects to `url`, links as `username` (panics unless it is accepted), and reads the snapshot up to and
    /// including its own `krmx/linked`.
    pub async fn linked(url: &str, username: &str) -> TestClient {
        let (mut client, outcome) = TestClient::attempt(url, username, None).await;
        assert_eq!(outcome, Ok(()), "{username} should link");
        client.recv_until(&linked(username)).await;
        client
    }

    /// The client itself, for anything else it can do.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sends `message`, an object with a string `type`, with [`Client::send_json`]; panics if the client refuses.
    pub fn send(&self, message: Value) {
        self.client
            .send_json(&message)
            .unwrap_or_else(|error| panic!("cannot send {message}: {error}"));
    }
}

/// Reads the frames the client received, in order; see [`Receive`] for the rest.
impl Receive for TestClient {
    async fn try_recv(&mut self) -> Option<Value> {
        let next = tokio::time::timeout(TIMEOUT, self.received.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for a message ({})", self.name()));
        match next {
            Some(Received::Frame(frame)) => Some(frame),
            Some(Received::Closed) | None => None,
        }
    }

    fn name(&self) -> String {
        format!("{:?}", self.client.username())
    }
}
