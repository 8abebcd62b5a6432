//! The load generator: one process drives a range of simulated users, each on its own connection and task.
//!
//! The runner starts it with a [`Spec`] and talks to it in lines: the worker prints one JSON [`Report`] per phase on
//! stdout, and reads `go <start>` (start the measured phase at that clock value) and `quit` on stdin. It exits on
//! `quit`, when stdin closes, or at its deadline, whichever comes first.
//!
//! Phases: every user connects and links (at most `in_flight` at a time) → `linked`; then, when views are tracked,
//! every user's view of the user list is complete → `views`; then, after `go`, the senders send for `duration_ms`
//! and everyone counts what arrives → `result`.
//!
//! - [`spec`] and [`reports`]: what the runner and the worker tell each other;
//! - [`user`]: one simulated user and its task; [`parse`]: reading what the servers send;
//! - [`shared`]: what the users of one process share (counters, histograms, each sender's window);
//! - this module: the process, its commands and its phases.

pub(crate) mod parse;
mod reports;
mod shared;
mod spec;
mod user;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::hist::Histogram;
use reports::emit;
pub use reports::Report;
use shared::Shared;
pub use spec::Spec;
use user::{Signals, User, UserResult};

/// Runs a worker to completion. `spec` is the JSON of a [`Spec`].
pub fn main(spec: &str) -> Result<(), Box<dyn std::error::Error>> {
    let spec: Spec = serde_json::from_str(spec)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(spec))
}

async fn run(spec: Spec) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(spec.deadline_ms);
    let shared = Arc::new(Shared::new(&spec)?);
    tokio::spawn(shared.clone().share_progress());
    let (go_tx, go) = watch::channel(None);
    let (expect_tx, expect) = watch::channel(None);
    let (quit_tx, quit) = watch::channel(false);
    let signals = Signals { go, expect, quit };
    let (results_tx, mut results) = mpsc::unbounded_channel();
    obey_commands(go_tx, expect_tx, quit_tx);
    // The process ends by itself at its deadline, whatever happens.
    tokio::spawn(async move {
        tokio::time::sleep_until(deadline).await;
        eprintln!("worker: deadline reached; exiting");
        std::process::exit(3);
    });

    let permits = Arc::new(Semaphore::new(spec.in_flight.max(1) as usize));
    for index in spec.first..spec.first + spec.count {
        let user = User::new(index, shared.clone());
        tokio::spawn(user::run(user, permits.clone(), signals.clone(), results_tx.clone()));
    }
    drop(results_tx);
    let mut quit = signals.quit.clone();

    if !linking(&shared, &mut quit).await || (spec.track_views && !views(&shared, &mut quit).await) {
        return Ok(());
    }
    measured_phase(&shared, &signals, &mut quit, &mut results).await;
    // Give the connections a moment to close cleanly.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

/// Reads the runner's commands from stdin, on a task of its own: `go <start>`, `expect <count>`, `quit`. The end of
/// stdin (the runner went away) means quit.
fn obey_commands(go: watch::Sender<Option<u64>>, expect: watch::Sender<Option<u64>>, quit: watch::Sender<bool>) {
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut words = line.split_whitespace();
            match (words.next(), words.next().and_then(|at| at.parse::<u64>().ok())) {
                (Some("go"), Some(at)) => {
                    go.send_replace(Some(at));
                }
                (Some("expect"), Some(count)) => {
                    expect.send_replace(Some(count));
                }
                (Some("quit"), _) => break,
                _ => eprintln!("worker: unknown command {line:?}"),
            }
        }
        quit.send_replace(true);
    });
}

/// Phase 1: waits until every user linked or failed to, and reports it. False when told to quit first.
async fn linking(shared: &Shared, quit: &mut watch::Receiver<bool>) -> bool {
    let spec = &shared.spec;
    if spec.count > 0 {
        tokio::select! {
            () = shared.link_notify.notified() => {}
            _ = quit.wait_for(|quit| *quit) => return false,
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
    true
}

/// Phase 2, when views are tracked: waits until every user's view is complete (or the link timeout ran out), and
/// reports it. False when told to quit first.
async fn views(shared: &Shared, quit: &mut watch::Receiver<bool>) -> bool {
    let spec = &shared.spec;
    let views = async {
        if shared.views_complete.load(Ordering::SeqCst) < spec.count {
            shared.views_notify.notified().await;
        }
    };
    tokio::select! {
        () = views => {}
        () = tokio::time::sleep(Duration::from_millis(spec.link_timeout_ms)) => {}
        _ = quit.wait_for(|quit| *quit) => return false,
    }
    emit(&Report::Views {
        complete: shared.views_complete.load(Ordering::SeqCst),
        correct: shared.views_correct.load(Ordering::SeqCst),
        at: *shared.views_at.lock(),
    });
    true
}

/// Phase 3, once the runner says go: reports how many messages the senders sent once they stopped, then adds up the
/// users' results and reports them, and waits for `quit`.
async fn measured_phase(
    shared: &Shared,
    signals: &Signals,
    quit: &mut watch::Receiver<bool>,
    results: &mut mpsc::UnboundedReceiver<Option<UserResult>>,
) {
    // Once every local sender has stopped, say how many messages they sent.
    let senders_done = async {
        let mut go = signals.go.clone();
        let _ = go.wait_for(Option::is_some).await;
        if shared.senders_done.load(Ordering::SeqCst) < shared.local_senders() {
            shared.senders_notify.notified().await;
        }
    };
    tokio::select! {
        () = senders_done => emit(&Report::Sent { sent: shared.sent_total.load(Ordering::SeqCst) }),
        _ = quit.wait_for(|quit| *quit) => {}
    }
    let totals = collect_results(shared.spec.count, quit, results).await;
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
}

/// Adds up the results of `count` user tasks; every task hands in exactly one (`None` for a user that never linked).
/// Stops early when told to quit.
async fn collect_results(
    count: u32,
    quit: &mut watch::Receiver<bool>,
    results: &mut mpsc::UnboundedReceiver<Option<UserResult>>,
) -> UserResult {
    let mut totals = UserResult::default();
    let mut outstanding = count;
    while outstanding > 0 {
        tokio::select! {
            result = results.recv() => match result {
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
    totals
}
