//! Krmx State's journal on Redis: [`RedisJournal`] implements [`emitter_state::journal::Journal`], so a model's
//! domain has one owner at a time across every process attached to one cluster name, its changes are committed to
//! Redis before anything goes out, and every process follows them.
//!
//! ```no_run
//! use std::sync::Arc;
//! use emitter_redis::journal::{JournalOptions, RedisJournal};
//! use emitter_state::journal::{Journal, JournalModel};
//!
//! # async fn run(model: Arc<dyn JournalModel>) -> Result<(), Box<dyn std::error::Error>> {
//! let journal = RedisJournal::connect("redis://127.0.0.1/", "game", JournalOptions::default()).await?;
//! journal.attach("tally", model)?;
//! journal.loaded("tally").await?; // the replica holds what Redis had
//! // … serve; then, to hand the domains over at once rather than after a lease:
//! journal.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Keys
//!
//! Per domain `D`, under the cluster's hash tag (see the [crate docs](crate)): `state/D/owner` (the lease),
//! `state/D/generation` (its counter), `state/D/inbox` (requests), `state/D/log` (committed changes), `state/D/head`
//! (where the log is, the inbox cursor, the last membership seq handled, the newest checkpoint). Channel
//! `emitter:{N}:state`.
//!
//! # What each process does
//!
//! - **Submits** ([`Journal::submit`]) go through one queue and one task per journal, which sends them in pipelined
//!   `XADD`s to the domain's inbox: a process's requests reach the inbox in the order submitted. A full queue refuses
//!   at once ([`JournalError::Full`]). A batch whose reply is lost is not sent again (it may or may not be in the
//!   inbox: an unconfirmed request is kept or lost, never kept twice); it is counted and logged.
//! - **Owning**: each attached domain has a task that claims the lease whenever it is missing or past its deadline
//!   (by Redis's clock), renews it every third of [`JournalOptions::lease`], and while it holds it: makes the model's
//!   owner state ([`JournalModel::own`]) from head, executes the membership changes not yet handled and the inbox
//!   requests after the cursor, in batches of up to [`JournalOptions::batch`], and commits each batch with one
//!   script. The script refuses unless the lease is this one and alive, and head is where the owner left it; so a
//!   paused owner whose lease lapsed commits nothing, and nothing is consumed or committed twice. A commit whose
//!   reply is lost is resolved by reading head (committed by this generation at the expected place, or not at all)
//!   before anything else; a copy that Redis held and ran later is refused by the same check of head. A lost lease
//!   (a refused renewal or commit, or no renewal for four fifths of a lease by the local clock) stops execution at
//!   once and calls [`JournalModel::disown`].
//! - **Following**: every process (the owner too) reads the log after its replica's n, woken by the commit's
//!   notification and every [`JournalOptions::poll_interval`] anyway, and applies each change once, in order. If the
//!   log no longer continues from there (trimmed) or Redis is behind it (lost writes), it loads the replica again from
//!   head's checkpoint and the log after it ([`JournalModel::load`]).
//! - **Membership** ([`Journal::membership`]), told on every process, is kept in a ring of
//!   [`JournalOptions::membership_ring`] per domain; the owner executes those with a seq above the one head recorded,
//!   before the inbox requests it reads next. A new owner starts from its ring, so a change is handled once across a
//!   handover as long as the ring reaches back to head's seq. See [`MembershipSeqs`] for where seqs come from.
//!
//! # Faults
//!
//! - **Owner killed** (SIGKILL, a lost machine): its lease lapses within [`JournalOptions::lease`]; another process
//!   claims it, loads head and continues the inbox from the committed cursor. Nothing committed is lost or applied
//!   twice; requests the dead process had put in the inbox are executed; requests still in its queue are lost.
//! - **Owner paused** past its lease (GC, stopped VM, partition): its commits are refused, it disowns and follows.
//! - **Redis unreachable**: no commit, no submit (counted, logged); the owner's lease runs out locally, it stops
//!   executing; every process keeps its replica and resumes following when Redis is back.
//! - **Redis lost its data** (restart without persistence, failover to a lagging replica): a replica ahead of head,
//!   or following a history Redis no longer has (head's history name, given by the first commit, differs), loads
//!   again from what Redis has; the owner's next commit is refused (its lease or head is gone), and it starts over.
//! - **Restart of a single process** with Redis as its store: the same keys are there; the old lease was released by
//!   [`RedisJournal::close`], or lapses within a lease; the new process claims it and continues from head.

