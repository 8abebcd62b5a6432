//! Runs the JWT-authenticated server on `PORT` (default 8084) at path `/` until Ctrl-C, and prints tokens to try.
//!
//! The signing secret is `JWT_SECRET`; without it a development secret is used and a warning logged.

use std::time::Duration;

use example_jwt_auth::{build, expires_in, issue, Bans};

const DEV_SECRET: &str = "emitter-dev-secret-do-not-use-in-production";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    example_support::init_tracing("info");
    let listener = example_support::bind_port(8084).await?;
    let secret = std::env::var("JWT_SECRET").unwrap_or_else(|_| {
        tracing::warn!("JWT_SECRET is not set: using a development secret");
        DEV_SECRET.to_owned()
    });

    let bans = Bans::default();
    bans.ban("mallory").await;
    let server = build(secret.as_bytes(), bans);
    let port = emitter_axum::listen_on(&server, listener).await?;
    println!("jwt-auth on ws://localhost:{port}/ (Ctrl-C to stop); link messages to try, valid for an hour:");
    for username in ["simon", "lisa", "mallory"] {
        let token = issue(secret.as_bytes(), username, expires_in(Duration::from_secs(3600)))?;
        let link = serde_json::json!({
            "type": "krmx/link",
            "payload": { "username": username, "version": "0.6.0", "auth": token },
        });
        println!("{link}");
    }

    tokio::signal::ctrl_c().await?;
    server.close().await?;
    Ok(())
}
