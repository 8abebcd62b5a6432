//! What a worker tells the runner: one JSON [`Report`] line per phase, on stdout.

use serde::{Deserialize, Serialize};

use crate::hist::Wire;

/// What a worker tells the runner, one JSON line per phase.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Report {
    /// Every user linked, or failed to.
    Linked {
        /// When the first link attempt started (clock ns).
        first_start: u64,
        /// When the last link completed (clock ns).
        last_done: u64,
        /// Link latencies: connect started → own `krmx/linked` seen.
        latency: Wire,
        /// Users linked.
        linked: u32,
        /// Users whose link failed.
        failed: u32,
        /// The first few errors.
        errors: Vec<String>,
    },
    /// Every user saw every user of the run joined and linked (or the time ran out).
    Views {
        /// Users whose view is complete.
        complete: u32,
        /// Users whose complete view is also correct (joined and linked once each, nothing unlinked or left).
        correct: u32,
        /// When the last view completed (clock ns).
        at: u64,
    },
    /// Every sender of this worker has stopped sending; the runner adds these up and tells every worker how many
    /// broadcasts to wait for (`expect <n>`).
    Sent {
        /// Messages this worker's senders sent.
        sent: u64,
    },
    /// The measured phase is over.
    Result {
        /// Messages sent.
        sent: u64,
        /// Benchmark messages received (sent since `go`).
        received: u64,
        /// Messages received that were sent in the measured window (after warm-up).
        in_window: u64,
        /// Latencies of those (send → receive, ns).
        latency: Wire,
        /// Connections that broke during the run.
        disconnected: u32,
        /// The first few errors.
        errors: Vec<String>,
    },
}

/// Prints `report` as one line.
pub(super) fn emit(report: &Report) {
    // One line per report; stdout is line-buffered, so the runner sees it at once.
    match serde_json::to_string(report) {
        Ok(line) => println!("{line}"),
        Err(error) => eprintln!("worker: cannot encode a report: {error}"),
    }
}
