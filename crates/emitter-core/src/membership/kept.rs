//! The messages kept for an unlinked user, to deliver when it relinks (`ServerBuilder::keep_unlinked`).

use std::collections::VecDeque;

use tokio::time::Instant;

use crate::config::KeepLimits;
use crate::protocol::Frame;

/// One user's kept messages, oldest first, within the limits: a new one past a limit drops the oldest.
#[derive(Default)]
pub(crate) struct Kept {
    frames: VecDeque<(Instant, Frame)>,
    bytes: usize,
}

impl Kept {
    /// Keeps `frame`; returns how many older ones it dropped to stay within `limits` (a frame bigger than the byte
    /// limit is dropped itself).
    pub(crate) fn keep(&mut self, frame: Frame, limits: &KeepLimits) -> u64 {
        let now = Instant::now();
        let mut dropped = self.expire(now, limits);
        self.bytes += frame.bytes().len();
        self.frames.push_back((now, frame));
        while self.frames.len() > limits.messages || self.bytes > limits.bytes {
            let Some((_, old)) = self.frames.pop_front() else {
                break;
            };
            self.bytes -= old.bytes().len();
            dropped += 1;
        }
        dropped
    }

    /// Takes every kept frame that is not too old, oldest first; returns them and how many were too old.
    pub(crate) fn take(&mut self, limits: &KeepLimits) -> (Vec<Frame>, u64) {
        let dropped = self.expire(Instant::now(), limits);
        self.bytes = 0;
        let frames = self.frames.drain(..).map(|(_, frame)| frame).collect();
        (frames, dropped)
    }

    fn expire(&mut self, now: Instant, limits: &KeepLimits) -> u64 {
        let mut dropped = 0;
        while let Some((at, frame)) = self.frames.front() {
            if now.saturating_duration_since(*at) <= limits.age {
                break;
            }
            self.bytes -= frame.bytes().len();
            self.frames.pop_front();
            dropped += 1;
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn frame(text: &str) -> Frame {
        Frame::encode(text).unwrap()
    }

    #[test]
    fn the_oldest_go_first_past_a_limit() {
        let limits = KeepLimits {
            messages: 2,
            bytes: 1000,
            age: Duration::from_secs(60),
        };
        let mut kept = Kept::default();
        assert_eq!(kept.keep(frame("a"), &limits), 0);
        assert_eq!(kept.keep(frame("b"), &limits), 0);
        assert_eq!(kept.keep(frame("c"), &limits), 1);
        let (frames, expired) = kept.take(&limits);
        assert_eq!(expired, 0);
        assert_eq!(frames, vec![frame("b"), frame("c")]);
        assert_eq!(kept.take(&limits).0, Vec::<Frame>::new());
    }

    #[test]
    fn the_byte_limit_holds_and_too_old_ones_are_dropped() {
        let limits = KeepLimits {
            messages: 100,
            bytes: 7, // "\"abc\"" is 5 bytes: one fits, two do not
            age: Duration::ZERO,
        };
        let mut kept = Kept::default();
        kept.keep(frame("abc"), &limits);
        assert_eq!(kept.keep(frame("def"), &limits), 1);
        std::thread::sleep(Duration::from_millis(2)); // older than an age of zero
        let (frames, expired) = kept.take(&limits);
        assert_eq!((frames.len(), expired), (0, 1));
    }
}
