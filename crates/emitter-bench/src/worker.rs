//! The load generator: one process drives a range of simulated users, each on its own connection and task.
//!
//! The runner starts it with a [`Spec`] and talks to it in lines: the worker prints one JSON [`Report`] per phase on
//! stdout, and reads `go <start>` (start the measured phase at that clock value) and `quit` on stdin. It exits on
//! `quit`, when stdin closes, or at its deadline, whichever comes first.
//!
//! Phases: every user connects and links (at most `in_flight` at a time) → `linked`; then, when views are tracked,
//! every user's view of the user list is complete → `views`; then, after `go`, the senders send for `duration_ms`
//! and everyone counts what arrives → `result`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, watch, Notify, Semaphore};

use crate::clock;
use crate::hist::{Histogram, Wire};
use crate::window::{Board, BoardSpec};
use crate::ws::{Conn, Incoming};

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

const SHARDS: usize = 16;

struct Shared {
    spec: Spec,
    link_latency: Mutex<Histogram>,
    link_times: Mutex<(u64, u64)>,
    link_settled: AtomicU32,
    linked: AtomicU32,
    link_notify: Notify,
    views_complete: AtomicU32,
    views_correct: AtomicU32,
    views_at: Mutex<u64>,
    views_notify: Notify,
    latency: Vec<Mutex<Histogram>>,
    errors: Mutex<Vec<String>>,
    disconnected: AtomicU32,
    sent_total: AtomicU64,
    senders_done: AtomicU32,
    senders_notify: Notify,
    /// Broadcasts received, per local user and sender: `progress[local * senders + sender]`. A sender's window counts
    /// its messages that the slowest local user has not received yet; a user that is gone reads as `u64::MAX`.
    progress: Vec<AtomicU64>,
    /// What the other load processes have received, when there are several.
    board: Option<Board>,
}

impl Shared {
    fn senders(&self) -> usize {
        self.spec.senders.1.saturating_sub(self.spec.senders.0) as usize
    }

    /// The progress slot of local user `index` for messages from `sender`, if `sender` is one.
    fn slot(&self, index: u32, sender: u32) -> Option<&AtomicU64> {
        let spec = &self.spec;
        if !(spec.senders.0..spec.senders.1).contains(&sender) || index < spec.first {
            return None;
        }
        let local = (index - spec.first) as usize;
        self.progress
            .get(local * self.senders() + (sender - spec.senders.0) as usize)
    }

    /// How many of `sender`'s messages every local user has received.
    fn local_slowest(&self, sender: u32) -> u64 {
        (self.spec.first..self.spec.first + self.spec.count)
            .filter_map(|index| self.slot(index, sender))
            .map(|slot| slot.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }

    /// How many of `sender`'s messages every user has received, in this process and (as last published) the others.
    fn slowest(&self, sender: u32) -> u64 {
        let local = self.local_slowest(sender);
        match &self.board {
            Some(board) => local.min(board.remote(sender.saturating_sub(self.spec.senders.0) as usize)),
            None => local,
        }
    }

    /// Publishes this process's progress and reads the others', once a millisecond, until the process ends.
    async fn share_progress(self: Arc<Self>) {
        let Some(board) = &self.board else { return };
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failed = false;
        loop {
            tick.tick().await;
            let local: Vec<u64> = (self.spec.senders.0..self.spec.senders.1)
                .map(|sender| self.local_slowest(sender))
                .collect();
            if let Err(error) = board.exchange(&local) {
                // The windows stop opening and the run shows it; say why once.
                if !failed {
                    failed = true;
                    self.error(format!("sharing progress: {error}"));
                }
            }
        }
    }

    /// Takes a user that is gone out of every sender's window.
    fn gone(&self, index: u32) {
        for sender in self.spec.senders.0..self.spec.senders.1 {
            if let Some(slot) = self.slot(index, sender) {
                slot.store(u64::MAX, Ordering::Relaxed);
            }
        }
    }

    /// How many of this worker's users send.
    fn local_senders(&self) -> u32 {
        let spec = &self.spec;
        let (start, end) = (
            spec.senders.0.max(spec.first),
            spec.senders.1.min(spec.first + spec.count),
        );
        end.saturating_sub(start)
    }

    /// A sender is done sending (or will never send).
    fn sender_done(&self, sent: u64) {
        self.sent_total.fetch_add(sent, Ordering::SeqCst);
        if self.senders_done.fetch_add(1, Ordering::SeqCst) + 1 == self.local_senders() {
            self.senders_notify.notify_one();
        }
    }

    fn error(&self, message: String) {
        let mut errors = self.errors.lock();
        if errors.len() < 5 {
            errors.push(message);
        }
    }

    fn link_settled(&self, done: Option<(u64, u64)>) {
        if let Some((started, finished)) = done {
            self.link_latency.lock().record(finished.saturating_sub(started));
            let mut times = self.link_times.lock();
            times.0 = times.0.min(started);
            times.1 = times.1.max(finished);
            self.linked.fetch_add(1, Ordering::SeqCst);
        }
        if self.link_settled.fetch_add(1, Ordering::SeqCst) + 1 == self.spec.count {
            self.link_notify.notify_one();
        }
    }
}

/// What one user's task hands back at the end of the measured phase.
struct ClientResult {
    sent: u64,
    received: u64,
    in_window: u64,
}

/// A fixed-size set of user indices.
struct Bits {
    words: Vec<u64>,
    count: u32,
}

impl Bits {
    fn new(size: u32) -> Bits {
        Bits {
            words: vec![0; (size as usize).div_ceil(64)],
            count: 0,
        }
    }

