//! Runs a Krmx server on `PORT` (default 8085) at path `/` that kicks users unlinked for `INACTIVITY_SECONDS`
//! (default 60), until Ctrl-C. At start it joins `idle-bot`, whom nobody links to, so the log shows a kick within the
//! first minute.

use std::time::Duration;

use tracing_subscriber::EnvFilter;

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .map_err(|_| format!("{name} must be a number, not {value:?}")),
        Err(_) => Ok(default),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let port: u16 = env_number("PORT", 8085)?;
    let after = Duration::from_secs(env_number("INACTIVITY_SECONDS", 60)?);

    let server = emitter_core::Server::new();
    example_inactivity_kick::kick_when_inactive(&server, after);
    let _ = server.on_leave(|username| tracing::info!(username, "left"));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let port = emitter_axum::listen_on(&server, listener).await?;
    server.join("idle-bot")?;
    println!("inactivity-kick on ws://localhost:{port}/ (Ctrl-C to stop); unlinked users are kicked after {after:?}");

    tokio::signal::ctrl_c().await?;
    server.close().await?;
    Ok(())
}
