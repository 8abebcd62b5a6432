//! One clock for every process of a run: nanoseconds since an epoch the runner picks, read from the wall clock so
//! that a send time written by one process can be compared with a receive time read in another on the same machine.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(0)
}

/// Nanoseconds since `epoch` (a [`unix_ns`] value). Values stay far below 2^53, so JavaScript numbers keep them exact.
pub fn since(epoch: u64) -> u64 {
    unix_ns().saturating_sub(epoch)
}
