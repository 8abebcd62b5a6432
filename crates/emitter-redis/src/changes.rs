//! A node's change queue: the one task that sends the node's membership changes to Redis in the order they were
//! queued, many per round trip (a pipeline of submit scripts), and hands each answer to whoever waits for it.
//!
//! One round trip carries the batch as a pipeline of `submit_many` script calls, one per run of changes made with the
//! same lease (usually one): each script decides its changes one after the other, exactly as that many `submit` calls
//! would, reading the epoch and the clock once and telling the other nodes once.
//!
//! Nothing waits on Redis but this task: a change is queued without blocking, and its answer is a future. A full
//! queue refuses a change at once ([`Error::ChangeQueueFull`]), and so does a Redis that failed a batch a moment ago
//! ([`Error::BackingOff`], for [`Options::change_backoff`](crate::Options::change_backoff)): a change never waits
//! behind a Redis that is away. Redis runs the scripts of one connection in the order sent, so the node's changes are
//! decided in the order queued; several per round trip is what cuts Redis's CPU per change (one read and one write
//! of the socket for the whole batch).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use redis::{RedisResult, Value};
use tokio::sync::{mpsc, oneshot};

use crate::sentinel::Conn;
use crate::shared::{Call, Counters, Shared};
use crate::types::{Change, Error, LogEntry, NodeLease, Result};

/// The most changes one round trip carries: a closing node with 1,000 users unlinks them in two.
pub(crate) const MAX_BATCH: usize = 500;

/// One queued change, the lease it is made with, and where its answer goes.
struct Request {
    lease: NodeLease,
    change: Change,
    answer: oneshot::Sender<Result<Vec<LogEntry>>>,
}

/// The answer to one queued change: refused at once, or to come from the queue's task.
pub(crate) enum Answer {
    Now(Result<Vec<LogEntry>>),
    Later(oneshot::Receiver<Result<Vec<LogEntry>>>),
}

impl Answer {
    /// Waits for the answer.
    pub(crate) async fn wait(self) -> Result<Vec<LogEntry>> {
        match self {
            Answer::Now(answer) => answer,
            // The task is gone (its runtime shut down) with the change unsent or unanswered.
            Answer::Later(answer) => answer.await.unwrap_or(Err(Error::Closed)),
        }
    }
}

/// The handle on a node's change queue: cheap to clone, never blocks.
#[derive(Clone)]
pub(crate) struct ChangeQueue {
    queue: mpsc::Sender<Vec<Request>>,
    shared: Arc<Shared>,
    /// Until when changes are refused at once, after Redis failed a batch.
    backoff: Arc<Mutex<Option<Instant>>>,
}

impl ChangeQueue {
    /// Starts the queue's task on its own connection (so its scripts are not queued behind the node's other calls).
    /// Needs a tokio runtime.
    pub(crate) fn start(shared: Arc<Shared>, conn: Conn) -> ChangeQueue {
        let (queue, requests) = mpsc::channel(shared.options.change_queue.max(1));
        let backoff = Arc::new(Mutex::new(None));
        tokio::spawn(run(conn, requests, shared.clone(), backoff.clone()));
        ChangeQueue { queue, shared, backoff }
    }

    /// Queues `changes`, in `lease`'s name, to be decided together in this order after everything queued before;
    /// returns their answers in the same order.
    pub(crate) fn submit(&self, lease: &NodeLease, changes: Vec<Change>) -> Vec<Answer> {
        let counters = &self.shared.counters;
        let refuse =
            |changes: Vec<Change>, error: fn() -> Error| changes.iter().map(|_| Answer::Now(Err(error()))).collect();
        if backing_off(&self.backoff) {
            Counters::add(&counters.changes_backed_off, changes.len() as u64);
            return refuse(changes, || Error::BackingOff);
        }
        let count = changes.len() as u64;
        let mut answers = Vec::with_capacity(changes.len());
        let requests = changes
            .iter()
            .map(|change| {
                let (answer, waiter) = oneshot::channel();
                answers.push(Answer::Later(waiter));
                Request {
                    lease: lease.clone(),
                    change: change.clone(),
                    answer,
                }
            })
            .collect();
        match self.queue.try_send(requests) {
            Ok(()) => answers,
            Err(mpsc::error::TrySendError::Full(_)) => {
                Counters::add(&counters.change_queue_full, count);
                tracing::warn!(
                    cluster = self.shared.name,
                    count,
                    "the change queue is full: changes refused"
                );
                refuse(changes, || Error::ChangeQueueFull)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => refuse(changes, || Error::Closed),
        }
    }
}

fn backing_off(backoff: &Mutex<Option<Instant>>) -> bool {
    let mut until = backoff.lock();
    match *until {
        Some(end) if Instant::now() < end => true,
        Some(_) => {
            *until = None;
            false
        }
        None => false,
    }
}

/// The queue's task: takes what is queued, sends up to [`MAX_BATCH`] changes per pipeline, in order, and answers each.
async fn run(
    mut conn: Conn,
    mut requests: mpsc::Receiver<Vec<Request>>,
    shared: Arc<Shared>,
    backoff: Arc<Mutex<Option<Instant>>>,
) {
    let mut groups = Vec::new();
    let mut waiting: VecDeque<Request> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            if requests.recv_many(&mut groups, MAX_BATCH).await == 0 {
                return;
            }
        } else {
            // More may have come in while the last batch was out: take them without waiting.
            while groups.len() < MAX_BATCH {
                match requests.try_recv() {
                    Ok(group) => groups.push(group),
                    Err(_) => break,
                }
            }
        }
        waiting.extend(groups.drain(..).flatten());
        if backing_off(&backoff) {
            // Queued before Redis failed: refused now rather than sent to a Redis that is away.
            Counters::add(&shared.counters.changes_backed_off, waiting.len() as u64);
            for request in waiting.drain(..) {
                let _ = request.answer.send(Err(Error::BackingOff));
            }
            continue;
        }
        let batch: Vec<Request> = waiting.drain(..waiting.len().min(MAX_BATCH)).collect();
        if let Err(error) = send(&mut conn, &shared, batch).await {
            tracing::warn!(cluster = shared.name, %error, "redis failed a batch of membership changes: backing off");
            *backoff.lock() = Some(Instant::now() + shared.options.change_backoff);
        }
    }
}

