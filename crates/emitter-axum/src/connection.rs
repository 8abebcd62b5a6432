//! One task per connection: read frames into the core, write queued frames out, ping.

use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use emitter_core::protocol::Frame;
use emitter_core::transport::{ConnectionSink, Host, PushError};
use futures_util::SinkExt;
use tokio::sync::{mpsc, watch};
use tokio::time::{interval_at, Instant, MissedTickBehavior};

/// How long a closing connection may take to write what is queued before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How many queue entries are written before one flush.
const BATCH: usize = 64;

/// One entry of a connection's queue: a frame, or a batch of frames that counts as one entry (a snapshot).
enum Outgoing {
    One(Frame),
    Batch(Vec<Frame>),
}

/// The core's handle on a connection: a bounded queue and a close switch.
struct ChannelSink {
    queue: mpsc::Sender<Outgoing>,
    close: watch::Sender<bool>,
}

impl ChannelSink {
    fn enqueue(&self, entry: Outgoing) -> Result<(), PushError> {
        if *self.close.borrow() {
            return Err(PushError::Closed);
        }
        self.queue.try_send(entry).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => PushError::Full,
            mpsc::error::TrySendError::Closed(_) => PushError::Closed,
        })
    }
}

impl ConnectionSink for ChannelSink {
    fn push(&self, frame: Frame) -> Result<(), PushError> {
        self.enqueue(Outgoing::One(frame))
    }

    fn push_batch(&self, frames: Vec<Frame>) -> Result<(), PushError> {
        self.enqueue(Outgoing::Batch(frames))
    }

    fn close(&self) {
        self.close.send_replace(true);
    }
}

/// Resolves once the core asked for the connection to close.
async fn closed(close: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which happens only after the connection was removed: closing is right.
    let _ = close.wait_for(|closing| *closing).await;
}

fn to_message(frame: Frame) -> Message {
    // Frames hold serde_json output, which is UTF-8; the check cannot fail.
    Message::Text(Utf8Bytes::try_from(frame.bytes().clone()).unwrap_or_default())
}

/// Hands one queue entry's frames to the socket without flushing.
async fn feed(socket: &mut WebSocket, entry: Outgoing) -> Result<(), axum::Error> {
    match entry {
        Outgoing::One(frame) => socket.feed(to_message(frame)).await,
        Outgoing::Batch(frames) => {
            for frame in frames {
                socket.feed(to_message(frame)).await?;
            }
            Ok(())
        }
    }
}

/// Writes `first` and whatever else is queued (up to a batch of entries), then flushes once.
async fn write_batch(
    socket: &mut WebSocket,
    first: Outgoing,
    queue: &mut mpsc::Receiver<Outgoing>,
) -> Result<(), axum::Error> {
    feed(socket, first).await?;
    for _ in 1..BATCH {
        match queue.try_recv() {
            Ok(entry) => feed(socket, entry).await?,
            Err(_) => break,
        }
    }
    socket.flush().await
}

/// Writes what is still queued, then a close frame.
async fn drain_and_close(socket: &mut WebSocket, queue: &mut mpsc::Receiver<Outgoing>) -> Result<(), axum::Error> {
    while let Ok(entry) = queue.try_recv() {
        feed(socket, entry).await?;
    }
    socket.send(Message::Close(None)).await
}

/// Serves one upgraded WebSocket until either side closes it, then reports the close to the core.
pub(crate) async fn run(host: Host, mut socket: WebSocket, query_ok: bool) {
    if !query_ok {
        tracing::debug!("incoming connection closed: its query parameters are not the expected ones");
        let _ = socket.send(Message::Close(None)).await;
        return;
    }
    let config = host.server().config().clone();
    let (queue_tx, mut queue) = mpsc::channel(config.outbound_queue());
    let (close_tx, mut close) = watch::channel(false);
    let sink = ChannelSink {
        queue: queue_tx,
        close: close_tx,
    };
    let Some(id) = host.connect(sink) else {
        let _ = socket.send(Message::Close(None)).await;
        return;
    };
    // The inner select below needs its own handle on the close switch while the outer one holds the first.
    let mut close_while_writing = close.clone();

    // A far-future ping when pinging is off keeps one select below.
    let period = config
        .ping_interval()
        .unwrap_or(Duration::from_secs(60 * 60 * 24 * 365));
    let mut ping = interval_at(Instant::now() + period, period);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let pinging = config.ping_interval().is_some();
    let mut awaiting_pong = false;

    loop {
        tokio::select! {
            biased;
            () = closed(&mut close) => {
                let _ = tokio::time::timeout(CLOSE_GRACE, drain_and_close(&mut socket, &mut queue)).await;
                break;
            }
            entry = queue.recv() => {
                let Some(entry) = entry else { break };
                // A write that blocks (the client stopped reading) gives way to a close request.
                let written = tokio::select! {
                    written = write_batch(&mut socket, entry, &mut queue) => written,
                    () = closed(&mut close_while_writing) => Ok(()),
                };
                if let Err(error) = written {
                    tracing::debug!(%id, %error, "write failed");
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => host.receive(id, text.as_bytes()),
                Some(Ok(Message::Binary(data))) => host.receive(id, &data),
                Some(Ok(Message::Pong(_))) => awaiting_pong = false,
                Some(Ok(Message::Ping(_))) => {} // answered by the WebSocket layer
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(error)) => {
                    // Invalid UTF-8, an oversized message, a protocol violation: this connection ends, nothing else.
                    tracing::debug!(%id, %error, "connection error");
                    break;
                }
            },
            _ = ping.tick(), if pinging => {
                if awaiting_pong {
                    tracing::info!(%id, "no pong since the previous ping: closing the unresponsive connection");
                    break;
                }
                awaiting_pong = true;
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
        }
    }
    host.disconnect(id);
}
