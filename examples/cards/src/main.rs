//! Runs the card game on `PORT` (default 8087) until Ctrl-C: the page at `/`, the Krmx endpoint at `/ws`.
//! `CARDS_SEED` fixes the shuffles (by default they follow the clock); `CARDS_INSPECT=1` lets clients ask for the
//! server's side of each domain with `test/inspect`, for the interop tests.

use std::time::{SystemTime, UNIX_EPOCH};

use example_cards::Options;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    example_support::init_tracing("info");
    let listener = example_support::bind_port(8087).await?;

    let clock = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    let options = Options {
        seed: example_support::env_number("CARDS_SEED", clock)?,
        inspect: std::env::var("CARDS_INSPECT").is_ok_and(|value| value == "1"),
        grace_period: None,
    };
    let cards = example_cards::build(options);
    let port = emitter_axum::serve(&cards.server, listener, example_cards::app(&cards.server)).await?;
    println!("cards on http://localhost:{port}/ (Ctrl-C to stop)");

    tokio::signal::ctrl_c().await?;
    cards.server.close().await?;
    Ok(())
}
