//! `RedisJournal` against a real Redis: several journals ("nodes") in one test process, each with its own token and
//! connection, and a small counting model that records everything the journal asks of it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use emitter_redis::journal::{JournalOptions, MembershipSeqs, RedisJournal};
use emitter_state::journal::{Checkpoint, Committed, Journal, JournalError, JournalModel, MembershipChange, Request};
use emitter_testing::redis::RedisServer;
use emitter_testing::redis_or_skip;
use parking_lot::Mutex;
use serde_json::{json, Value};

const DOMAIN: &str = "counter";

/// A model whose state is the list of every change committed so far: `add <k> <id>` requests become
/// `{"id", "user", "add", "total"}`, membership changes `{"seq", "change", "user"}`; anything else is dropped.
#[derive(Default)]
struct Counter {
    /// The owner's state, while this node owns the domain.
    owner: Mutex<Option<Vec<Value>>>,
    /// The replica: every committed change, from the first.
    replica: Mutex<Vec<Value>>,
    /// `own`, `disown`, `load` in the order they were called.
    calls: Mutex<Vec<String>>,
    /// While set, `checkpoint` blocks until the sender says go (a paused owner).
    hold: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    /// While set, `apply` blocks until the sender says go (a paused follower).
    hold_apply: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    /// Whether `checkpoint` gives one (after every batch) or none.
    checkpoints: std::sync::atomic::AtomicBool,
}

impl Counter {
    fn new(checkpoints: bool) -> Arc<Counter> {
        Arc::new(Counter {
            checkpoints: checkpoints.into(),
            ..Counter::default()
        })
    }

    fn history(&self) -> Vec<Value> {
        self.replica.lock().clone()
    }

    fn ids(&self) -> Vec<String> {
        self.history()
            .iter()
            .filter_map(|change| change.get("id").and_then(Value::as_str).map(str::to_owned))
            .collect()
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().clone()
    }

    fn state_from(checkpoint: Option<&Checkpoint>, after: &[Committed]) -> Result<Vec<Value>, String> {
        let mut state = match checkpoint {
            Some(checkpoint) => serde_json::from_value(checkpoint.state.clone()).map_err(|error| error.to_string())?,
            None => Vec::new(),
        };
        let first = checkpoint.map_or(0, |checkpoint| checkpoint.n) + 1;
        for (i, committed) in after.iter().enumerate() {
            if committed.n != first + i as u64 {
                return Err(format!("change {} where {} was due", committed.n, first + i as u64));
            }
            state.push(committed.change.clone());
        }
        Ok(state)
    }
}

impl JournalModel for Counter {
    fn own(&self, checkpoint: Option<&Checkpoint>, after: &[Committed]) -> Result<(), String> {
        *self.owner.lock() = Some(Counter::state_from(checkpoint, after)?);
        self.calls.lock().push("own".into());
        Ok(())
    }

    fn execute(&self, request: &Request) -> Option<Value> {
        let mut owner = self.owner.lock();
        let state = owner.as_mut()?;
        let change = match request {
            Request::Message { user, text } => {
                let mut words = text.split(' ');
                let (Some("add"), Some(k), Some(id)) = (words.next(), words.next(), words.next()) else {
                    return None;
                };
                let k: u64 = k.parse().ok()?;
                let before = state.iter().rev().find_map(|c| c.get("total").and_then(Value::as_u64));
                let total = before.unwrap_or(0) + k;
                json!({"id": id, "user": user, "add": k, "total": total})
            }
            Request::Membership { seq, change, user } => json!({"seq": seq, "change": change, "user": user}),
        };
        state.push(change.clone());
        Some(change)
    }

    fn checkpoint(&self) -> Option<Value> {
        let hold = self.hold.lock().take();
        if let Some(hold) = hold {
            let _ = hold.recv();
        }
        let owner = self.owner.lock();
        let state = owner.as_ref()?;
        self.checkpoints
            .load(std::sync::atomic::Ordering::SeqCst)
            .then(|| json!(state))
    }

    fn disown(&self) {
        *self.owner.lock() = None;
        self.calls.lock().push("disown".into());
    }