/// Sends one batch as one pipeline and answers each change. An error means the round trip failed: every change of
/// the batch was answered with it (their outcome is unknown: the log tells).
async fn send(conn: &mut Conn, shared: &Shared, batch: Vec<Request>) -> RedisResult<()> {
    Counters::add(&shared.counters.change_batches, 1);
    Counters::add(&shared.counters.changes_sent, batch.len() as u64);
    // Runs of changes made with the same lease: one script call each.
    let mut runs: Vec<Vec<Request>> = Vec::new();
    for request in batch {
        match runs.last_mut() {
            Some(run) if run[0].lease == request.lease => run.push(request),
            _ => runs.push(vec![request]),
        }
    }
    let calls: Vec<Call> = runs
        .iter()
        .map(|run| shared.submit_many_call(&run[0].lease, run.iter().map(|request| &request.change)))
        .collect();
    let mut replies = match pipeline(conn, shared, &calls.iter().collect::<Vec<_>>()).await {
        Ok(replies) => replies,
        Err(error) => {
            for request in runs.into_iter().flatten() {
                let _ = request.answer.send(Err(Error::Redis(error.clone())));
            }
            return Err(error);
        }
    };
    // Redis lost its scripts (it restarted, or SCRIPT FLUSH): load the script and send those calls again. Each is
    // still decided atomically; only if another node loaded the script in the middle of this batch can a call sent
    // again be decided after one queued behind it (right after a Redis restart, where the log tells anyway).
    let missing: Vec<usize> = (0..calls.len())
        .filter(|&i| matches!(&replies[i], Err(error) if error.code() == Some("NOSCRIPT")))
        .collect();
    if let Some(&first) = missing.first() {
        calls[first].load(conn).await?;
        let again: Vec<&Call> = missing.iter().map(|&i| &calls[i]).collect();
        let resent = pipeline(conn, shared, &again).await?;
        for (i, reply) in missing.into_iter().zip(resent) {
            replies[i] = reply;
        }
    }
    for (run, reply) in runs.into_iter().zip(replies) {
        let users: Vec<&str> = run.iter().map(|request| request.change.user()).collect();
        let epoch = run[0].lease.epoch.clone();
        let answers = reply
            .map_err(Error::Redis)
            .and_then(|value| shared.submit_many_result(epoch.as_str(), value, &users));
        match answers {
            Ok(answers) => {
                for (request, answer) in run.into_iter().zip(answers) {
                    let _ = request.answer.send(answer);
                }
            }
            Err(error) => {
                // One refusal for the whole run (the epoch changed), or a reply this crate cannot read.
                let text = error.to_string();
                let refusal = error.refusal().cloned();
                for request in run {
                    let answer = match &refusal {
                        Some(refusal) => Error::Refused(refusal.clone()),
                        None => Error::Malformed(text.clone()),
                    };
                    let _ = request.answer.send(Err(answer));
                }
            }
        }
    }
    Ok(())
}

/// One round trip: the calls, each answered on its own (one failing does not fail the others).
async fn pipeline(conn: &mut Conn, shared: &Shared, calls: &[&Call]) -> RedisResult<Vec<RedisResult<Value>>> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for call in calls {
        pipe.add_command(call.evalsha(&shared.keys));
    }
    let replies: Vec<RedisResult<Value>> = pipe.query_async(conn).await?;
    if replies.len() != calls.len() {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Parse,
            "a pipeline of membership changes",
            format!("{} replies to {} calls", replies.len(), calls.len()),
        )));
    }
    Ok(replies)
}
