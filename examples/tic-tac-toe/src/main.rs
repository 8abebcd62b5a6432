//! Runs the tic-tac-toe server on `PORT` (default 8083) until Ctrl-C: the page at `/`, the Krmx endpoint at `/ws`.

use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT must be a port number, not {port:?}"))?,
        Err(_) => 8083,
    };

    let server = example_tic_tac_toe::build();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let port = emitter_axum::serve(&server, listener, example_tic_tac_toe::app(&server)).await?;
    println!("tic-tac-toe on http://localhost:{port}/ (Ctrl-C to stop)");

    tokio::signal::ctrl_c().await?;
    server.close().await?;
    Ok(())
}
