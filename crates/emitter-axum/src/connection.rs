//! One task per connection: read frames into the core, write what its outbox has, ping.

use std::time::Duration;

use emitter_core::protocol::Frame;
use emitter_core::transport::{Host, Outbox};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::burst::BurstWriter;

/// A served connection: the upgraded socket, its writes gathered into bursts.
pub(crate) type Socket = WebSocketStream<BurstWriter<TokioIo<hyper::upgrade::Upgraded>>>;

/// How long a closing connection may take to write what is queued before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Frames taken from the outbox at a time.
const BATCH: usize = 256;

/// Frames written before a flush, at most: a long backlog (a newcomer's snapshot of thousands) goes out in pieces,
/// so that its reads and pings get their turn.
const BURST: usize = 4 * BATCH;

fn to_message(frame: Frame) -> Message {
    // Frames hold serde_json output, which is UTF-8; the check cannot fail.
    Message::Text(Utf8Bytes::try_from(frame.bytes().clone()).unwrap_or_default())
}

/// Writes what the outbox has (up to a burst), then flushes once. Returns whether the connection is closing.
async fn write_burst(socket: &mut Socket, outbox: &Outbox, host: &Host) -> Result<bool, tungstenite::Error> {
    let mut batch = Vec::with_capacity(BATCH);
    let (mut written, mut bytes) = (0, 0);
    let closing = loop {
        let closing = outbox.take(&mut batch, BATCH);
        let taken = batch.len();
        for frame in batch.drain(..) {
            bytes += frame.bytes().len();
            socket.feed(to_message(frame)).await?;
        }
        written += taken;
        if closing || taken < BATCH || written >= BURST {
            break closing;
        }
    };
    socket.flush().await?;
    if written > 0 {
        // What it found waiting is what it took: `take` drains everything ready, up to a burst.
        host.record_queue_depth(written);
        host.record_written(written, bytes);
    }
    Ok(closing)
}

/// Writes one more burst of a closing connection's outbox; returns whether it was empty.
async fn outbox_empty(socket: &mut Socket, outbox: &Outbox, host: &Host) -> Result<bool, tungstenite::Error> {
    let mut batch = Vec::new();
    outbox.take(&mut batch, BURST);
    let (frames, bytes) = (batch.len(), batch.iter().map(|frame| frame.bytes().len()).sum());
    for frame in batch {
        socket.feed(to_message(frame)).await?;
    }
    socket.flush().await?;
    host.record_written(frames, bytes);
    Ok(frames == 0)
}

/// Serves one upgraded WebSocket until either side closes it, then reports the close to the core.
pub(crate) async fn run(host: Host, mut socket: Socket, query_ok: bool) {
    if !query_ok {
        tracing::debug!("incoming connection closed: its query parameters are not the expected ones");
        let _ = socket.send(Message::Close(None)).await;
        return;
    }
    let ping_interval = host.server().config().ping_interval();
    let Some((id, outbox)) = host.connect() else {
        let _ = socket.send(Message::Close(None)).await;
        return;
    };

    // A far-future ping when pinging is off keeps one select below.
    let period = ping_interval.unwrap_or(Duration::from_secs(60 * 60 * 24 * 365));
    let mut ping = interval_at(Instant::now() + period, period);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut awaiting_pong = false;

    loop {
        // Not biased: a connection that is sent to all the time still gets its reads and pings.
        tokio::select! {
            () = outbox.ready() => {
                // A write that blocks (the client stopped reading) gives way to a close request.
                let written = tokio::select! {
                    written = write_burst(&mut socket, &outbox, &host) => written,
                    () = outbox.closed() => Ok(true),
                };
                match written {
                    Ok(false) => {}
                    Ok(true) => {
                        // What was queued before the close goes out, briefly, then the close frame.
                        let grace = async {
                            while !outbox_empty(&mut socket, &outbox, &host).await? {}
                            socket.send(Message::Close(None)).await
                        };
                        let _ = tokio::time::timeout(CLOSE_GRACE, grace).await;
                        break;
                    }
                    Err(error) => {
                        tracing::debug!(%id, %error, "write failed");
                        break;
                    }
                }
            }
            incoming = socket.next() => match incoming {
                Some(Ok(Message::Text(text))) => host.receive(id, text.as_bytes()),
                Some(Ok(Message::Binary(data))) => host.receive(id, &data),
                Some(Ok(Message::Pong(_))) => awaiting_pong = false,
                Some(Ok(Message::Ping(_) | Message::Frame(_))) => {} // pings are answered by the WebSocket layer
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(error)) => {
                    // Invalid UTF-8, an oversized message, a protocol violation: this connection ends, nothing else.
                    tracing::debug!(%id, %error, "connection error");
                    if let tungstenite::Error::Capacity(CapacityError::MessageTooLong { .. }) = error {
                        host.record_oversize_close();
                    }
                    break;
                }
            },
            _ = ping.tick(), if ping_interval.is_some() => {
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
