//! Opt-in reconnects: a client that relinks its user after its connection drops.
//!
//! `cargo run -p emitter-client --example reconnect` starts a server, links a client through a small TCP relay,
//! cuts the relay's connections (as a network failure would), and shows the client linking again by itself.

use std::error::Error;
use std::time::Duration;

use std::sync::Arc;

use emitter_core::Server;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use emitter_client::{Client, Reconnect};

fn reconnecting_client() -> Client {
    let policy = Reconnect::new()
        .initial_delay(Duration::from_millis(100)) // the first retry waits 100 ms
        .max_delay(Duration::from_secs(5)) // then 200 ms, 400 ms, ... up to 5 s
        .max_attempts(50); // and gives up after 50 failed attempts
    let client = Client::builder().reconnect(policy).build();
    client.on_close(|| tracing::warn!("connection closed"));
    client.on_accept(|| tracing::info!("linked (again)"));
    client
}

/// A loopback TCP relay to `target` whose connections can be cut, as a network failure would.
struct Relay {
    port: u16,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Relay {
    async fn start(target: u16) -> Result<Relay, Box<dyn Error>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let relay = Relay {
            port: listener.local_addr()?.port(),
            connections: Arc::default(),
        };
        let connections = relay.connections.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let connection = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                connections.lock().push(connection.abort_handle());
            }
        });
        Ok(relay)
    }

    fn cut(&self) {
        for connection in self.connections.lock().drain(..) {
            connection.abort();
        }
    }
}

async fn demo() -> Result<(), Box<dyn Error>> {
    let server = Server::new();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = emitter_axum::listen_on(&server, listener).await?;
    let relay = Relay::start(port).await?;

    let client = reconnecting_client();
    client.connect(&format!("ws://127.0.0.1:{}/", relay.port)).await?;
    client.link("simon", None).await?;

    // Cut the connection; the client connects through the relay again and relinks simon.
    let relinked = client.wait_for_link_when(|username| username == "simon");
    relay.cut();
    tokio::time::timeout(Duration::from_secs(10), relinked).await?;
    tracing::info!(status = %client.status(), "simon is back");

    client.disconnect(true).await?;
    server.close().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt::init();
    demo().await
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn relinks_after_the_relay_is_cut() {
        super::demo().await.unwrap();
    }
}