    /// Adds `i`; false when it was there already (or out of range).
    fn insert(&mut self, i: u32) -> bool {
        let Some(word) = self.words.get_mut(i as usize / 64) else {
            return false;
        };
        let bit = 1u64 << (i % 64);
        if *word & bit != 0 {
            return false;
        }
        *word |= bit;
        self.count += 1;
        true
    }
}

/// One server message, as far as the load generator needs to understand it.
#[derive(Debug, PartialEq)]
enum Parsed<'a> {
    /// `bench/msg` or `bench/echo`: the send time and the sender.
    Bench {
        sent_at: u64,
        sender: u32,
    },
    /// A `krmx/` message: its type after the prefix, and the username in its payload.
    Krmx {
        kind: &'a [u8],
        username: &'a [u8],
    },
    Other,
}

fn digits(bytes: &[u8]) -> Option<(u64, usize)> {
    let len = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 || len > 19 {
        return None;
    }
    let value = bytes[..len].iter().fold(0u64, |v, b| v * 10 + u64::from(b - b'0'));
    Some((value, len))
}

fn until_quote(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|b| *b == b'"').unwrap_or(bytes.len());
    &bytes[..end]
}

/// Reads a server message. Every server under test writes `type` first, so a prefix test and a short scan do; other
/// shapes go through serde_json.
fn parse(data: &[u8]) -> Parsed<'_> {
    const BENCH: &[u8] = b"{\"type\":\"bench/";
    const KRMX: &[u8] = b"{\"type\":\"krmx/";
    const PAYLOAD: &[u8] = b"\"payload\":[";
    const USERNAME: &[u8] = b"\"username\":\"";
    if data.starts_with(BENCH) {
        if let Some(at) = crate::ws::find(&data[BENCH.len()..], PAYLOAD) {
            let rest = &data[BENCH.len() + at + PAYLOAD.len()..];
            if let Some((sent_at, len)) = digits(rest) {
                if let Some((sender, _)) = rest.get(len + 1..).and_then(digits) {
                    return Parsed::Bench {
                        sent_at,
                        sender: sender as u32,
                    };
                }
            }
        }
    } else if data.starts_with(KRMX) {
        let kind = until_quote(&data[KRMX.len()..]);
        let username = crate::ws::find(data, USERNAME)
            .map(|at| until_quote(&data[at + USERNAME.len()..]))
            .unwrap_or_default();
        return Parsed::Krmx { kind, username };
    }
    slow_parse(data)
}

