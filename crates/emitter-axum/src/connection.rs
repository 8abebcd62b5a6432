//! One task per connection: read frames into the core, write what its outbox has, ping; then close it as RFC 6455
//! says, with a code that says why, and log why once.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use emitter_core::transport::{CloseReason, ConnectionId, Host, Outbox, TransportClose};
use emitter_core::Handshake;
use futures_util::{FutureExt, SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::burst::BurstWriter;

/// A served connection: the upgraded socket, its writes gathered into bursts.
pub(crate) type Socket = WebSocketStream<BurstWriter<TokioIo<hyper::upgrade::Upgraded>>>;

/// Frames written before a flush, at most: a long backlog (a newcomer's snapshot of thousands) goes out in pieces,
/// so that its reads and pings get their turn.
const BURST: usize = 1024;

/// An unmasked, final text frame's header for a payload of `len` bytes, and how many of its bytes are used: the
/// bytes tungstenite writes for `Message::Text` (see the test that compares them).
fn text_header(len: usize) -> ([u8; 10], usize) {
    let mut header = [0; 10];
    // FIN and the text opcode.
    header[0] = 0x81;
    if len < 126 {
        header[1] = len as u8;
        (header, 2)
    } else if let Ok(len) = u16::try_from(len) {
        header[1] = 126;
        header[2..4].copy_from_slice(&len.to_be_bytes());
        (header, 4)
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (header, 10)
    }
}

/// Appends a server's text frame with this payload to `into`.
fn push_text(into: &mut Vec<u8>, payload: &[u8]) {
    match u8::try_from(payload.len()) {
        // The usual frame: a two-byte header, copied without a call.
        Ok(len) if len < 126 => into.extend_from_slice(&[0x81, len]),
        _ => {
            let (header, used) = text_header(payload.len());
            into.extend_from_slice(&header[..used]);
        }
    }
    into.extend_from_slice(payload);
}

/// Why a write did not happen.
enum WriteError {
    /// The socket failed.
    Socket(tungstenite::Error),
    /// The client read nothing for the write deadline: a slow consumer.
    Stalled,
}

impl From<tungstenite::Error> for WriteError {
    fn from(error: tungstenite::Error) -> Self {
        WriteError::Socket(error)
    }
}

/// One socket write (a frame, a ping, a flush) within `deadline`. A write that finishes at once (the usual case)
/// costs no timer, and no room for one: the timer is on the heap only while a write waits, rather than in every
/// connection's task for the connection's life (as are the write itself, once, where an `async fn` would keep it
/// twice).
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` would keep the write twice, for the connection's life"
)]
fn within<T, W>(deadline: Duration, mut write: W) -> impl Future<Output = Result<T, WriteError>>
where
    W: Future<Output = Result<T, tungstenite::Error>> + Unpin,
{
    async move {
        if let Some(done) = (&mut write).now_or_never() {
            return Ok(done?);
        }
        match Box::pin(tokio::time::timeout(deadline, &mut write)).await {
            Ok(done) => Ok(done?),
            Err(_) => Err(WriteError::Stalled),
        }
    }
}

/// What a connection's writer counts: frames and bytes written since they were last reported to the server's
/// metrics, and how long one write may take.
struct Written {
    frames: usize,
    bytes: usize,
    deadline: Duration,
}

impl Written {
    fn new(deadline: Duration) -> Written {
        Written {
            frames: 0,
            bytes: 0,
            deadline,
        }
    }

    /// Counts what was written since the last call in the server's metrics: two atomic adds, once per burst.
    fn report(&mut self, host: &Host) {
        let frames = std::mem::take(&mut self.frames);
        let bytes = std::mem::take(&mut self.bytes);
        if frames > 0 {
            host.record_written(frames, bytes);
        }
    }
}

/// Formats what the outbox has ready, up to `max` frames, straight into the socket's gathered bytes (each frame
/// copied once, from the bytes its recipients share, without a reference-count change or a trip through
/// tungstenite's buffer), writing them to the socket each time a chunk is full. Returns how many frames it took and
/// whether the connection is closing. A write that is cancelled (it gave way to a close) loses nothing: what was
/// taken waits, whole, in the socket's gathered bytes, ahead of anything written after it.
async fn gather(
    socket: &mut Socket,
    outbox: &Outbox,
    max: usize,
    written: &mut Written,
) -> Result<(usize, bool), WriteError> {
    let mut taken = 0;
    loop {
        let writer = socket.get_mut();
        let mut full = false;
        let closing = outbox.take_each(|frame| {
            let bytes = frame.bytes();
            push_text(writer.gathered(), bytes);
            taken += 1;
            written.frames += 1;
            written.bytes += bytes.len();
            full = writer.full();
            !full && taken < max
        });
        if full {
            let drain = std::future::poll_fn(|cx| socket.get_mut().poll_drain(cx).map_err(tungstenite::Error::Io));
            within(written.deadline, drain).await?;
        }
        if closing || !full || taken >= max {
            return Ok((taken, closing));
        }
    }
}

/// Writes what the outbox has (up to a burst), then flushes once. Returns whether the connection is closing.
async fn write_burst(
    socket: &mut Socket,
    outbox: &Outbox,
    written: &mut Written,
    host: &Host,
) -> Result<bool, WriteError> {
    let (taken, closing) = gather(socket, outbox, BURST, written).await?;
    // Also writes what tungstenite queued (a pong), after the frames: never inside one.
    within(written.deadline, socket.flush()).await?;
    if taken > 0 {
        // What it found waiting is what it took: `take_each` hands over everything ready, up to a burst.
        host.record_queue_depth(taken);
    }
    written.report(host);
    Ok(closing)
}

/// Writes one more burst of a closing connection's outbox; returns whether nothing was left.
async fn outbox_empty(socket: &mut Socket, outbox: &Outbox, written: &mut Written) -> Result<bool, tungstenite::Error> {
    let write = async {
        let (taken, _) = gather(socket, outbox, BURST, written).await?;
        within(written.deadline, socket.flush()).await?;
        Ok(taken == 0)
    };
    // Within the close drain deadline already, which is what cuts a close that stalls.
    write.await.map_err(|error| match error {
        WriteError::Socket(error) => error,
        WriteError::Stalled => tungstenite::Error::Io(std::io::ErrorKind::TimedOut.into()),
    })
}

/// Why a connection ended: the one line logged for it, and the close frame it got.
#[derive(Debug)]
enum Ending {
    /// The core closed it; its reason gives the code.
    Core(CloseReason),
    /// The client sent a close frame; the WebSocket layer answers with the same code.
    Client(Option<CloseFrame>),
    /// A message over the size limit: 1009.
    TooBig,
    /// A text message that is not UTF-8: 1007.
    InvalidUtf8,
    /// A frame that breaks the WebSocket protocol: 1002.
    Protocol(ProtocolError),
    /// No pong came between two pings: 1008.
    NoPong,
    /// The connection URL's query parameters are not the expected ones: 1008.
    QueryParams,
    /// The core refused the connection after the upgrade (the server closed, or a limit was reached meanwhile): 1013.
    Refused(&'static str),
    /// The TCP connection ended without a close frame.
    Gone,
    /// Reading or writing failed.
    Network(tungstenite::Error),
}

impl Ending {
    fn from_read_error(error: tungstenite::Error) -> Ending {
        match error {
            tungstenite::Error::Capacity(_) => Ending::TooBig,
            tungstenite::Error::Utf8(_) => Ending::InvalidUtf8,
            tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Ending::Gone,
            tungstenite::Error::Protocol(error) => Ending::Protocol(error),
            error => Ending::Network(error),
        }
    }

    /// The code and reason this server sends in its close frame; `None` when it sends none of its own (the client's
    /// close is answered by the WebSocket layer; a broken connection gets nothing).
    fn close_frame(&self) -> Option<(u16, &'static str)> {
        match self {
            Ending::Core(reason) => Some((reason.code(), reason.text())),
            Ending::TooBig => Some((1009, "message too big")),
            Ending::InvalidUtf8 => Some((1007, "invalid UTF-8")),
            Ending::Protocol(_) => Some((1002, "protocol error")),
            Ending::NoPong => Some((1008, "no pong")),
            Ending::QueryParams => Some((1008, "unexpected query parameters")),
            Ending::Refused(why) => Some((1013, why)),
            Ending::Client(_) | Ending::Gone | Ending::Network(_) => None,
        }
    }

    /// What the server's metrics count this close as, when the transport closed it on its own account.
    fn transport_cause(&self) -> Option<TransportClose> {
        match self {
            Ending::TooBig => Some(TransportClose::Oversize),
            Ending::InvalidUtf8 => Some(TransportClose::InvalidUtf8),
            Ending::Protocol(_) => Some(TransportClose::ProtocolError),
            Ending::NoPong => Some(TransportClose::NoPong),
            Ending::QueryParams => Some(TransportClose::QueryParams),
            // The core counts its own closes and its refusals; the client's closes and broken connections are not
            // the server's.
            Ending::Core(_) | Ending::Refused(_) | Ending::Client(_) | Ending::Gone | Ending::Network(_) => None,
        }
    }

    /// The close code the client got: this server's, or its own echoed.
    fn code(&self) -> Option<u16> {
        match self {
            Ending::Client(frame) => frame.as_ref().map(|frame| frame.code.into()),
            _ => self.close_frame().map(|(code, _)| code),
        }
    }
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Core(reason) => reason.fmt(f),
            Ending::Client(Some(frame)) if frame.reason.is_empty() => {
                write!(f, "the client closed it with code {}", u16::from(frame.code))
            }
            Ending::Client(Some(frame)) => write!(
                f,
                "the client closed it with code {} ({:?})",
                u16::from(frame.code),
                frame.reason.as_str()
            ),
            Ending::Client(None) => f.write_str("the client closed it without a code"),
            Ending::TooBig => f.write_str("message too big"),
            Ending::InvalidUtf8 => f.write_str("invalid UTF-8 in a text message"),
            Ending::Protocol(error) => write!(f, "WebSocket protocol error: {error}"),
            Ending::NoPong => f.write_str("no pong to the previous ping"),
            Ending::QueryParams => f.write_str("its query parameters are not the expected ones"),
            Ending::Refused(why) => f.write_str(why),
            Ending::Gone => f.write_str("the client went away without a close frame"),
            Ending::Network(error) => write!(f, "network error: {error}"),
        }
    }
}

/// What a connection's task needs only until its WebSocket is up: boxed, and let go of then, so that the task keeps no
/// room for it for the connection's life.
pub(crate) struct Opening {
    /// Resolves to the upgraded connection once the 101 response went out.
    pub(crate) on_upgrade: OnUpgrade,
    /// The WebSocket layer's settings.
    pub(crate) websocket: WebSocketConfig,
    /// Whether the request's query parameters are the expected ones.
    pub(crate) query_ok: bool,
    /// The request, for the core to keep for the `authenticate` listeners.
    pub(crate) handshake: Handshake,
}

/// The task of one connection: completes the WebSocket upgrade, serves the WebSocket until either side closes it,
/// closes it, then reports the close to the core.
///
/// The task is as large as this future's largest state, plus whatever it holds across every state, for as long as the
/// connection is open, so it is kept small: one `async` block that uses its arguments where they are (an `async fn`,
/// or a block awaiting another one, keeps a second copy of each), what only the opening needs in a box it lets go of,
/// and the close, which runs once, on the heap only while it runs.
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` would keep every argument twice, for the connection's life"
)]
pub(crate) fn run(host: Host, opening: Box<Opening>) -> impl Future<Output = ()> {
    async move {
        let (mut socket, query_ok, handshake) = {
            let mut opening = opening;
            let upgraded = match (&mut opening.on_upgrade).await {
                Ok(upgraded) => upgraded,
                Err(error) => {
                    tracing::debug!(%error, "the WebSocket upgrade failed");
                    return;
                }
            };
            let io = BurstWriter::new(TokioIo::new(upgraded));
            let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(opening.websocket)).await;
            (socket, opening.query_ok, opening.handshake)
        };
        let deadline = host.server().config().close_drain_deadline();
        if !query_ok {
            host.record_close(TransportClose::QueryParams);
            Box::pin(close_within(deadline, &mut socket, None, &Ending::QueryParams)).await;
            tracing::info!(code = 1008, "connection refused: {}", Ending::QueryParams);
            return;
        }
        let (id, outbox) = match host.connect_with(handshake) {
            Ok(admitted) => admitted,
            Err(why) => {
                // The core logged the refusal.
                Box::pin(close_within(deadline, &mut socket, None, &Ending::Refused(why))).await;
                return;
            }
        };
        let mut written = Written::new(host.server().config().write_deadline());
        let ending = serve(&host, id, &outbox, &mut socket, &mut written).await;
        if let Some(cause) = ending.transport_cause() {
            host.record_close(cause);
        }
        let queued = matches!(ending, Ending::Core(_)).then_some((&outbox, &mut written));
        let cut = Box::pin(close_within(deadline, &mut socket, queued, &ending)).await;
        written.report(&host);
        log_end(id, &ending, cut);
        host.disconnect(id);
    }
}

