//! Runs a Krmx server on `PORT` (default 8085) at path `/` that kicks users unlinked for `INACTIVITY_SECONDS`
//! (default 60), until Ctrl-C. At start it joins `idle-bot`, whom nobody links to, so the log shows a kick within the
//! first minute.

use std::time::Duration;

use example_support::env_number;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    example_support::init_tracing("info");
    let listener = example_support::bind_port(8085).await?;
    let after = Duration::from_secs(env_number("INACTIVITY_SECONDS", 60)?);

    let server = example_inactivity_kick::server(after);
    let port = emitter_axum::listen_on(&server, listener).await?;
    server.join("idle-bot")?;
    println!("inactivity-kick on ws://localhost:{port}/ (Ctrl-C to stop); unlinked users are kicked after {after:?}");

    tokio::signal::ctrl_c().await?;
    server.close().await?;
    Ok(())
}