fn slow_parse(data: &[u8]) -> Parsed<'_> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return Parsed::Other;
    };
    let kind = value.get("type").and_then(|kind| kind.as_str()).unwrap_or_default();
    if kind.starts_with("bench/") {
        let payload = value.get("payload").and_then(|payload| payload.as_array());
        let number = |i: usize| payload.and_then(|p| p.get(i)).and_then(|n| n.as_u64());
        if let (Some(sent_at), Some(sender)) = (number(0), number(1)) {
            return Parsed::Bench {
                sent_at,
                sender: sender as u32,
            };
        }
    } else if let Some(kind) = kind.strip_prefix("krmx/") {
        // Leak-free borrowing is not possible from a parsed Value; find the same text in the frame instead.
        let username = value
            .get("payload")
            .and_then(|p| p.get("username"))
            .and_then(|u| u.as_str())
            .unwrap_or_default();
        let locate = |text: &str| {
            crate::ws::find(data, text.as_bytes())
                .map(|at| &data[at..at + text.len()])
                .unwrap_or_default()
        };
        return Parsed::Krmx {
            kind: locate(kind),
            username: if username.is_empty() { &[] } else { locate(username) },
        };
    }
    Parsed::Other
}

fn user_index(username: &[u8]) -> Option<u32> {
    let (index, len) = digits(username.strip_prefix(b"u")?)?;
    (len + 1 == username.len()).then_some(index as u32)
}

/// One simulated user.
struct Client {
    index: u32,
    shared: Arc<Shared>,
    // link and views
    self_linked: bool,
    rejected: Option<String>,
    joined: Option<Bits>,
    linked: Option<Bits>,
    anomalies: u32,
    view_done: bool,
    // the measured phase
    sender: bool,
    go: Option<u64>,
    sent: u64,
    in_flight: u32,
    received: u64,
    in_window: u64,
    /// How many broadcasts arrive in all, once the runner knows.
    expect: Option<u64>,
    sent_reported: bool,
    samples: Vec<u64>,
    closed_by_server: bool,
}

impl Client {
    fn end(&self) -> u64 {
        self.go
            .unwrap_or(u64::MAX)
            .saturating_add(self.shared.spec.duration_ms * 1_000_000)
    }

    fn on_frame(&mut self, data: &[u8]) {
        match parse(data) {
            Parsed::Bench { sent_at, sender } => {
                let Some(go) = self.go else { return };
                if sent_at < go {
                    return;
                }
                let now = clock::since(self.shared.spec.epoch);
                self.received += 1;
                if sender == self.index {
                    self.in_flight = self.in_flight.saturating_sub(1);
                }
                if let Some(slot) = self.shared.slot(self.index, sender) {
                    slot.fetch_add(1, Ordering::Relaxed);
                }
                if sent_at >= go + self.shared.spec.warmup_ms * 1_000_000 && sent_at < self.end() {
                    self.in_window += 1;
                    self.samples.push(now.saturating_sub(sent_at));
                    if self.samples.len() == self.samples.capacity() {
                        self.flush_samples();
                    }
                }
            }
            Parsed::Krmx { kind: b"rejected", .. } => {
                self.rejected = Some(format!("u{} rejected: {}", self.index, String::from_utf8_lossy(data)));
            }
            Parsed::Krmx { kind, username } => self.on_krmx(kind, username),
            Parsed::Other => {}
        }
    }

    fn on_krmx(&mut self, kind: &[u8], username: &[u8]) {
        let user = user_index(username);
        if kind == b"linked" && user == Some(self.index) {
            self.self_linked = true;
        }
        let (Some(joined), Some(linked)) = (self.joined.as_mut(), self.linked.as_mut()) else {
            return;
        };
        match (kind, user) {
            (b"joined", Some(user)) => {
                if !joined.insert(user) {
                    self.anomalies += 1;
                }
            }
            (b"linked", Some(user)) => {
                if !linked.insert(user) {
                    self.anomalies += 1;
                }
            }
            (b"accepted", _) => {}
            _ => self.anomalies += 1, // nobody unlinks or leaves in a benchmark
        }
        let total = self.shared.spec.total;
        if !self.view_done && linked.count == total {
            self.view_done = true;
            let shared = &self.shared;
            if joined.count == total && self.anomalies == 0 {
                shared.views_correct.fetch_add(1, Ordering::SeqCst);
            }
            {
                let mut at = shared.views_at.lock();
                *at = (*at).max(clock::since(shared.spec.epoch));
            }
            if shared.views_complete.fetch_add(1, Ordering::SeqCst) + 1 == shared.spec.count {
                shared.views_notify.notify_one();
            }
        }
    }

