//! `emitter-bench`: the benchmark suite behind `just bench`.
//!
//! ```text
//! emitter-bench suite [options]   run the scenarios against every target, alternating, and write the report
//!                                 (`--only cluster`: three nodes on one Redis against one node)
//! emitter-bench smoke             a tiny run against our server only, and a cluster of it when redis-server is on
//!                                 PATH (CI): seconds, small numbers, no report
//! emitter-bench baseline          the bare axum WebSocket broadcast server (PORT, default 8083; tungstenite's default
//!                                 buffers, or emitter-axum's with BASELINE_EQUAL_BUFFERS=1)
//! emitter-bench worker <spec>     one load-generator process (started by the suite)
//! ```
//!
//! `emitter-bench suite --help` lists the options.

mod baseline;
mod clock;
mod cluster;
mod hist;
mod load;
mod multicore;
mod process;
mod redis;
mod report;
mod results;
mod scenario;
mod suite;
mod target;
mod window;
mod worker;
mod ws;

use std::process::ExitCode;

/// `PORT` from the environment, or `default`.
pub(crate) fn port_from_env(default: u16) -> Result<u16, String> {
    match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT must be a port number, not {port:?}")),
        Err(_) => Ok(default),
    }
}

/// Resolves on Ctrl-C, or when stdin closes if `EXIT_ON_EOF` is set (the suite sets it, so that a server never
/// outlives the runner that started it).
pub(crate) async fn stop_signal() {
    let eof = async {
        if std::env::var_os("EXIT_ON_EOF").is_some() {
            use tokio::io::AsyncReadExt;
            let mut sink = [0u8; 64];
            let mut stdin = tokio::io::stdin();
            while matches!(stdin.read(&mut sink).await, Ok(n) if n > 0) {}
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = eof => {}
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("suite") => suite::main(&args[1..], false),
        Some("smoke") => suite::main(&args[1..], true),
        Some("baseline") => baseline::main(),
        Some("worker") => match args.get(1) {
            Some(spec) => worker::main(spec),
            None => Err("worker needs its spec".into()),
        },
        _ => {
            eprintln!("usage: emitter-bench suite|smoke|baseline|worker (see `emitter-bench suite --help`)");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("emitter-bench: {error}");
            ExitCode::FAILURE
        }
    }
}
