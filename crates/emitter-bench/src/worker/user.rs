//! One simulated user: its connection and link, its view of the user list, and what it sends and counts in the
//! measured phase. Each user runs on a task of its own ([`run`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};

use super::parse::{parse, user_index, Parsed};
use super::shared::{Shared, SHARDS};
use super::spec::Spec;
use crate::clock;
use crate::ws::{Conn, Incoming};

/// What one user's task hands back at the end of the measured phase.
#[derive(Default)]
pub(super) struct UserResult {
    pub(super) sent: u64,
    pub(super) received: u64,
    pub(super) in_window: u64,
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

/// One simulated user.
pub(super) struct User {
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

impl User {
    /// User `u<index>`, not connected yet.
    pub(super) fn new(index: u32, shared: Arc<Shared>) -> User {
        let spec = &shared.spec;
        let views = || spec.track_views.then(|| Bits::new(spec.total));
        User {
            index,
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
            shared,
        }
    }

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
async fn link(user: &mut User, conn_slot: &mut Option<Conn>) -> std::io::Result<()> {
    let spec = user.shared.spec.clone();
    let mut conn = Conn::connect(spec.addr, &spec.path, spec.read_buffer).await?;
    if spec.krmx {
        conn.queue_text(&link_message(&spec, user.index));
        conn.flush().await?;
        while !user.self_linked {
            if conn.read_more().await? == 0 {
                return Err(std::io::Error::other("closed while linking"));
            }
            conn.frames(|frame| {
                if let Incoming::Data(data) = frame {
                    user.on_frame(data);
                }
            })?;
            if let Some(reason) = user.rejected.take() {
                return Err(std::io::Error::other(reason));
            }
            conn.flush().await?;
        }
    }
    *conn_slot = Some(conn);
    Ok(())
}

/// What the worker's main task tells every user task: when the measured phase starts (`go`), how many broadcasts to
/// wait for (`expect`), and when to stop (`quit`).
#[derive(Clone)]
pub(super) struct Signals {
    pub(super) go: watch::Receiver<Option<u64>>,
    pub(super) expect: watch::Receiver<Option<u64>>,
    pub(super) quit: watch::Receiver<bool>,
}

/// One user's task: link (taking one of `permits` meanwhile), take part in the measured phase, and hand in exactly one
/// result (`None` when it never linked).
pub(super) async fn run(
    mut user: User,
    permits: Arc<Semaphore>,
    mut signals: Signals,
    results: mpsc::UnboundedSender<Option<UserResult>>,
) {
    let shared = user.shared.clone();
    let Ok(permit) = permits.acquire().await else { return };
    let linked = link_in_time(&mut user).await;
    drop(permit);
    let Some(mut conn) = linked else {
        shared.gone(user.index);
        if user.sender {
            shared.sender_done(0);
        }
        let _ = results.send(None);
        return;
    };
    let reported = user.take_part(&mut conn, &mut signals, &results).await;
    shared.gone(user.index);
    if user.sender && !user.sent_reported {
        user.sent_reported = true;
        shared.sender_done(user.sent);
    }
    if user.closed_by_server && !*signals.quit.borrow() {
        shared.disconnected.fetch_add(1, Ordering::SeqCst);
        shared.error(format!("u{}: the connection closed during the run", user.index));
    }
    if !reported {
        user.flush_samples();
        let _ = results.send(Some(user.result()));
    }
    conn.close().await;
}

/// Links `user` within the link timeout, and records how it went.
async fn link_in_time(user: &mut User) -> Option<Conn> {
    let shared = user.shared.clone();
    let spec = &shared.spec;
    let mut conn = None;
    let started = clock::since(spec.epoch);
    let timeout = Duration::from_millis(spec.link_timeout_ms);
    match tokio::time::timeout(timeout, link(user, &mut conn)).await {
        Ok(Ok(())) => shared.link_settled(Some((started, clock::since(spec.epoch)))),
        Ok(Err(error)) => {
            shared.error(format!("u{}: {error}", user.index));
            shared.link_settled(None);
        }
        Err(_) => {
            shared.error(format!("u{}: link timed out", user.index));
            shared.link_settled(None);
        }
    }
    conn
}

impl User {
    /// The measured phase on a linked connection, until `quit` or the connection ends: reads and counts what
    /// arrives, sends what is due, and hands in the result once finished. Returns whether it did.
    async fn take_part(
        &mut self,
        conn: &mut Conn,
        signals: &mut Signals,
        results: &mpsc::UnboundedSender<Option<UserResult>>,
    ) -> bool {
        let shared = self.shared.clone();
        let spec = &shared.spec;
        let mut scratch = Vec::with_capacity(128 + spec.pad);
        let mut reported = false;
        loop {
            let wake = if reported { None } else { self.next_wake() };
            let sleep_for = wake.map(|at| Duration::from_nanos(at.saturating_sub(clock::since(spec.epoch))));
            tokio::select! {
                biased;
                _ = signals.quit.changed() => break,
                _ = signals.go.changed(), if self.go.is_none() => self.go = *signals.go.borrow(),
                _ = signals.expect.changed(), if self.expect.is_none() => self.expect = *signals.expect.borrow(),
                read = conn.read_more() => if !self.on_read(conn, read) {
                    break;
                },
                () = tokio::time::sleep(sleep_for.unwrap_or(Duration::ZERO)), if sleep_for.is_some() => {}
            }
            self.queue_sends(conn, &mut scratch);
            if conn.has_output() && conn.flush().await.is_err() {
                self.closed_by_server = true;
                break;
            }
            self.report_sent();
            if !reported && self.finished() {
                reported = true;
                self.flush_samples();
                let _ = results.send(Some(self.result()));
            }
        }
        reported
    }

    /// Handles what a read gave: the frames it completed. False when the connection is over.
    fn on_read(&mut self, conn: &mut Conn, read: std::io::Result<usize>) -> bool {
        match read {
            Ok(0) | Err(_) => {
                self.closed_by_server = true;
                false
            }
            Ok(_) => {
                let parsed = conn.frames(|frame| match frame {
                    Incoming::Data(data) => self.on_frame(data),
                    Incoming::Closed => self.closed_by_server = true,
                });
                if let Err(error) = parsed {
                    self.shared.error(format!("u{}: {error}", self.index));
                    self.closed_by_server = true;
                }
                !self.closed_by_server
            }
        }
    }

    fn result(&self) -> UserResult {
        UserResult {
            sent: self.sent,
            received: self.received,
            in_window: self.in_window,
        }
    }
}