    fn flush_samples(&mut self) {
        let mut histogram = self.shared.latency[self.index as usize % SHARDS].lock();
        for sample in self.samples.drain(..) {
            histogram.record(sample);
        }
    }

    /// Queues what the sender may send now: what the schedule says is due (rate mode) or what the window allows.
    fn queue_sends(&mut self, conn: &mut Conn, scratch: &mut Vec<u8>) {
        let Some(go) = self.go.filter(|_| self.sender) else {
            return;
        };
        let spec = &self.shared.spec;
        let now = clock::since(spec.epoch);
        if now < go || now >= self.end() {
            return;
        }
        let due = if spec.rate > 0.0 {
            // Open loop: everything the schedule says should have gone by now.
            ((now - go) as f64 * spec.rate / 1e9) as u64 + 1
        } else if spec.echo {
            // Closed loop on the sender's own echoes.
            self.sent + u64::from(spec.window.saturating_sub(self.in_flight))
        } else {
            // A broadcast is in flight until the slowest user (of every load process) has it, so that the window bounds
            // every recipient's queue, not just the sender's own.
            self.shared.slowest(self.index).min(self.sent) + u64::from(spec.window)
        };
        while self.sent < due {
            scratch.clear();
            let kind = if spec.echo { "echo" } else { "msg" };
            let now = clock::since(spec.epoch);
            scratch.extend_from_slice(
                format!(
                    "{{\"type\":\"bench/{kind}\",\"payload\":[{now},{},{}",
                    self.index, self.sent
                )
                .as_bytes(),
            );
            if spec.pad > 0 {
                scratch.extend_from_slice(b",\"");
                scratch.resize(scratch.len() + spec.pad, b'x');
                scratch.push(b'"');
            }
            scratch.extend_from_slice(b"]}");
            conn.queue_text(scratch);
            self.sent += 1;
            self.in_flight += 1;
        }
    }

    /// When the task should wake up without input: the next scheduled send, or a check for the end of the run.
    fn next_wake(&self) -> Option<u64> {
        let go = self.go?;
        let spec = &self.shared.spec;
        let now = clock::since(spec.epoch);
        if now < go {
            return Some(go);
        }
        if self.sender && spec.rate > 0.0 && now < self.end() {
            let next = go + ((self.sent as f64) * 1e9 / spec.rate) as u64;
            return Some(next.min(self.end()));
        }
        if self.sender && !spec.echo && now < self.end() {
            // A full window opens when the slowest user catches up, which wakes nobody here: look again soon.
            return Some(now + 200_000);
        }
        Some(now + 50_000_000)
    }

    /// Reports this sender's count once sending is over.
    fn report_sent(&mut self) {
        if self.sender && !self.sent_reported && clock::since(self.shared.spec.epoch) >= self.end() {
            self.sent_reported = true;
            self.shared.sender_done(self.sent);
        }
    }

    /// Whether the measured phase is over for this user: sending has stopped and everything arrived (every echo of
    /// its own, or as many broadcasts as the runner said were sent), or the drain time ran out.
    fn finished(&self) -> bool {
        let Some(_) = self.go else { return false };
        let spec = &self.shared.spec;
        let now = clock::since(spec.epoch);
        let end = self.end();
        let complete = if spec.echo {
            self.received >= self.sent
        } else {
            self.expect.is_some_and(|expected| self.received >= expected)
        };
        now >= end && (complete || now >= end + spec.drain_ms * 1_000_000)
    }
}

fn link_message(spec: &Spec, index: u32) -> Vec<u8> {
    format!(
        "{{\"type\":\"krmx/link\",\"payload\":{{\"username\":\"u{index}\",\"version\":\"{}\"}}}}",
        spec.version
    )
    .into_bytes()
}

