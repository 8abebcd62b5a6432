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

mod clock;
mod hist;
mod load;
mod report;
mod results;
mod scenario;
mod servers;
mod suite;
mod window;
mod worker;
mod ws;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("suite") => suite::main(&args[1..], false),
        Some("smoke") => suite::main(&args[1..], true),
        Some("baseline") => servers::baseline::main(),
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
