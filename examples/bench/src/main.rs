//! The server `emitter-bench` measures: the Krmx server a user would write for a broadcast app, and nothing else.
//!
//! It listens on 127.0.0.1:`PORT` (default 8084) at path `/`, accepts new users (Krmx 0.5.x and 0.6.x clients alike,
//! the default) without authentication, holds up to 19,500 connections (see [`MAX_CONNECTIONS`]), and for each
//! linked user's message:
//! - `bench/msg` is broadcast, unchanged, to every linked user, the sender included;
//! - `bench/echo` is sent back to its sender only;
//! - anything else is ignored.
//!
//! It runs until Ctrl-C, or until stdin closes when `EXIT_ON_EOF` is set (the benchmark runner sets it, so that the
//! server never outlives the runner).

use emitter_core::Server;
use tokio::io::AsyncReadExt;

/// Connections one process may hold. The default of 10,000 turns the 19,000-user scale run away (HTTP 503); each
/// connection is a file descriptor, and this machine's per-process limit is 20,000.
const MAX_CONNECTIONS: usize = 19_500;

/// Builds the benchmark server: default settings but room for the scale run's connections, one message listener.
fn build() -> Server {
    let server = Server::builder().max_connections(MAX_CONNECTIONS).build();
    server.on_message(|server, username, message| match message.kind.as_str() {
        "bench/msg" => {
            let _ = server.broadcast(message, None);
        }
        "bench/echo" => {
            let _ = server.send(username, message);
        }
        _ => {}
    });
    server
}

/// Resolves once stdin reaches its end.
async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    while matches!(stdin.read(&mut sink).await, Ok(read) if read > 0) {}
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    example_support::init_tracing("warn");
    let listener = example_support::bind_port(8084).await?;
    let server = build();
    let port = emitter_axum::listen_on(&server, listener).await?;
    println!("bench server on ws://127.0.0.1:{port}/");

    let exit_on_eof = std::env::var_os("EXIT_ON_EOF").is_some();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            // A graceful close tells every user it left: quick for a few users, slow for thousands, so bounded.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server.close()).await;
        }
        // The runner went away: exit at once; the sockets close with the process.
        () = stdin_closed(), if exit_on_eof => {}
    }
    Ok(())
}