    fn load(&self, checkpoint: Option<&Checkpoint>, after: &[Committed]) -> Result<(), String> {
        *self.replica.lock() = Counter::state_from(checkpoint, after)?;
        self.calls
            .lock()
            .push(format!("load {}", checkpoint.map_or(0, |c| c.n)));
        Ok(())
    }

    fn apply(&self, committed: &Committed) {
        let hold = self.hold_apply.lock().take();
        if let Some(hold) = hold {
            let _ = hold.recv();
        }
        let mut replica = self.replica.lock();
        assert_eq!(committed.n, replica.len() as u64 + 1, "applied out of order");
        replica.push(committed.change.clone());
    }
}

fn options() -> JournalOptions {
    JournalOptions {
        lease: Duration::from_secs(1),
        poll_interval: Duration::from_millis(100),
        ..JournalOptions::default()
    }
}

async fn journal(redis: &RedisServer, cluster: &str, options: JournalOptions) -> RedisJournal {
    RedisJournal::connect(&redis.url(), cluster, options)
        .await
        .expect("connect")
}

/// A journal with a counter attached, its replica loaded.
async fn node(redis: &RedisServer, cluster: &str, options: JournalOptions) -> (RedisJournal, Arc<Counter>) {
    let journal = journal(redis, cluster, options).await;
    let model = Counter::new(false);
    journal.attach(DOMAIN, model.clone()).expect("attach");
    tokio::time::timeout(Duration::from_secs(5), journal.loaded(DOMAIN))
        .await
        .expect("loaded in time")
        .expect("loaded");
    (journal, model)
}

fn add(journal: &RedisJournal, user: &str, k: u64, id: &str) {
    journal
        .submit(
            DOMAIN,
            Request::Message {
                user: user.into(),
                text: format!("add {k} {id}"),
            },
        )
        .expect("submit");
}

/// Waits until `check` holds, polling: what a journal's background tasks do is told to no one. Bounded.
async fn eventually(what: &str, limit: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const WAIT: Duration = Duration::from_secs(10);

/// Every id once, and each submitter's ids (`<submitter>-<k>`) in the order it sent them.
fn assert_once_and_in_order(ids: &[String]) {
    let mut seen = HashMap::new();
    for id in ids {
        assert!(seen.insert(id.clone(), ()).is_none(), "{id} committed twice: {ids:?}");
    }
    let mut last: HashMap<&str, u64> = HashMap::new();
    for id in ids {
        let (submitter, k) = id.rsplit_once('-').expect("ids are <submitter>-<k>");
        let k: u64 = k.parse().expect("k");
        if let Some(before) = last.insert(submitter, k) {
            assert!(before < k, "{submitter}'s {k} came after its {before}: {ids:?}");
        }
    }
}

#[tokio::test]
async fn one_owner_executes_what_every_node_submits_and_every_node_applies_it_in_one_order() {
    let redis = redis_or_skip!();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(node(&redis, "order", options()).await);
    }
    eventually("one node owns the domain", WAIT, || {
        nodes.iter().any(|(j, _)| j.is_owner(DOMAIN))
    })
    .await;
    for round in 0..40 {
        for (i, (journal, _)) in nodes.iter().enumerate() {
            add(journal, &format!("u{i}"), 1, &format!("n{i}-{round}"));
        }
        let owners = nodes.iter().filter(|(j, _)| j.is_owner(DOMAIN)).count();
        assert_eq!(owners, 1, "one owner at a time");
    }
    for (journal, model) in &nodes {
        eventually("every node applied all 120 changes", WAIT, || {
            model.history().len() == 120
        })
        .await;
        assert_eq!(journal.applied(DOMAIN), Some(120));
    }
    let first = nodes[0].1.history();
    for (_, model) in &nodes[1..] {
        assert_eq!(model.history(), first, "every replica holds the same sequence");
    }
    assert_once_and_in_order(&nodes[0].1.ids());
    // The owner's totals: each change saw every change before it.
    let totals: Vec<u64> = first.iter().map(|c| c["total"].as_u64().unwrap()).collect();
    assert_eq!(totals, (1..=120).collect::<Vec<u64>>());
    // Requests submitted on the nodes that did not own the domain were executed too.
    for i in 0..3 {
        assert!(nodes[0].1.ids().contains(&format!("n{i}-39")));
    }
}

