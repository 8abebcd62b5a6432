//! Runs the tic-tac-toe server on `PORT` (default 8083) until Ctrl-C: the page at `/`, the Krmx endpoint at `/ws`.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    example_support::init_tracing("info");
    let listener = example_support::bind_port(8083).await?;

    let server = example_tic_tac_toe::build();
    let port = emitter_axum::serve(&server, listener, example_tic_tac_toe::app(&server)).await?;
    println!("tic-tac-toe on http://localhost:{port}/ (Ctrl-C to stop)");

    tokio::signal::ctrl_c().await?;
    server.close().await?;
    Ok(())
}
