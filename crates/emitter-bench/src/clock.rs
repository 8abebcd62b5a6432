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

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`, without a date crate.
pub fn now() -> String {
    let secs = unix_ns() / 1_000_000_000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}
