//! Runs the app on `PORT` (default 8086) until Ctrl-C: REST routes under `/api`, the Krmx endpoint at `/krmx`.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    example_support::init_tracing("info");

    let state = example_existing_app::build();
    let listener = example_support::bind_port(8086).await?;
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
