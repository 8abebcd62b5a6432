//! [`Receive`]: reading what a test client received, the same way for [`RawClient`](crate::RawClient) and
//! [`TestClient`](crate::TestClient).

use serde_json::Value;

/// Reads the frames a client received, in order, each wait bounded by [`TIMEOUT`](crate::TIMEOUT).
// The futures are Send for each client type, which is all the tests need: they never call these generically.
#[allow(async_fn_in_trait)]
pub trait Receive {
    /// The next frame, or `None` when the connection closed. Panics after [`TIMEOUT`](crate::TIMEOUT).
    async fn try_recv(&mut self) -> Option<Value>;

    /// Who the client is, for messages.
    fn name(&self) -> String;

    /// The next frame. Panics when the connection closed, or after [`TIMEOUT`](crate::TIMEOUT).
    async fn recv(&mut self) -> Value {
        match self.try_recv().await {
            Some(frame) => frame,
            None => panic!("connection closed while waiting for a message ({})", self.name()),
        }
    }

    /// Asserts the next frame is `expected`.
    async fn expect(&mut self, expected: Value) {
        let got = self.recv().await;
        assert_eq!(got, expected, "client {}", self.name());
    }

    /// Asserts the next frames are exactly `expected`, in order.
    async fn expect_all(&mut self, expected: &[Value]) {
        for frame in expected {
            self.expect(frame.clone()).await;
        }
    }

    /// Reads until `expected` arrives; returns what came before it.
    async fn recv_until(&mut self, expected: &Value) -> Vec<Value> {
        let mut before = Vec::new();
        loop {
            let got = self.recv().await;
            if &got == expected {
                return before;
            }
            before.push(got);
        }
    }

    /// Reads until a frame of type `kind` arrives, and returns it whole.
    async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// Waits until the connection is closed (frames before the close are skipped).
    async fn expect_closed(&mut self) {
        while self.try_recv().await.is_some() {}
    }
}