#[tokio::test]
async fn when_the_owner_dies_another_node_takes_over_and_nothing_is_lost_or_doubled() {
    let redis = redis_or_skip!();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(node(&redis, "handover", options()).await);
    }
    eventually("one node owns the domain", WAIT, || {
        nodes.iter().any(|(j, _)| j.is_owner(DOMAIN))
    })
    .await;
    let owner = nodes.iter().position(|(j, _)| j.is_owner(DOMAIN)).unwrap();
    let (dead, dead_model) = nodes.remove(owner);
    for k in 0..20 {
        add(&dead, "doomed", 1, &format!("dead-{k}"));
        for (i, (journal, _)) in nodes.iter().enumerate() {
            add(journal, &format!("u{i}"), 1, &format!("s{i}-{k}"));
        }
    }
    // Its requests reached the inbox; then it dies without releasing anything, possibly mid-batch.
    eventually("the owner sent its requests", WAIT, || dead.stats().submitted == 20).await;
    drop(dead);
    let before = dead_model.history().len();
    for k in 20..40 {
        for (i, (journal, _)) in nodes.iter().enumerate() {
            add(journal, &format!("u{i}"), 1, &format!("s{i}-{k}"));
        }
    }
    eventually("a survivor owns the domain", WAIT, || {
        nodes.iter().any(|(j, _)| j.is_owner(DOMAIN))
    })
    .await;
    for (_, model) in &nodes {
        eventually("every survivor applied all 100 changes", WAIT, || {
            model.history().len() == 100
        })
        .await;
    }
    assert_eq!(nodes[0].1.history(), nodes[1].1.history());
    let ids = nodes[0].1.ids();
    assert_once_and_in_order(&ids);
    for k in 0..20 {
        assert!(
            ids.contains(&format!("dead-{k}")),
            "the dead owner's request dead-{k} was executed"
        );
    }
    assert!(before <= 100);
    let totals: Vec<u64> = nodes[0]
        .1
        .history()
        .iter()
        .map(|c| c["total"].as_u64().unwrap())
        .collect();
    assert_eq!(
        totals,
        (1..=100).collect::<Vec<u64>>(),
        "the new owner continued from the committed state"
    );
}

/// A node on a runtime of its own, on one thread: blocking its model (in `checkpoint`) pauses everything it does, its
/// renewals too, as a stopped process is paused. Stops when `stop` is sent or dropped.
struct PausableNode {
    journal: Arc<RedisJournal>,
    model: Arc<Counter>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PausableNode {
    fn start(redis: &RedisServer, cluster: &str) -> PausableNode {
        PausableNode::start_with(redis, cluster, emitter_redis::Options::default(), options())
    }

    /// With these options for its connection and its journal.
    fn start_with(
        redis: &RedisServer,
        cluster: &str,
        connection: emitter_redis::Options,
        options: JournalOptions,
    ) -> PausableNode {
        let (started, start) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (url, cluster) = (redis.url(), cluster.to_owned());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let handle = emitter_redis::Cluster::connect(&url, &cluster, connection)
                    .await
                    .unwrap();
                let journal = Arc::new(handle.journal(options).await);
                let model = Counter::new(false);
                journal.attach(DOMAIN, model.clone()).unwrap();
                started.send((journal.clone(), model)).unwrap();
                let _ = stopped.await;
            });
        });
        let (journal, model) = start.recv_timeout(WAIT).expect("the node started");
        PausableNode {
            journal,
            model,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Makes its next `checkpoint` (after executing a batch, before committing it) block until the sender says go.
    fn pause_before_commit(&self) -> std::sync::mpsc::Sender<()> {
        let (go, hold) = std::sync::mpsc::channel();
        *self.model.hold.lock() = Some(hold);
        go
    }

    /// Makes its next `apply` block until the sender says go.
    fn pause_before_apply(&self) -> std::sync::mpsc::Sender<()> {
        let (go, hold) = std::sync::mpsc::channel();
        *self.model.hold_apply.lock() = Some(hold);
        go
    }

    fn paused(&self) -> bool {
        self.model.hold.lock().is_none()
    }
}

