//! Warnings a client can cause with every message it sends, rate-limited per connection: a client that sends one bad
//! message after another (while no rate limit closes it) cannot flood the log. The lines left out are counted in the
//! next line that is logged.

use std::cell::Cell;
use std::time::Duration;

use tokio::time::Instant;

use crate::sync::Mutex;
use crate::transport::id::ConnectionId;

/// Lines a connection may log in one window.
const LINES: u32 = 3;

/// The window: after it, a connection may log `LINES` lines again.
const WINDOW: Duration = Duration::from_secs(10);

/// One connection's allowance of warnings.
#[derive(Default)]
pub(crate) struct LogLimit {
    window: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    started: Option<Instant>,
    logged: u32,
    /// Lines left out since the last one logged.
    left_out: u64,
}

impl LogLimit {
    /// Whether a warning may be logged now: `Some(left_out)` with how many were left out before it, or `None` (counted
    /// as left out).
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut window = self.window.lock();
        if window
            .started
            .is_none_or(|started| now.duration_since(started) >= WINDOW)
        {
            window.started = Some(now);
            window.logged = 0;
        }
        if window.logged >= LINES {
            window.left_out += 1;
            return None;
        }
        window.logged += 1;
        Some(std::mem::take(&mut window.left_out))
    }
}

/// A client's string, cut to at most 64 bytes for a log line.
pub(crate) fn shortened(text: &str) -> &str {
    let mut end = text.len().min(64);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

thread_local! {
    /// The connection whose message the `message` listeners on this thread are handling, if any.
    static HANDLING: Cell<Option<ConnectionId>> = const { Cell::new(None) };
}

/// Runs `listeners` as the handling of a message from connection `id`: a warning they cause through the server (a
/// payload that does not fit, say) counts against that connection.
pub(crate) fn handling<R>(id: ConnectionId, listeners: impl FnOnce() -> R) -> R {
    let before = HANDLING.with(|handling| handling.replace(Some(id)));
    let result = listeners();
    HANDLING.with(|handling| handling.set(before));
    result
}

/// The connection whose message is being handled on this thread, if any.
pub(crate) fn handled_for() -> Option<ConnectionId> {
    HANDLING.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_few_lines_a_window_and_the_rest_counted() {
        let limit = LogLimit::default();
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), None);
        assert_eq!(limit.allow(), None);
        tokio::time::advance(WINDOW).await;
        assert_eq!(limit.allow(), Some(2));
        assert_eq!(limit.allow(), Some(0));
    }

    #[test]
    fn handling_is_scoped() {
        assert_eq!(handled_for(), None);
        handling(ConnectionId(7), || {
            assert_eq!(handled_for(), Some(ConnectionId(7)));
            handling(ConnectionId(8), || assert_eq!(handled_for(), Some(ConnectionId(8))));
            assert_eq!(handled_for(), Some(ConnectionId(7)));
        });
        assert_eq!(handled_for(), None);
    }
}