/// Connects and links one user; returns the open connection.
async fn link(client: &mut Client, conn_slot: &mut Option<Conn>) -> std::io::Result<()> {
    let spec = client.shared.spec.clone();
    let mut conn = Conn::connect(spec.addr, &spec.path, spec.read_buffer).await?;
    if spec.krmx {
        conn.queue_text(&link_message(&spec, client.index));
        conn.flush().await?;
        while !client.self_linked {
            if conn.read_more().await? == 0 {
                return Err(std::io::Error::other("closed while linking"));
            }
            conn.frames(|frame| {
                if let Incoming::Data(data) = frame {
                    client.on_frame(data);
                }
            })?;
            if let Some(reason) = client.rejected.take() {
                return Err(std::io::Error::other(reason));
            }
            conn.flush().await?;
        }
    }
    *conn_slot = Some(conn);
    Ok(())
}

async fn run_client(
    mut client: Client,
    permits: Arc<Semaphore>,
    mut go: watch::Receiver<Option<u64>>,
    mut expect: watch::Receiver<Option<u64>>,
    mut quit: watch::Receiver<bool>,
    results: mpsc::UnboundedSender<Option<ClientResult>>,
) {
    let shared = client.shared.clone();
    let spec = &shared.spec;
    let mut conn = None;
    {
        let Ok(_permit) = permits.acquire().await else { return };
        let started = clock::since(spec.epoch);
        let timeout = Duration::from_millis(spec.link_timeout_ms);
        match tokio::time::timeout(timeout, link(&mut client, &mut conn)).await {
            Ok(Ok(())) => shared.link_settled(Some((started, clock::since(spec.epoch)))),
            Ok(Err(error)) => {
                shared.error(format!("u{}: {error}", client.index));
                shared.link_settled(None);
            }
            Err(_) => {
                shared.error(format!("u{}: link timed out", client.index));
                shared.link_settled(None);
            }
        }
    }
    let Some(mut conn) = conn else {
        shared.gone(client.index);
        if client.sender {
            shared.sender_done(0);
        }
        let _ = results.send(None);
        return;
    };
    let mut scratch = Vec::with_capacity(128 + spec.pad);
    let mut reported = false;
    loop {
        let wake = if reported { None } else { client.next_wake() };
        let sleep_for = wake.map(|at| Duration::from_nanos(at.saturating_sub(clock::since(spec.epoch))));
        tokio::select! {
            biased;
            _ = quit.changed() => break,
            _ = go.changed(), if client.go.is_none() => client.go = *go.borrow(),
            _ = expect.changed(), if client.expect.is_none() => client.expect = *expect.borrow(),
            read = conn.read_more() => match read {
                Ok(0) | Err(_) => {
                    client.closed_by_server = true;
                    break;
                }
                Ok(_) => {
                    let parsed = conn.frames(|frame| match frame {
                        Incoming::Data(data) => client.on_frame(data),
                        Incoming::Closed => client.closed_by_server = true,
                    });
                    if let Err(error) = parsed {
                        shared.error(format!("u{}: {error}", client.index));
                        client.closed_by_server = true;
                        break;
                    }
                    if client.closed_by_server {
                        break;
                    }
                }
            },
            () = tokio::time::sleep(sleep_for.unwrap_or(Duration::ZERO)), if sleep_for.is_some() => {}
        }
        client.queue_sends(&mut conn, &mut scratch);
        if conn.has_output() && conn.flush().await.is_err() {
            client.closed_by_server = true;
            break;
        }
        client.report_sent();
        if !reported && client.finished() {
            reported = true;
            client.flush_samples();
            let _ = results.send(Some(ClientResult {
                sent: client.sent,
                received: client.received,
                in_window: client.in_window,
            }));
        }
    }
    shared.gone(client.index);
    if client.sender && !client.sent_reported {
        client.sent_reported = true;
        shared.sender_done(client.sent);
    }
    if client.closed_by_server && !*quit.borrow() {
        shared.disconnected.fetch_add(1, Ordering::SeqCst);
        shared.error(format!("u{}: the connection closed during the run", client.index));
    }
    if !reported {
        client.flush_samples();
        let _ = results.send(Some(ClientResult {
            sent: client.sent,
            received: client.received,
            in_window: client.in_window,
        }));
    }
    conn.close().await;
}

