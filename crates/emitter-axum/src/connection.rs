//! One task per connection: read frames into the core, write queued frames out, ping.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use emitter_core::protocol::Frame;
use emitter_core::transport::Host;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::burst::BurstWriter;
use crate::queue::{Outgoing, Queue, QueueSink};

/// A served connection: the upgraded socket, its writes gathered into bursts.
pub(crate) type Socket = WebSocketStream<BurstWriter<TokioIo<hyper::upgrade::Upgraded>>>;

/// How long a closing connection may take to write what is queued before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Entries the writer's buffer may keep room for between bursts.
const IDLE_ENTRIES: usize = 8;

fn to_message(frame: Frame) -> Message {
    // Frames hold serde_json output, which is UTF-8; the check cannot fail.
    Message::Text(Utf8Bytes::try_from(frame.bytes().clone()).unwrap_or_default())
}

/// Writes every taken entry, then flushes once.
async fn write_all(
    socket: &mut Socket,
    taken: &mut VecDeque<Outgoing>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    while let Some(entry) = taken.pop_front() {
        match entry {
            Outgoing::One(frame) => socket.feed(to_message(frame)).await?,
            Outgoing::Snapshot(snapshot) => {
                for frame in snapshot.frames() {
                    socket.feed(to_message(frame.clone())).await?;
                }
            }
        }
    }
    socket.flush().await
}

/// Serves one upgraded WebSocket until either side closes it, then reports the close to the core.
pub(crate) async fn run(host: Host, mut socket: Socket, query_ok: bool) {
    if !query_ok {
        tracing::debug!("incoming connection closed: its query parameters are not the expected ones");
        let _ = socket.send(Message::Close(None)).await;
        return;
    }
    let config = host.server().config();
    let queue = Arc::new(Queue::new(config.outbound_queue()));
    let ping_interval = config.ping_interval();
    let Some(id) = host.connect(QueueSink(queue.clone())) else {
        let _ = socket.send(Message::Close(None)).await;
        return;
    };

    // A far-future ping when pinging is off keeps one select below.
    let period = ping_interval.unwrap_or(Duration::from_secs(60 * 60 * 24 * 365));
    let mut ping = interval_at(Instant::now() + period, period);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut awaiting_pong = false;
    // Reused for every burst: the writer takes the whole queue at once.
    let mut taken = VecDeque::new();

    loop {
        // Not biased: a connection that is sent to all the time still gets its reads and pings.
        tokio::select! {
            () = queue.changed() => {
                if queue.take(&mut taken) {
                    let grace = async {
                        write_all(&mut socket, &mut taken).await?;
                        socket.send(Message::Close(None)).await
                    };
                    let _ = tokio::time::timeout(CLOSE_GRACE, grace).await;
                    break;
                }
                // A write that blocks (the client stopped reading) gives way to a close request; the loop then
                // closes with the grace above.
                let written = tokio::select! {
                    written = write_all(&mut socket, &mut taken) => written,
                    () = queue.closed() => Ok(()),
                };
                taken.clear();
                // A burst (a link storm, say) grows the buffer; an idle connection should not keep that.
                if taken.capacity() > IDLE_ENTRIES {
                    taken = VecDeque::new();
                }
                if let Err(error) = written {
                    tracing::debug!(%id, %error, "write failed");
                    break;
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