/// Reads frames into the core, writes what the outbox has, and pings, until the connection ends; says why it did.
async fn serve(host: &Host, id: ConnectionId, outbox: &Outbox, socket: &mut Socket, written: &mut Written) -> Ending {
    let ping_interval = host.server().config().ping_interval();
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
                let burst = tokio::select! {
                    burst = write_burst(socket, outbox, &mut *written, host) => burst,
                    () = outbox.closed() => Ok(true),
                };
                match burst {
                    Ok(false) => {}
                    Ok(true) => {
                        // Closing never ends, so there is a reason by now.
                        return Ending::Core(outbox.close_reason().unwrap_or(CloseReason::ServerClosing));
                    }
                    Err(WriteError::Stalled) => return stalled(host, id, outbox),
                    Err(WriteError::Socket(error)) => return Ending::Network(error),
                }
            }
            incoming = socket.next() => match incoming {
                Some(Ok(Message::Text(text))) => host.receive(id, text.as_bytes()),
                Some(Ok(Message::Binary(data))) => host.receive(id, &data),
                Some(Ok(Message::Pong(_))) => awaiting_pong = false,
                Some(Ok(Message::Ping(_) | Message::Frame(_))) => {} // pings are answered by the WebSocket layer
                Some(Ok(Message::Close(frame))) => return Ending::Client(frame),
                None => return Ending::Gone,
                // Invalid UTF-8, an oversized message, a protocol violation: this connection ends, nothing else.
                Some(Err(error)) => return Ending::from_read_error(error),
            },
            _ = ping.tick(), if ping_interval.is_some() => {
                if awaiting_pong {
                    return Ending::NoPong;
                }
                awaiting_pong = true;
                // Like a frame: within the write deadline, and giving way to a close (the client stopped reading
                // right after a burst, and only the ping is left to write).
                let sent = tokio::select! {
                    sent = within(written.deadline, socket.send(Message::Ping(Default::default()))) => sent,
                    () = outbox.closed() => {
                        return Ending::Core(outbox.close_reason().unwrap_or(CloseReason::ServerClosing));
                    }
                };
                match sent {
                    Ok(()) => {}
                    Err(WriteError::Stalled) => return stalled(host, id, outbox),
                    Err(WriteError::Socket(error)) => return Ending::Network(error),
                }
            }
        }
    }
}

