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

/// How many queued frames are written before one flush.
const BATCH: usize = 64;

/// The core's handle on a connection: a bounded frame queue and a close switch.
struct ChannelSink {
    frames: mpsc::Sender<Frame>,
    close: watch::Sender<bool>,
}

impl ConnectionSink for ChannelSink {
    fn push(&self, frame: Frame) -> Result<(), PushError> {
        if *self.close.borrow() {
            return Err(PushError::Closed);
        }
        self.frames.try_send(frame).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => PushError::Full,
            mpsc::error::TrySendError::Closed(_) => PushError::Closed,
        })
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

/// Writes `first` and whatever else is queued (up to a batch), then flushes once.
async fn write_batch(
    socket: &mut WebSocket,
    first: Frame,
    frames: &mut mpsc::Receiver<Frame>,
) -> Result<(), axum::Error> {
    socket.feed(to_message(first)).await?;
    for _ in 1..BATCH {
        match frames.try_recv() {
            Ok(frame) => socket.feed(to_message(frame)).await?,
            Err(_) => break,
        }
    }
    socket.flush().await
}

/// Writes what is still queued, then a close frame.
async fn drain_and_close(socket: &mut WebSocket, frames: &mut mpsc::Receiver<Frame>) -> Result<(), axum::Error> {
    while let Ok(frame) = frames.try_recv() {
        socket.feed(to_message(frame)).await?;
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
    let (frames_tx, mut frames) = mpsc::channel(config.outbound_queue());
    let (close_tx, mut close) = watch::channel(false);
    let sink = ChannelSink {
        frames: frames_tx,
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
                let _ = tokio::time::timeout(CLOSE_GRACE, drain_and_close(&mut socket, &mut frames)).await;
                break;
            }
            frame = frames.recv() => {
                let Some(frame) = frame else { break };
                // A write that blocks (the client stopped reading) gives way to a close request.
                let written = tokio::select! {
                    written = write_batch(&mut socket, frame, &mut frames) => written,
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
