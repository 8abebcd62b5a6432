//! One task per connection: it opens the WebSocket, writes the frames the client queues, and hands every frame it
//! reads to the client. Pings are answered by tungstenite itself.
//!
//! The task knows the client only as a [`Handler`], and only weakly: it keeps no client alive, and it does not depend
//! on how the client applies what it reports.

use crate::redact::url_for_logs;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::{uri_mode, IntoClientRequest};
use tokio_tungstenite::tungstenite::stream::Mode;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::tls::Tls;

/// What the connection task reports, each time with its socket's `generation`: a client ignores the reports of a
/// socket that is no longer its current one.
pub(crate) trait Handler: Send + Sync + 'static {
    /// The socket is open.
    fn opened(this: &Arc<Self>, generation: u64);
    /// One frame from the server, text or binary.
    fn received(this: &Arc<Self>, generation: u64, bytes: &[u8]);
    /// The socket closed, or never opened (`cause`).
    fn closed(this: &Arc<Self>, generation: u64, cause: Option<Arc<dyn std::error::Error + Send + Sync>>);
}

/// What the client asks of its connection task.
pub(crate) enum Command {
    /// Write this JSON text as one frame, after the ones before it.
    Frame(String),
    /// Close the WebSocket (or give up opening it).
    Close,
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// Opens a WebSocket to `url` and serves it until it closes, or until the client is gone.
pub(crate) async fn run<H: Handler>(
    client: Weak<H>,
    generation: u64,
    url: String,
    mut commands: mpsc::UnboundedReceiver<Command>,
    close_timeout: Duration,
    tls: Tls,
) {
    let opened = tokio::select! {
        opened = open(&url, &tls) => opened,
        () = closed_while_opening(&mut commands) => {
            tracing::debug!(url = url_for_logs(&url), "connect cancelled");
            return finish(&client, generation, None);
        }
    };
    let mut socket = match opened {
        Ok(socket) => socket,
        Err(error) => {
            tracing::debug!(url = url_for_logs(&url), %error, "connect failed");
            return finish(&client, generation, Some(error));
        }
    };
    match client.upgrade() {
        Some(handler) => H::opened(&handler, generation),
        None => return close(&mut socket, close_timeout).await,
    }
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Frame(text)) => {
                    if let Err(error) = socket.send(WsMessage::text(text)).await {
                        tracing::debug!(%error, "write failed; the connection is closing");
                        break;
                    }
                }
                // `None`: every handle of the client is gone, so nobody is listening any more.
                Some(Command::Close) | None => {
                    close(&mut socket, close_timeout).await;
                    break;
                }
            },
            frame = socket.next() => {
                let bytes = match &frame {
                    Some(Ok(WsMessage::Text(text))) => text.as_bytes(),
                    Some(Ok(WsMessage::Binary(bytes))) => bytes.as_ref(),
                    // The server closes: tungstenite echoes the close frame; the server then ends the TCP connection,
                    // and a server that does not is given the close timeout.
                    Some(Ok(WsMessage::Close(_))) => {
                        drain(&mut socket, close_timeout).await;
                        break;
                    }
                    // Pings are answered by tungstenite.
                    Some(Ok(_)) => continue,
                    Some(Err(error)) => {
                        tracing::debug!(%error, "read failed; the connection is closed");
                        break;
                    }
                    None => break,
                };
                match client.upgrade() {
                    Some(handler) => H::received(&handler, generation, bytes),
                    None => {
                        close(&mut socket, close_timeout).await;
                        break;
                    }
                }
            }
        }
    }
    finish(&client, generation, None);
}

/// Opens the WebSocket: over TLS, with the client's rustls configuration, for `wss://`; in the clear for `ws://`.
async fn open(url: &str, tls: &Tls) -> Result<Socket, Cause> {
    let request = url.into_client_request().map_err(|error| Arc::new(error) as Cause)?;
    let connector = match uri_mode(request.uri()) {
        Ok(Mode::Tls) => Connector::Rustls(tls.client_config().await.map_err(|error| Arc::new(error) as Cause)?),
        // `ws://`, and URLs tungstenite refuses below, with its own error.
        Ok(Mode::Plain) | Err(_) => Connector::Plain,
    };
    match tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector)).await {
        Ok((socket, _response)) => Ok(socket),
        Err(error) => Err(Arc::new(error)),
    }
}

/// Waits until the client asks to close while the socket is still opening. Frames cannot be queued then.
async fn closed_while_opening(commands: &mut mpsc::UnboundedReceiver<Command>) {
    while let Some(command) = commands.recv().await {
        if let Command::Close = command {
            return;
        }
    }
}

/// Sends a close frame and reads until the server answers it, for at most `timeout`.
async fn close(socket: &mut Socket, timeout: Duration) {
    if let Err(error) = socket.close(None).await {
        tracing::debug!(%error, "close frame not sent");
        return;
    }
    drain(socket, timeout).await;
}

/// Reads (and drops) frames until the server ends the connection, for at most `timeout`.
async fn drain(socket: &mut Socket, timeout: Duration) {
    let drained = tokio::time::timeout(timeout, async { while let Some(Ok(_)) = socket.next().await {} }).await;
    if drained.is_err() {
        tracing::debug!("the server did not end the connection in time; dropping the socket");
    }
}

fn finish<H: Handler>(client: &Weak<H>, generation: u64, cause: Option<Arc<dyn std::error::Error + Send + Sync>>) {
    if let Some(handler) = client.upgrade() {
        H::closed(&handler, generation, cause);
    }
}