impl Drop for PausableNode {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[tokio::test]
async fn a_paused_owner_whose_lease_lapsed_is_fenced() {
    let redis = redis_or_skip!();
    let p = PausableNode::start(&redis, "paused");
    eventually("p owns the domain", WAIT, || p.journal.is_owner(DOMAIN)).await;
    let b = PausableNode::start(&redis, "paused");
    add(&b.journal, "u", 1, "a-0");
    eventually("p committed a-0", WAIT, || b.model.ids() == ["a-0"]).await;

    // p executes a-1 and pauses before committing it, past its lease; b takes the lapsed lease, executes a-1 too,
    // and pauses before committing: head is still where p left it, so only the lease can refuse p's commit.
    let p_go = p.pause_before_commit();
    let b_go = b.pause_before_commit();
    add(&b.journal, "u", 1, "a-1");
    eventually("p paused with a-1 executed", WAIT, || p.paused()).await;
    eventually("b took the lapsed lease and paused with a-1 executed", WAIT, || {
        b.paused()
    })
    .await;
    assert!(b.journal.is_owner(DOMAIN));

    p_go.send(()).unwrap();
    eventually("p's commit was refused", WAIT, || p.journal.stats().leases_lost == 1).await;
    eventually("p disowned", WAIT, || {
        p.model.calls().last().map(String::as_str) == Some("disown")
    })
    .await;
    assert_eq!(p.journal.stats().commits, 1, "p committed a-0 only");
    assert_eq!(p.model.ids(), ["a-0"]);

    b_go.send(()).unwrap();
    add(&b.journal, "u", 1, "a-2");
    for node in [&p, &b] {
        eventually("every node applied b's commits", WAIT, || {
            node.model.ids() == ["a-0", "a-1", "a-2"]
        })
        .await;
    }
    assert_eq!(b.journal.stats().leases_lost, 0);
    let totals: Vec<u64> = b.model.history().iter().map(|c| c["total"].as_u64().unwrap()).collect();
    assert_eq!(totals, [1, 2, 3]);
}

#[tokio::test]
async fn a_commit_whose_reply_is_lost_is_committed_once() {
    let redis = redis_or_skip!();
    let connection = emitter_redis::Options {
        command_timeout: Duration::from_millis(150),
        ..emitter_redis::Options::default()
    };
    let options = JournalOptions {
        lease: Duration::from_secs(5),
        ..options()
    };
    let p = PausableNode::start_with(&redis, "lost", connection, options);
    eventually("p owns the domain", WAIT, || p.journal.is_owner(DOMAIN)).await;
    add(&p.journal, "u", 1, "l-0");
    eventually("p committed l-0", WAIT, || p.model.ids() == ["l-0"]).await;

    // p executes l-1 and waits; Redis holds every write for longer than p waits for a reply; p commits: the reply
    // is lost (a timeout), the script runs when the pause ends. p reads head, and may send it again: once only.
    let go = p.pause_before_commit();
    add(&p.journal, "u", 1, "l-1");
    eventually("p paused with l-1 executed", WAIT, || p.paused()).await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(600)
        .arg("WRITE")
        .query(&mut redis.admin())
        .unwrap();
    go.send(()).unwrap();
    eventually("p committed l-1", WAIT, || p.model.ids() == ["l-0", "l-1"]).await;
    assert!(p.journal.stats().lost_replies >= 1, "the reply was lost");
    assert_eq!(
        p.journal.stats().leases_lost,
        0,
        "the copies sent again were judged by head, not taken for a loss"
    );
    add(&p.journal, "u", 1, "l-2");
    eventually("p committed l-2", WAIT, || p.model.ids().len() == 3).await;
    assert_eq!(p.model.ids(), ["l-0", "l-1", "l-2"]);
    let totals: Vec<u64> = p.model.history().iter().map(|c| c["total"].as_u64().unwrap()).collect();
    assert_eq!(totals, [1, 2, 3]);
}

#[tokio::test]
async fn a_follower_left_behind_by_trimming_loads_the_checkpoint_and_follows_on() {
    let redis = redis_or_skip!();
    let options = JournalOptions {
        log_retention: 1,
        ..options()
    };
    let owner = journal(&redis, "behind", options).await;
    let model = Counter::new(true);
    owner.attach(DOMAIN, model.clone()).unwrap();
    eventually("the first node owns the domain", WAIT, || owner.is_owner(DOMAIN)).await;
    let follower = PausableNode::start(&redis, "behind");
    follower.journal.loaded(DOMAIN).await.unwrap();
    add(&owner, "u", 1, "f-0");
    eventually("the follower applied f-0", WAIT, || follower.model.ids() == ["f-0"]).await;

    // The follower stops in its next apply; meanwhile the owner commits in several batches, each with a checkpoint
    // that trims the log to its newest entry.
    let go = follower.pause_before_apply();
    add(&owner, "u", 1, "f-1");
    eventually("the follower paused in apply", WAIT, || {
        follower.model.hold_apply.lock().is_none()
    })
    .await;
    for k in 2..6 {
        let n = k as u64;
        add(&owner, "u", 1, &format!("f-{k}"));
        eventually("the owner committed it", WAIT, || owner.applied(DOMAIN) == Some(n + 1)).await;
    }
    go.send(()).unwrap();
    let all: Vec<String> = (0..6).map(|k| format!("f-{k}")).collect();
    eventually("the follower caught up", WAIT, || follower.model.ids() == all).await;
    assert_eq!(follower.journal.stats().reloads, 1, "it loaded the checkpoint once");
    assert!(follower
        .model
        .calls()
        .iter()
        .any(|call| call.starts_with("load ") && call != "load 0"));
    assert_eq!(follower.model.history(), model.history());
}

#[tokio::test]
async fn when_redis_loses_its_data_every_node_starts_again_from_what_it_has() {
    let mut redis = redis_or_skip!();
    let (a, a_model) = node(&redis, "amnesia", options()).await;
    eventually("a owns the domain", WAIT, || a.is_owner(DOMAIN)).await;
    let f = PausableNode::start(&redis, "amnesia");
    for k in 0..3 {
        add(&a, "u", 1, &format!("old-{k}"));
    }
    eventually("f applied three changes", WAIT, || f.model.history().len() == 3).await;
    // f stops while applying a fourth change of the old history.
    let go = f.pause_before_apply();
    add(&a, "u", 1, "old-3");
    eventually("f paused in apply", WAIT, || f.model.hold_apply.lock().is_none()).await;

    // Redis restarts without persistence: head, log, lease, all gone; a starts a new history that reaches past
    // where f is, so only the history's name tells f that the log it followed is gone.
    redis.restart_empty();
    eventually("a loaded the empty state", WAIT, || {
        a.stats().reloads >= 1 && a_model.history().is_empty()
    })
    .await;
    for k in 0..5 {
        add(&a, "u", 1, &format!("new-{k}"));
    }
    let new: Vec<String> = (0..5).map(|k| format!("new-{k}")).collect();
    eventually("a committed and applied the new history", WAIT, || a_model.ids() == new).await;
    assert_eq!(
        a_model.history()[0]["total"],
        1,
        "the owner started again from the empty state"
    );

    go.send(()).unwrap();
    eventually("f follows the new history", WAIT, || f.model.ids() == new).await;
    assert!(f.journal.stats().reloads >= 1);
    assert_eq!(f.model.history(), a_model.history());
}

#[tokio::test]
async fn a_restarted_process_resumes_from_what_it_committed() {
    let redis = redis_or_skip!();
    let options = JournalOptions {
        membership: MembershipSeqs::Process,
        log_retention: 2,
        ..options()
    };
    // First run: a checkpoint with each batch of the first ten changes (the log keeps only 2 entries below the
    // newest one), then none.
    let first = journal(&redis, "store", options.clone()).await;
    let model = Counter::new(true);
    first.attach(DOMAIN, model.clone()).unwrap();
    for k in 0..10 {
        add(&first, "u", 1, &format!("r-{k}"));
    }
    eventually("the first run committed ten changes", WAIT, || {
        model.history().len() == 10
    })
    .await;
    model.checkpoints.store(false, std::sync::atomic::Ordering::SeqCst);
    first.membership(DOMAIN, 1, MembershipChange::Join, "u");
    eventually("the first run committed everything", WAIT, || {
        model.history().len() == 11
    })
    .await;
    first.close().await;
    assert_eq!(model.calls().last().map(String::as_str), Some("disown"));
    assert!(matches!(
        first.submit(
            DOMAIN,
            Request::Message {
                user: "u".into(),
                text: "add 1 x-0".into()
            }
        ),
        Err(JournalError::Unavailable(_))
    ));
    let log_len: u64 = redis::cmd("XLEN")
        .arg("emitter:{store}:state/counter/log")
        .query(&mut redis.admin())
        .unwrap();
    assert!(
        log_len < 11,
        "the log was trimmed below the checkpoint ({log_len} entries)"
    );

    // Second run: same keys, a fresh model; the lease was released, so it owns at once.
    let second = journal(&redis, "store", options.clone()).await;
    let resumed = Counter::new(false);
    second.attach(DOMAIN, resumed.clone()).unwrap();
    second.loaded(DOMAIN).await.unwrap();
    assert_eq!(
        resumed.history(),
        model.history(),
        "the replica resumed from the checkpoint and the log"
    );
    assert_eq!(resumed.calls().first().map(String::as_str), Some("load 10"));
    // This process's membership seqs start again at 1: they are executed (not taken for the first run's).
    second.membership(DOMAIN, 1, MembershipChange::Leave, "u");
    add(&second, "u", 1, "r-10");
    eventually("the second run committed on top", WAIT, || {
        resumed.history().len() == 13
    })
    .await;
    let last = resumed.history();
    assert_eq!(last[11]["change"], "leave");
    assert_eq!(last[12]["total"], 11);

    // Third run, after a crash (dropped, lease not released): it takes over once the lease lapsed.
    drop(second);
    let (third, again) = node(&redis, "store", options).await;
    assert_eq!(again.history(), last);
    add(&third, "u", 1, "r-11");
    eventually("the third run owns and commits", WAIT, || again.history().len() == 14).await;
    assert_once_and_in_order(&again.ids());
}

#[tokio::test]
async fn a_membership_change_is_executed_once_across_a_handover() {
    let redis = redis_or_skip!();
    let (a, a_model) = node(&redis, "members", options()).await;
    eventually("a owns the domain", WAIT, || a.is_owner(DOMAIN)).await;
    let (b, b_model) = node(&redis, "members", options()).await;
    let tell = |seq: u64, journals: &[&RedisJournal]| {
        for journal in journals {
            journal.membership(DOMAIN, seq, MembershipChange::Leave, &format!("u{seq}"));
        }
    };
    for seq in 1..=5 {
        tell(seq, &[&a, &b]);
    }
    eventually("the owner executed five changes", WAIT, || b_model.history().len() == 5).await;
    drop(a);
    for seq in 6..=8 {
        tell(seq, &[&b]);
    }
    eventually("b took over and executed the rest", WAIT, || {
        b_model.history().len() == 8
    })
    .await;
    let seqs: Vec<u64> = b_model.history().iter().map(|c| c["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<u64>>(), "each change once, in order");
    assert!(b.is_owner(DOMAIN));
    assert_eq!(a_model.history().len(), 5);
}

#[tokio::test]
async fn bad_domains_a_full_queue_and_a_closed_journal_are_refused() {
    let redis = redis_or_skip!();
    let options = JournalOptions { queue: 1, ..options() };
    let journal = journal(&redis, "refusals", options).await;
    let model = Counter::new(false);
    for bad in ["", "a\nb", &"x".repeat(201)] {
        assert!(
            matches!(journal.attach(bad, model.clone()), Err(JournalError::Domain(_))),
            "{bad:?}"
        );
    }
    journal.attach(DOMAIN, model.clone()).unwrap();
    assert!(matches!(
        journal.attach(DOMAIN, model.clone()),
        Err(JournalError::Domain(_))
    ));
    let other = Request::Message {
        user: "u".into(),
        text: "add 1 z-0".into(),
    };
    assert!(matches!(
        journal.submit("nope", other.clone()),
        Err(JournalError::Domain(_))
    ));
    journal.loaded(DOMAIN).await.unwrap();

    // Redis stops answering: one batch is in flight, one request waits, the next is refused at once.
    redis.suspend();
    let mut refused = false;
    for k in 0..10 {
        match journal.submit(
            DOMAIN,
            Request::Message {
                user: "u".into(),
                text: format!("add 1 q-{k}"),
            },
        ) {
            Ok(()) => {}
            Err(JournalError::Full) => {
                refused = true;
                break;
            }
            Err(error) => panic!("{error}"),
        }
        tokio::task::yield_now().await;
    }
    redis.resume();
    assert!(refused, "a full queue refuses");
    assert!(journal.stats().queue_full >= 1);
    journal.close().await;
    assert!(matches!(
        journal.submit(DOMAIN, other),
        Err(JournalError::Unavailable(_))
    ));
    assert!(matches!(
        journal.attach("later", model),
        Err(JournalError::Unavailable(_))
    ));
}

/// A node in a process of its own: this test binary run again with only [`journal_child_process`] and
/// `EMITTER_JOURNAL_CHILD` set. It says `owner` when it holds the domain's lease and `done` once all its own requests
/// are committed; killing it with SIGKILL is killing a node.
struct ChildNode {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

const CHILD_PREFIX: &str = "journal-child: ";

impl ChildNode {
    /// A child submitting `add 1 <name>-<k>` for k in 0..count, one every 2 ms.
    fn spawn(redis: &RedisServer, cluster: &str, name: &str, count: u64) -> ChildNode {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().expect("the test binary"))
            .args(["journal::journal_child_process", "--exact", "--ignored", "--nocapture"])
            .env(
                "EMITTER_JOURNAL_CHILD",
                format!("{}|{cluster}|{name}|{count}", redis.url()),
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn a child node");
        let stdout = child.stdout.take().expect("its stdout");
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(said) = line.strip_prefix(CHILD_PREFIX) {
                    let _ = send.send(said.to_owned());
                }
            }
        });
        ChildNode { child, lines }
    }

    /// Waits until the child says `what`, on a blocking thread's terms (bounded).
    async fn expect(&self, what: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.lines.try_recv() {
                Ok(line) if line == what => return,
                Ok(_) => {}
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    assert!(Instant::now() < deadline, "the child never said {what:?}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => panic!("the child exited before saying {what:?}"),
            }
        }
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "a child process of when_the_owner_process_is_killed…, which starts it"]
fn journal_child_process() {
    let Ok(config) = std::env::var("EMITTER_JOURNAL_CHILD") else {
        return;
    };
    let parts: Vec<&str> = config.split('|').collect();
    let [url, cluster, name, count] = parts[..] else {
        panic!("EMITTER_JOURNAL_CHILD is url|cluster|name|count");
    };
    let count: u64 = count.parse().unwrap();
    let say = |what: &str| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{CHILD_PREFIX}{what}");
        let _ = out.flush();
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let journal = Arc::new(journal_for(url, cluster).await);
        let model = Counter::new(true);
        journal.attach(DOMAIN, model.clone()).unwrap();
        journal.loaded(DOMAIN).await.unwrap();
        let watcher = journal.clone();
        tokio::spawn(async move {
            loop {
                if watcher.is_owner(DOMAIN) {
                    say("owner");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        for k in 0..count {
            add(&journal, name, 1, &format!("{name}-{k}"));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let last = format!("{name}-{}", count - 1);
        while !model.ids().contains(&last) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        say("done");
        std::future::pending::<()>().await;
    });
}

async fn journal_for(url: &str, cluster: &str) -> RedisJournal {
    RedisJournal::connect(url, cluster, options()).await.expect("connect")
}

#[tokio::test]
async fn when_the_owner_process_is_killed_another_process_continues_and_no_committed_change_is_lost_or_doubled() {
    let redis = redis_or_skip!();
    let a = ChildNode::spawn(&redis, "killed", "a", 1_000);
    a.expect("owner").await;
    let b = ChildNode::spawn(&redis, "killed", "b", 300);
    let (c, c_model) = node(&redis, "killed", options()).await;
    let count_of = |model: &Counter, who: &str| model.ids().iter().filter(|id| id.starts_with(who)).count();
    eventually("a's and b's requests are being committed", WAIT, || {
        count_of(&c_model, "a-") >= 50 && count_of(&c_model, "b-") >= 20
    })
    .await;
    drop(a); // SIGKILL, mid-stream: no release, requests in its queue and maybe a commit in flight
    for k in 0..100 {
        add(&c, "c", 1, &format!("c-{k}"));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    b.expect("done").await;
    eventually("the survivors' requests are all committed", WAIT, || {
        count_of(&c_model, "b-") == 300 && count_of(&c_model, "c-") == 100
    })
    .await;
    let ids = c_model.ids();
    assert_once_and_in_order(&ids);
    // The killed node's committed requests are a prefix of what it sent.
    let a_ids: Vec<&String> = ids.iter().filter(|id| id.starts_with("a-")).collect();
    let expected: Vec<String> = (0..a_ids.len()).map(|k| format!("a-{k}")).collect();
    assert_eq!(a_ids, expected.iter().collect::<Vec<_>>());
    let totals: Vec<u64> = c_model.history().iter().map(|c| c["total"].as_u64().unwrap()).collect();
    assert_eq!(
        totals,
        (1..=totals.len() as u64).collect::<Vec<u64>>(),
        "one history, continued by the new owner"
    );
    // The committed log in Redis is what every replica holds.
    let log_len: u64 = redis::cmd("HGET")
        .arg("emitter:{killed}:state/counter/head")
        .arg("n")
        .query(&mut redis.admin())
        .unwrap();
    assert_eq!(log_len, totals.len() as u64);
}

/// Not a check: a figure. How fast requests submitted on two nodes are committed and applied on all three, with a
/// local Redis. `EMITTER_REDIS=1 cargo test --release -p emitter-redis --test redis journal_throughput -- --ignored
/// --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: run it with --ignored --nocapture"]
async fn journal_throughput() {
    let redis = redis_or_skip!();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(node(&redis, "throughput", options()).await);
    }
    eventually("one node owns the domain", WAIT, || {
        nodes.iter().any(|(j, _)| j.is_owner(DOMAIN))
    })
    .await;
    let owner = nodes.iter().position(|(j, _)| j.is_owner(DOMAIN)).unwrap();
    let submitters: Vec<usize> = (0..3).filter(|i| *i != owner).collect();
    const EACH: u64 = 10_000;
    let started = Instant::now();
    for k in 0..EACH {
        for &i in &submitters {
            add(&nodes[i].0, &format!("u{i}"), 1, &format!("t{i}-{k}"));
        }
        if k % 1_000 == 999 {
            tokio::task::yield_now().await;
        }
    }
    let total = EACH as usize * submitters.len();
    for (_, model) in &nodes {
        eventually("every node applied everything", Duration::from_secs(120), || {
            model.replica.lock().len() == total
        })
        .await;
    }
    let elapsed = started.elapsed();
    let commits = nodes[owner].0.stats().commits;
    println!(
        "journal throughput: {total} requests from 2 nodes committed and applied on 3 in {elapsed:?}: \
         {:.0} requests/s, {commits} commits ({:.1} requests per commit)",
        total as f64 / elapsed.as_secs_f64(),
        total as f64 / commits as f64
    );
    // One request at a time: submitted on one node, applied on the third (neither owns the domain).
    let (from, to) = (submitters[0], submitters[1]);
    let mut latencies = Vec::new();
    for k in 0..200 {
        let sent = Instant::now();
        add(&nodes[from].0, "solo", 1, &format!("solo-{k}"));
        let want = total + k + 1;
        while nodes[to].1.replica.lock().len() < want {
            tokio::time::sleep(Duration::from_micros(50)).await;
        }
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    println!(
        "journal latency, submit on one node to apply on another, one at a time: median {:?}, p99 {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100]
    );
}
