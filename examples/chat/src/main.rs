//! Runs the chat relay on `PORT` (default 8082) at path `/` until Ctrl-C.

use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port.parse().expect("PORT must be a port number (0-65535)"),
        Err(_) => 8082,
    };

    let server = example_chat::build();
    let port = emitter_axum::listen(&server, port).await?;
    println!("chat server on ws://localhost:{port}/ (Ctrl-C to stop)");

    tokio::signal::ctrl_c().await?;
    tracing::info!("Ctrl-C: closing");
    server.close().await?;
    Ok(())
}