fn emit(report: &Report) {
    // One line per report; stdout is line-buffered, so the runner sees it at once.
    match serde_json::to_string(report) {
        Ok(line) => println!("{line}"),
        Err(error) => eprintln!("worker: cannot encode a report: {error}"),
    }
}

/// Runs a worker to completion. `spec` is the JSON of a [`Spec`].
pub fn main(spec: &str) -> Result<(), Box<dyn std::error::Error>> {
    let spec: Spec = serde_json::from_str(spec)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(spec))
}

async fn run(spec: Spec) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(spec.deadline_ms);
    let shared = Arc::new(Shared {
        link_latency: Mutex::new(Histogram::default()),
        link_times: Mutex::new((u64::MAX, 0)),
        link_settled: AtomicU32::new(0),
        linked: AtomicU32::new(0),
        link_notify: Notify::new(),
        views_complete: AtomicU32::new(0),
        views_correct: AtomicU32::new(0),
        views_at: Mutex::new(0),
        views_notify: Notify::new(),
        latency: (0..SHARDS).map(|_| Mutex::new(Histogram::default())).collect(),
        errors: Mutex::new(Vec::new()),
        disconnected: AtomicU32::new(0),
        sent_total: AtomicU64::new(0),
        senders_done: AtomicU32::new(0),
        senders_notify: Notify::new(),
        progress: (0..spec.count as usize * spec.senders.1.saturating_sub(spec.senders.0) as usize)
            .map(|_| AtomicU64::new(0))
            .collect(),
        board: match &spec.board {
            Some(board) => Some(Board::open(
                board,
                spec.senders.1.saturating_sub(spec.senders.0) as usize,
            )?),
            None => None,
        },
        spec: spec.clone(),
    });
    tokio::spawn(shared.clone().share_progress());
    let (go_tx, go_rx) = watch::channel(None);
    let (expect_tx, expect_rx) = watch::channel(None);
    let (quit_tx, quit_rx) = watch::channel(false);
    let (results_tx, mut results_rx) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(spec.in_flight.max(1) as usize));

    // Commands from the runner. EOF (the runner went away) means quit.
    let quit_on_command = quit_tx.clone();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut words = line.split_whitespace();
            match (words.next(), words.next().and_then(|at| at.parse::<u64>().ok())) {
                (Some("go"), Some(at)) => {
                    go_tx.send_replace(Some(at));
                }
                (Some("expect"), Some(count)) => {
                    expect_tx.send_replace(Some(count));
                }
                (Some("quit"), _) => break,
                _ => eprintln!("worker: unknown command {line:?}"),
            }
        }
        quit_on_command.send_replace(true);
    });
    // The process ends by itself at its deadline, whatever happens.
    tokio::spawn(async move {
        tokio::time::sleep_until(deadline).await;
        eprintln!("worker: deadline reached; exiting");
        std::process::exit(3);
    });

    for index in spec.first..spec.first + spec.count {
        let views = || spec.track_views.then(|| Bits::new(spec.total));
        let client = Client {
            index,
            shared: shared.clone(),
            self_linked: false,
            rejected: None,
            joined: views(),
            linked: views(),
            anomalies: 0,
            view_done: false,
            sender: (spec.senders.0..spec.senders.1).contains(&index),
            go: None,
            sent: 0,
            in_flight: 0,
            received: 0,
            in_window: 0,
            expect: None,
            sent_reported: false,
            samples: Vec::with_capacity(256),
            closed_by_server: false,
        };
        tokio::spawn(run_client(
            client,
            permits.clone(),
            go_rx.clone(),
            expect_rx.clone(),
            quit_rx.clone(),
            results_tx.clone(),
        ));
    }
    drop(results_tx);
    let mut quit = quit_rx.clone();

    // Phase 1: linking.
    if spec.count > 0 {
        tokio::select! {
            () = shared.link_notify.notified() => {}
            _ = quit.wait_for(|quit| *quit) => return Ok(()),
        }
    }
    let (first_start, last_done) = *shared.link_times.lock();
    emit(&Report::Linked {
        first_start: if first_start == u64::MAX { 0 } else { first_start },
        last_done,
        latency: shared.link_latency.lock().to_wire(),
        linked: shared.linked.load(Ordering::SeqCst),
        failed: spec.count - shared.linked.load(Ordering::SeqCst),
        errors: shared.errors.lock().clone(),
    });

    // Phase 2: complete views, when tracked.
    if spec.track_views {
        let views = async {
            if shared.views_complete.load(Ordering::SeqCst) < spec.count {
                shared.views_notify.notified().await;
            }
        };
        tokio::select! {
            () = views => {}
            () = tokio::time::sleep(Duration::from_millis(spec.link_timeout_ms)) => {}
            _ = quit.wait_for(|quit| *quit) => return Ok(()),
        }
        emit(&Report::Views {
            complete: shared.views_complete.load(Ordering::SeqCst),
            correct: shared.views_correct.load(Ordering::SeqCst),
            at: *shared.views_at.lock(),
        });
    }

    // Phase 3: the measured phase, once the runner says go.
    let mut totals = ClientResult {
        sent: 0,
        received: 0,
        in_window: 0,
    };
    // Once every local sender has stopped, say how many messages they sent.
    let senders_done = async {
        let mut go = go_rx.clone();
        let _ = go.wait_for(Option::is_some).await;
        if shared.senders_done.load(Ordering::SeqCst) < shared.local_senders() {
            shared.senders_notify.notified().await;
        }
    };
    tokio::select! {
        () = senders_done => emit(&Report::Sent { sent: shared.sent_total.load(Ordering::SeqCst) }),
        _ = quit.wait_for(|quit| *quit) => {}
    }
    // Every user's task hands in exactly one result (`None` for a user that never linked).
    let mut outstanding = spec.count;
    while outstanding > 0 {
        tokio::select! {
            result = results_rx.recv() => match result {
                Some(result) => {
                    outstanding -= 1;
                    if let Some(result) = result {
                        totals.sent += result.sent;
                        totals.received += result.received;
                        totals.in_window += result.in_window;
                    }
                }
                None => break,
            },
            _ = quit.wait_for(|quit| *quit) => break,
        }
    }
    if !*quit.borrow() {
        let mut latency = Histogram::default();
        for shard in &shared.latency {
            latency.merge(&shard.lock());
        }
        emit(&Report::Result {
            sent: totals.sent,
            received: totals.received,
            in_window: totals.in_window,
            latency: latency.to_wire(),
            disconnected: shared.disconnected.load(Ordering::SeqCst),
            errors: shared.errors.lock().clone(),
        });
        let _ = quit.wait_for(|quit| *quit).await;
    }
    // Give the connections a moment to close cleanly.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_servers_send() {
        assert_eq!(
            parse(br#"{"type":"bench/msg","payload":[123,4,5]}"#),
            Parsed::Bench {
                sent_at: 123,
                sender: 4
            }
        );
        assert_eq!(
            parse(br#"{"payload":[9,8,7],"type":"bench/echo"}"#),
            Parsed::Bench { sent_at: 9, sender: 8 }
        );
        assert_eq!(
            parse(br#"{"type":"krmx/joined","payload":{"username":"u12"}}"#),
            Parsed::Krmx {
                kind: b"joined",
                username: b"u12"
            }
        );
        assert_eq!(
            parse(br#"{"payload":{"username":"u7"},"type":"krmx/linked"}"#),
            Parsed::Krmx {
                kind: b"linked",
                username: b"u7"
            }
        );
        assert_eq!(
            parse(br#"{"type":"krmx/accepted"}"#),
            Parsed::Krmx {
                kind: b"accepted",
                username: b""
            }
        );
        assert_eq!(user_index(b"u12"), Some(12));
        assert_eq!(user_index(b"u12x"), None);
        assert_eq!(user_index(b"simon"), None);
    }
}
