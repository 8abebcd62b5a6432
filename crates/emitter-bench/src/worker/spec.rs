//! What the runner asks of a worker process: the [`Spec`] it starts it with, as JSON on the command line.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::window::BoardSpec;

/// What one worker process does.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Spec {
    /// The server, always on loopback.
    pub addr: SocketAddr,
    /// The WebSocket path.
    pub path: String,
    /// Link with the Krmx protocol (`false`: a bare WebSocket server, where connected counts as linked).
    pub krmx: bool,
    /// The protocol version sent in link requests.
    pub version: String,
    /// Users `first..first + count` (named `u<index>`) belong to this worker.
    pub first: u32,
    /// How many users this worker drives.
    pub count: u32,
    /// How many users the whole run links, over all workers: a complete view lists them all.
    pub total: u32,
    /// How many links this worker has under way at once.
    pub in_flight: u32,
    /// The clock's epoch (Unix nanoseconds).
    pub epoch: u64,
    /// Whether each user tracks its view of the user list (link storms).
    pub track_views: bool,
    /// Users `senders.0..senders.1` send in the measured phase.
    pub senders: (u32, u32),
    /// Send `bench/echo` (answered to the sender only) instead of `bench/msg` (broadcast to everyone).
    pub echo: bool,
    /// Messages per second per sender; 0 sends as fast as the window allows.
    pub rate: f64,
    /// At most this many of a sender's messages are in flight at once (window mode only): not yet received by every
    /// user (broadcasts; of every load process when `board` is set, else of this one), or not yet echoed back (echo).
    pub window: u32,
    /// How long senders send.
    pub duration_ms: u64,
    /// Messages sent in the first `warmup_ms` are delivered but not measured.
    pub warmup_ms: u64,
    /// How long receivers wait for stragglers after sending stops, at most.
    pub drain_ms: u64,
    /// Extra bytes of payload per message.
    pub pad: usize,
    /// Each connection's read buffer, in bytes.
    pub read_buffer: usize,
    /// How long linking (and completing the views) may take.
    pub link_timeout_ms: u64,
    /// The process exits by itself this long after it started.
    pub deadline_ms: u64,
    /// Where the load processes share their progress, so that a broadcast sender's window counts the users of every
    /// process (set when there are several and senders broadcast with a window).
    #[serde(default)]
    pub board: Option<BoardSpec>,
}
