//! Runs the conformance server: the main endpoint on `PORT` (default 8787) and the closed one on `CLOSED_PORT`
//! (default 8788), both at path `/`, on `HOST` (default 127.0.0.1: a test server stays on loopback unless asked),
//! until Ctrl-C.

use example_support::env_number;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    example_support::init_tracing("info");
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".to_owned());
    let main_port: u16 = env_number("PORT", 8787)?;
    let closed_port: u16 = env_number("CLOSED_PORT", 8788)?;

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