mod context;
mod follow;
mod owner;
mod scripts;
mod store;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use emitter_state::journal::{Journal, JournalError, JournalModel, MembershipChange, Request};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use crate::cluster::Cluster;
use crate::shared::Options;
use store::DomainKeys;

use context::Counters;
use context::{add, random_token, Ctx, Domain, Pending};
pub use context::{JournalOptions, JournalStats, MembershipSeqs};

type Domains = Arc<Mutex<HashMap<String, Arc<Domain>>>>;

/// A request on its way to its domain's inbox: the domain and the request's JSON.
type Queued = (Arc<Domain>, String);

/// The Redis [`Journal`]: see the [module docs](self). Made by [`RedisJournal::connect`] (a process on its own, using
/// Redis as its store) or [`Cluster::journal`] (a node of a cluster, sharing its connection). Dropping it stops its
/// tasks at once without releasing its leases (as a crash would: another process takes over after a lease);
/// [`close`](RedisJournal::close) releases them.
pub struct RedisJournal {
    ctx: Arc<Ctx>,
    domains: Domains,
    queue: Mutex<Option<mpsc::Sender<Queued>>>,
    close: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for RedisJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisJournal")
            .field("cluster", &self.ctx.cluster.name())
            .field("domains", &self.domains.lock().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Drop for RedisJournal {
    fn drop(&mut self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}

impl Cluster {
    /// A [`RedisJournal`] on this cluster's Redis and keys, sharing this handle's connection.
    pub async fn journal(&self, options: JournalOptions) -> RedisJournal {
        RedisJournal::start(self.clone(), options)
    }
}

impl RedisJournal {
    /// Connects to the Redis at `url` (as [`Cluster::connect`], with default [`Options`]) and starts a journal on
    /// the keys of cluster `name`. For one process that keeps its state in Redis: a restarted process with the same
    /// `url` and `name` resumes from what was committed.
    pub async fn connect(url: &str, name: &str, options: JournalOptions) -> crate::Result<RedisJournal> {
        let cluster = Cluster::connect(url, name, Options::default()).await?;
        Ok(RedisJournal::start(cluster, options))
    }

    fn start(cluster: Cluster, options: JournalOptions) -> RedisJournal {
        let (close, closing) = watch::channel(false);
        let ctx = Arc::new(Ctx {
            cluster,
            options,
            token: random_token(),
            closing,
            counters: Counters::default(),
        });
        let domains: Domains = Arc::default();
        let (queue, requests) = mpsc::channel(ctx.options.queue.max(1));
        let tasks = vec![
            tokio::spawn(send_requests(ctx.clone(), requests)),
            tokio::spawn(listen(ctx.clone(), domains.clone())),
        ];
        RedisJournal {
            ctx,
            domains,
            queue: Mutex::new(Some(queue)),
            close,
            tasks: Mutex::new(tasks),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Waits until `domain`'s replica is loaded; returns its n.
    pub async fn loaded(&self, domain: &str) -> Result<u64, JournalError> {
        let mut applied = self.domain(domain)?.applied.subscribe();
        let n = match applied.wait_for(Option::is_some).await {
            Ok(n) => Ok(n.unwrap_or(0)),
            Err(_) => Err(JournalError::Unavailable("the journal is closed".into())),
        };
        n
    }

    /// The n of `domain`'s replica here (the last change applied), or `None` before it is loaded or if it is not
    /// attached.
    pub fn applied(&self, domain: &str) -> Option<u64> {
        self.domains
            .lock()
            .get(domain)
            .and_then(|domain| *domain.applied.borrow())
    }

    /// Whether this process holds `domain`'s lease now.
    pub fn is_owner(&self, domain: &str) -> bool {
        self.domains
            .lock()
            .get(domain)
            .is_some_and(|domain| domain.owning.load(Ordering::SeqCst))
    }

    /// What the journal did so far.
    pub fn stats(&self) -> JournalStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let counters = &self.ctx.counters;
        JournalStats {
            submitted: get(&counters.submitted),
            submit_failures: get(&counters.submit_failures),
            queue_full: get(&counters.queue_full),
            commits: get(&counters.commits),
            leases_lost: get(&counters.leases_lost),
            reloads: get(&counters.reloads),
            lost_replies: get(&counters.lost_replies),
        }
    }

    /// Stops: sends the requests already queued, lets each owned domain finish its commit in progress and releases
    /// its lease (another process claims it at once), and stops following. Later calls are refused
    /// ([`JournalError::Unavailable`]).
    pub async fn close(&self) {
        let _ = self.close.send(true);
        self.queue.lock().take();
        let tasks: Vec<JoinHandle<()>> = self.tasks.lock().drain(..).collect();
        for task in tasks {
            let _ = task.await;
        }
    }

    fn domain(&self, domain: &str) -> Result<Arc<Domain>, JournalError> {
        self.domains
            .lock()
            .get(domain)
            .cloned()
            .ok_or_else(|| JournalError::Domain(format!("{domain:?} is not attached")))
    }
}

/// The longest domain name, in bytes.
const MAX_DOMAIN: usize = 200;

impl Journal for RedisJournal {
    fn attach(&self, domain: &str, model: Arc<dyn JournalModel>) -> Result<(), JournalError> {
        if domain.is_empty() || domain.len() > MAX_DOMAIN || domain.chars().any(char::is_control) {
            return Err(JournalError::Domain(format!(
                "{domain:?}: a domain is 1 to {MAX_DOMAIN} bytes without control characters"
            )));
        }
        if *self.close.borrow() {
            return Err(JournalError::Unavailable("the journal is closed".into()));
        }
        let attached = {
            let mut domains = self.domains.lock();
            if domains.contains_key(domain) {
                return Err(JournalError::Domain(format!("{domain:?} is attached already")));
            }
            let attached = Arc::new(Domain {
                keys: DomainKeys::new(self.ctx.cluster.name(), domain),
                model,
                work: Notify::new(),
                released: Notify::new(),
                committed: Notify::new(),
                ring: Mutex::new(VecDeque::new()),
                applied: watch::channel(None).0,
                owning: AtomicBool::new(false),
            });
            domains.insert(domain.to_owned(), attached.clone());
            attached
        };
        let mut tasks = self.tasks.lock();
        tasks.push(self.runtime.spawn(follow::follow(self.ctx.clone(), attached.clone())));
        tasks.push(self.runtime.spawn(owner::own(self.ctx.clone(), attached)));
        Ok(())
    }

    fn submit(&self, domain: &str, request: Request) -> Result<(), JournalError> {
        let attached = self.domain(domain)?;
        let text = serde_json::to_string(&request).map_err(|error| JournalError::Unavailable(error.to_string()))?;
        let queue = self.queue.lock().clone();
        let Some(queue) = queue else {
            return Err(JournalError::Unavailable("the journal is closed".into()));
        };
        match queue.try_send((attached, text)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                add(&self.ctx.counters.queue_full, 1);
                Err(JournalError::Full)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(JournalError::Unavailable("the journal's queue is gone".into()))
            }
        }
    }

    fn membership(&self, domain: &str, seq: u64, change: MembershipChange, user: &str) {
        let Ok(attached) = self.domain(domain) else {
            return;
        };
        {
            let mut ring = attached.ring.lock();
            if ring.len() >= self.ctx.options.membership_ring.max(1) {
                ring.pop_front();
            }
            ring.push_back(Pending {
                seq,
                change,
                user: user.to_owned(),
            });
        }
        attached.work.notify_one();
    }
}

/// How many queued requests the sending task puts in one pipeline.
const SEND_BATCH: usize = 256;

/// Sends the queued requests in order, pipelining what has piled up, and tells the owners. Not sent again when a
/// batch fails: it may have reached the inbox (see the module docs).
async fn send_requests(ctx: Arc<Ctx>, mut requests: mpsc::Receiver<Queued>) {
    let mut conn = ctx.cluster.conn.clone();
    let mut batch = Vec::with_capacity(SEND_BATCH);
    while requests.recv_many(&mut batch, SEND_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        let mut told: Vec<&str> = Vec::new();
        for (domain, text) in &batch {
            pipe.cmd("XADD")
                .arg(domain.keys.inbox())
                .arg("*")
                .arg("r")
                .arg(text)
                .ignore();
            if !told.contains(&domain.keys.domain.as_str()) {
                told.push(&domain.keys.domain);
            }
        }
        let channel = store::channel(ctx.cluster.name());
        for domain in told {
            pipe.cmd("PUBLISH").arg(&channel).arg(format!("i {domain}")).ignore();
        }
        let count = batch.len() as u64;
        match pipe.query_async::<()>(&mut conn).await {
            Ok(()) => add(&ctx.counters.submitted, count),
            Err(error) => {
                add(&ctx.counters.submit_failures, count);
                tracing::warn!(
                    cluster = ctx.cluster.name(),
                    %error,
                    lost = count,
                    "sending requests to the journal failed; dropped"
                );
            }
        }
        batch.clear();
    }
}

/// Follows the journal's channel and wakes the domains it names; after every (re)subscription wakes them all (what
/// was published meanwhile is not lost: the tasks read Redis when woken, and poll anyway).
async fn listen(ctx: Arc<Ctx>, domains: Domains) {
    use futures_util::StreamExt;
    let channel = store::channel(ctx.cluster.name());
    let mut backoff = Duration::from_millis(20);
    let mut closing = ctx.closing.clone();
    loop {
        let subscribed = async {
            let mut pubsub = ctx.cluster.shared.endpoint.client().get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let limit = ctx.cluster.options().connect_timeout + ctx.cluster.options().command_timeout;
        match tokio::time::timeout(limit, subscribed).await {
            Ok(Ok(pubsub)) => {
                backoff = Duration::from_millis(20);
                for domain in domains.lock().values() {
                    domain.committed.notify_one();
                    domain.work.notify_one();
                    domain.released.notify_one();
                }
                let mut messages = pubsub.into_on_message();
                loop {
                    let message = tokio::select! {
                        message = messages.next() => message,
                        _ = closing.wait_for(|closing| *closing) => return,
                    };
                    let Some(message) = message else { break };
                    let Ok(text) = message.get_payload::<String>() else {
                        continue;
                    };
                    let (kind, rest) = text.split_once(' ').unwrap_or((&text, ""));
                    let name = match kind {
                        "l" => rest.split_once(' ').map_or("", |(_, domain)| domain),
                        _ => rest,
                    };
                    let Some(domain) = domains.lock().get(name).cloned() else {
                        continue;
                    };
                    match kind {
                        "l" => domain.committed.notify_one(),
                        "i" => domain.work.notify_one(),
                        "o" => domain.released.notify_one(),
                        _ => {}
                    }
                }
                tracing::warn!(cluster = ctx.cluster.name(), "the journal's subscription dropped");
            }
            Ok(Err(error)) => tracing::warn!(cluster = ctx.cluster.name(), %error, "subscribing to the journal failed"),
            Err(_) => tracing::warn!(cluster = ctx.cluster.name(), "subscribing to the journal timed out"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = closing.wait_for(|closing| *closing) => return,
        }
        backoff = (backoff * 2).min(ctx.cluster.options().connect_timeout);
    }
}
