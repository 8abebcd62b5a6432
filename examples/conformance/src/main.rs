//! Runs the conformance server: the main endpoint on `PORT` (default 8787) and the closed one on `CLOSED_PORT`
//! (default 8788), both at path `/`, on `HOST` (default 127.0.0.1: a test server stays on loopback unless asked),
//! until Ctrl-C.

use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

fn port_from_env(name: &str, default: u16) -> u16 {
    match std::env::var(name) {
        Ok(port) => port
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a port number (0-65535), got {port:?}")),
        Err(_) => default,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".to_owned());
    let main_port = port_from_env("PORT", 8787);
    let closed_port = port_from_env("CLOSED_PORT", 8788);

    let main_listener = TcpListener::bind((host.as_str(), main_port))
        .await
        .unwrap_or_else(|error| panic!("cannot bind PORT {main_port}: {error}"));
    let closed_listener = TcpListener::bind((host.as_str(), closed_port))
        .await
        .unwrap_or_else(|error| panic!("cannot bind CLOSED_PORT {closed_port}: {error}"));
    let (main, main_port) = example_conformance::serve_main(main_listener).await?;
    let (closed, closed_port) = example_conformance::serve_closed(closed_listener).await?;
    println!("conformance server: main on ws://localhost:{main_port}/, closed on ws://localhost:{closed_port}/");

    tokio::signal::ctrl_c().await?;
    tracing::info!("Ctrl-C: closing");
    let (main_closed, closed_closed) = tokio::join!(main.close(), closed.close());
    main_closed?;
    closed_closed?;
    Ok(())
}
