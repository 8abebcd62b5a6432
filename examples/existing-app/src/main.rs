//! Runs the app on `PORT` (default 8086) until Ctrl-C: REST routes under `/api`, the Krmx endpoint at `/krmx`.

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
        Err(_) => 8086,
    };

    let state = example_existing_app::build();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let port = listener.local_addr()?.port();
    println!("existing-app on http://localhost:{port}/api/users, Krmx at ws://localhost:{port}/krmx (Ctrl-C to stop)");

    // Ctrl-C closes the Krmx server; its `closing()` then stops the HTTP server gracefully.
    let krmx = state.krmx.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C: closing");
            if let Err(error) = krmx.close().await {
                tracing::warn!(%error, "could not close");
            }
        }
    });
    example_existing_app::serve(listener, state).await?;
    Ok(())
}
