//! The start-up every example's `main` shares, so that each `main` shows only what is particular to it. Not an
//! example itself.
//!
//! ```
//! # async fn main_of_an_example() -> Result<(), Box<dyn std::error::Error>> {
//! example_support::init_tracing("info"); // RUST_LOG overrides it
//! let listener = example_support::bind_port(8082).await?; // 127.0.0.1, on PORT if it is set
//! # Ok(()) }
//! ```

use std::io::IsTerminal;
use std::str::FromStr;

use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Logs to stdout, filtered by `RUST_LOG` when it is set and at `default` (such as `"info"`) when it is not. Colour
/// (ANSI escapes) only when stdout is a terminal: a log redirected to a file, a pipe or CI reads as plain text.
pub fn init_tracing(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)))
        .with_ansi(std::io::stdout().is_terminal())
        .init();
}

/// The number in the environment variable `name`, or `default` when it is unset.
///
/// ```
/// assert_eq!(example_support::env_number("EXAMPLE_SUPPORT_UNSET", 7u16), Ok(7));
/// ```
pub fn env_number<T: FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .map_err(|_| format!("{name} must be a number, not {value:?}")),
        Err(_) => Ok(default),
    }
}

/// Binds the loopback interface, 127.0.0.1, on the port in `PORT`, or on `default_port` when it is unset. `PORT=0`
/// picks a free port (the listener's `local_addr` tells which).
pub async fn bind_port(default_port: u16) -> Result<TcpListener, Box<dyn std::error::Error>> {
    let port: u16 = env_number("PORT", default_port)?;
    Ok(TcpListener::bind(("127.0.0.1", port)).await?)
}