/// A write passed its deadline: the core closes the connection as a slow consumer (unless it was closing already).
fn stalled(host: &Host, id: ConnectionId, outbox: &Outbox) -> Ending {
    host.stalled(id);
    Ending::Core(outbox.close_reason().unwrap_or(CloseReason::SlowConsumer))
}

/// [`close`] within `deadline`; returns whether the deadline cut it short.
async fn close_within(
    deadline: Duration,
    socket: &mut Socket,
    queued: Option<(&Outbox, &mut Written)>,
    ending: &Ending,
) -> bool {
    match tokio::time::timeout(deadline, close(socket, queued, ending)).await {
        Ok(Ok(())) => false,
        Ok(Err(error)) => {
            tracing::debug!(%error, "the close handshake failed");
            false
        }
        Err(_) => true,
    }
}

/// Closes the WebSocket as RFC 6455 asks: what is `queued` (when the core closes it) goes out first; then the close
/// frame (the client's code echoed, or this server's); then the TCP connection ends once the client has nothing more
/// to send, so that what it sent meanwhile does not make the socket reset and lose the close frame on the way.
async fn close(
    socket: &mut Socket,
    queued: Option<(&Outbox, &mut Written)>,
    ending: &Ending,
) -> Result<(), tungstenite::Error> {
    match ending {
        Ending::Gone | Ending::Network(_) => return Ok(()),
        Ending::Client(_) => {
            // The WebSocket layer queued the answer, with the client's code, when it read the close frame. The client
            // sends nothing after its close frame, so the connection can end at once (the server ends it first).
            socket.flush().await?;
            socket.get_mut().shutdown().await?;
            return Ok(());
        }
        _ => {}
    }
    if let Some((outbox, written)) = queued {
        while !outbox_empty(socket, outbox, written).await? {}
    }
    let Some((code, text)) = ending.close_frame() else {
        return Ok(());
    };
    let frame = CloseFrame {
        code: code.into(),
        reason: Utf8Bytes::from_static(text),
    };
    socket.send(Message::Close(Some(frame))).await?;
    match ending {
        Ending::TooBig | Ending::InvalidUtf8 | Ending::Protocol(_) => {
            // The frames after a broken one cannot be read: end the writing side, then read and drop whatever comes
            // (the rest of an oversized message, the client's answer) until the client ends the connection.
            socket.get_mut().shutdown().await?;
            let mut sink = [0; 1024];
            while socket.get_mut().read(&mut sink).await? > 0 {}
        }
        Ending::NoPong => {
            // The client answers nothing: do not wait for it.
            socket.get_mut().shutdown().await?;
        }
        _ => {
            // Read (and drop) what the client sent before its answer; the WebSocket layer ends the stream after it.
            while let Some(Ok(_)) = socket.next().await {}
        }
    }
    Ok(())
}

/// The one line that says why a connection ended.
fn log_end(id: ConnectionId, ending: &Ending, cut: bool) {
    let code = ending.code();
    if cut {
        tracing::info!(connection = %id, code, "connection closed: {ending}; cut at the close drain deadline");
    } else {
        tracing::info!(connection = %id, code, "connection closed: {ending}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as WireFrame;

    /// The bytes tungstenite writes for a server's text message with this payload.
    fn tungstenite_text(payload: &[u8]) -> Vec<u8> {
        let mut wire = Vec::new();
        WireFrame::message(payload.to_vec(), OpCode::Data(Data::Text), true)
            .format(&mut wire)
            .expect("a frame formats into a vector");
        wire
    }

    #[test]
    fn text_frames_are_the_bytes_tungstenite_writes() {
        for len in [0, 1, 125, 126, 127, 255, 256, 65_535, 65_536, 70_000] {
            let payload = vec![b'x'; len];
            let mut ours = b"before".to_vec();
            push_text(&mut ours, &payload);
            let mut expected = b"before".to_vec();
            expected.extend(tungstenite_text(&payload));
            assert_eq!(ours, expected, "a payload of {len} bytes");
        }
    }
}
