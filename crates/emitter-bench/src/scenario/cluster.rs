//! The cluster groups: three nodes of examples/bench on one throwaway Redis against the same server on its own, on
//! the same machine.
//!
//! - `cluster-serial-links`: links one at a time per load process (one load process per node): the latency of a
//!   link itself, which in a cluster includes Redis round trips.
//! - `cluster-links`: a link storm, the users spread over the nodes (one load process per node): links/s and link
//!   latency, every client's view checked, and Redis's CPU per link.
//! - `cluster-fanout`: broadcasts at a fixed offered rate, every sender on the first node and the recipients spread
//!   over all three: deliveries/s and delivery latency, and Redis's CPU per broadcast.
//! - `cluster-crash-<lease>`: users linked on the last node, a client linked on the first; the last node's process
//!   is SIGKILLed and the run measures how long until that client has heard `krmx/unlinked` for every one of them
//!   (the lease has to run out, then a reap unlinks them). Against the cluster only: a single server that crashes
//!   takes every client with it.
//!
//! The single server runs the same load with the same number of load processes, all of them connected to it.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::clock;
use crate::load::{self, CrashOutcome, Load, Outcome};
use crate::scenario::{Crash, Group};
use crate::servers::process::Deployment;
use crate::servers::target::Target;
use crate::worker::parse::{parse, user_index, Parsed};
use crate::ws::{Conn, Incoming};

type BoxError = Box<dyn std::error::Error>;

const BOTH: &[Target] = &[Target::Emitter, Target::Cluster];
const CLUSTER: &[Target] = &[Target::Cluster];

/// The offered load of `cluster-fanout`: 200 users, 10 senders at 50 broadcasts/s each, so 500 broadcasts/s and
/// 100,000 deliveries/s (the issue's goal: p99 at most 10 ms at that rate).
pub const FANOUT_USERS: u32 = 200;
pub const FANOUT_SENDERS: u32 = 10;
pub const FANOUT_RATE: f64 = 50.0;

/// The cluster groups, in order. `victims` users are linked on the node that is killed.
pub fn groups(smoke: bool, victims: u32) -> Vec<Group> {
    let (duration_ms, warmup_ms) = if smoke { (1_000, 200) } else { (10_000, 2_000) };
    let nodes = crate::servers::process::NODES as u32;
    let group = |name: String, targets, load, crash| Group {
        name,
        family: "cluster",
        targets,
        load,
        pin: None,
        crash,
    };
    let mut groups = vec![
        // One link at a time per load process: what a link itself costs, without the queueing of a storm.
        group(
            "cluster-serial-links".to_owned(),
            BOTH,
            Load {
                workers: nodes,
                in_flight: nodes,
                track_views: true,
                link_timeout_ms: if smoke { 30_000 } else { 120_000 },
                ..Load::population(if smoke { 30 } else { 150 })
            },
            None,
        ),
        group(
            "cluster-links".to_owned(),
            BOTH,
            Load {
                workers: nodes,
                track_views: true,
                link_timeout_ms: if smoke { 30_000 } else { 600_000 },
                ..Load::population(if smoke { 60 } else { 1_000 })
            },
            None,
        ),
        group(
            "cluster-fanout".to_owned(),
            BOTH,
            Load {
                workers: nodes,
                senders: if smoke { 3 } else { FANOUT_SENDERS },
                rate: FANOUT_RATE,
                duration_ms,
                warmup_ms,
                ..Load::population(if smoke { 30 } else { FANOUT_USERS })
            },
            None,
        ),
    ];
    // The smoke only checks that a crash is noticed, with the short lease.
    let leases: &[u64] = if smoke { &[2_000] } else { &[10_000, 2_000] };
    for &lease_ms in leases {
        let victims = if smoke { 30 } else { victims };
        groups.push(group(
            format!("cluster-crash-{}s", lease_ms / 1_000),
            CLUSTER,
            Load::population(victims),
            Some(Crash { victims, lease_ms }),
        ));
    }
    groups
}

/// Kills the last node of `deployment` with `crash.victims` users linked on it, and measures how long until a client
/// on the first node has heard `krmx/unlinked` for each of them.
pub fn run_crash(deployment: &mut Deployment, crash: &Crash, epoch: u64) -> Result<Outcome, BoxError> {
    let first = deployment.servers.first().ok_or("no nodes")?.port;
    let victim_port = deployment.servers.last().ok_or("no nodes")?.port;
    let observer = Observer::start(first, crash.victims, epoch);
    observer.wait(
        |event| matches!(event, Seen::SelfLinked),
        Duration::from_secs(30),
        "the observer's link",
    )?;

    let load = Load {
        link_timeout_ms: 120_000,
        ..Load::population(crash.victims)
    };
    let spec = load::worker_spec(&load, true, victim_port, 0, crash.victims, epoch);
    let (tx, rx) = mpsc::channel();
    let mut workers = vec![load::spawn_worker(&spec, 0, None, &tx)?];
    let outcome = measure(deployment, crash, &load, &observer, &mut load::Reports::new(rx), epoch);
    deployment.save_commandstats();
    load::quit(&mut workers);
    outcome
}

fn measure(
    deployment: &mut Deployment,
    crash: &Crash,
    load: &Load,
    observer: &Observer,
    reports: &mut load::Reports,
    epoch: u64,
) -> Result<Outcome, BoxError> {
    let wait = Duration::from_millis(load.link_timeout_ms) + Duration::from_secs(30);
    let mut outcome = Outcome::of_links(reports, 1, wait)?;
    if outcome.linked < crash.victims {
        return Ok(outcome);
    }
    observer.wait(
        |event| matches!(event, Seen::AllLinked),
        Duration::from_secs(60),
        "the observer to see every victim linked",
    )?;
    let victim = deployment.servers.last_mut().ok_or("no nodes")?;
    let killed_at = clock::since(epoch);
    victim.child.kill()?; // SIGKILL
    let _ = victim.child.wait();
    let limit = Duration::from_millis(crash.lease_ms) + Duration::from_secs(60);
    let seconds = |at: u64| at.saturating_sub(killed_at) as f64 / 1e9;
    let mut first = None;
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match observer.events.recv_timeout(left) {
            Ok(Seen::FirstUnlinked(at)) => first = Some(seconds(at)),
            Ok(Seen::AllUnlinked(at)) => {
                outcome.crash = Some(CrashOutcome {
                    first_unlinked_s: first.unwrap_or_else(|| seconds(at)),
                    all_unlinked_s: seconds(at),
                });
                return Ok(outcome);
            }
            Ok(Seen::Failed(error)) => return Err(format!("the observer: {error}").into()),
            Ok(_) => {}
            Err(_) => {
                return Err(format!(
                    "no krmx/unlinked for every victim within {} s of the kill",
                    limit.as_secs()
                )
                .into())
            }
        }
    }
}

/// What the observer saw, with the clock (ns since the run's epoch) where it matters.
#[derive(Debug)]
enum Seen {
    SelfLinked,
    AllLinked,
    FirstUnlinked(u64),
    AllUnlinked(u64),
    Failed(String),
}

/// A client of the first node, on a thread of the runner: links as `observer` and reports when it has seen every
/// victim (`u0`…) linked, then the first and the last of their unlinks.
struct Observer {
    events: mpsc::Receiver<Seen>,
}

impl Observer {
    fn start(port: u16, victims: u32, epoch: u64) -> Observer {
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = tx.send(Seen::Failed(error.to_string()));
                    return;
                }
            };
            if let Err(error) = runtime.block_on(observe(port, victims, epoch, &tx)) {
                let _ = tx.send(Seen::Failed(error.to_string()));
            }
        });
        Observer { events }
    }

    /// Waits for the event `wanted` picks, failing on a failure, on the time running out, or on anything else.
    fn wait(&self, wanted: impl Fn(&Seen) -> bool, limit: Duration, what: &str) -> Result<(), BoxError> {
        match self.events.recv_timeout(limit) {
            Ok(event) if wanted(&event) => Ok(()),
            Ok(Seen::Failed(error)) => Err(format!("the observer: {error}").into()),
            Ok(event) => Err(format!("waiting for {what}, the observer saw {event:?}").into()),
            Err(_) => Err(format!("timed out waiting for {what}").into()),
        }
    }
}

async fn observe(port: u16, victims: u32, epoch: u64, tx: &mpsc::Sender<Seen>) -> std::io::Result<()> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut conn = Conn::connect(addr, "/", 64 * 1024).await?;
    conn.queue_text(br#"{"type":"krmx/link","payload":{"username":"observer","version":"0.5.5"}}"#);
    conn.flush().await?;
    let (mut self_linked, mut linked, mut unlinked) =
        (false, vec![false; victims as usize], vec![false; victims as usize]);
    let (mut linked_count, mut unlinked_count) = (0, 0);
    loop {
        if conn.read_more().await? == 0 {
            return Err(std::io::Error::other("the node closed the observer's connection"));
        }
        let mut events = Vec::new();
        let mut closed = false;
        conn.frames(|frame| {
            let data = match frame {
                Incoming::Data(data) => data,
                Incoming::Closed => {
                    closed = true;
                    return;
                }
            };
            let Parsed::Krmx { kind, username } = parse(data) else {
                return;
            };
            if kind == b"linked" && username == b"observer" && !self_linked {
                self_linked = true;
                events.push(Seen::SelfLinked);
            }
            let Some(user) = user_index(username).filter(|user| *user < victims) else {
                return;
            };
            let (set, count) = match kind {
                b"linked" => (&mut linked, &mut linked_count),
                b"unlinked" => (&mut unlinked, &mut unlinked_count),
                _ => return,
            };
            if !std::mem::replace(&mut set[user as usize], true) {
                *count += 1;
                let at = clock::since(epoch);
                match kind {
                    b"linked" if *count == victims => events.push(Seen::AllLinked),
                    b"unlinked" if *count == 1 => {
                        events.push(Seen::FirstUnlinked(at));
                        if victims == 1 {
                            events.push(Seen::AllUnlinked(at));
                        }
                    }
                    b"unlinked" if *count == victims => events.push(Seen::AllUnlinked(at)),
                    _ => {}
                }
            }
        })?;
        let done = events.iter().any(|event| matches!(event, Seen::AllUnlinked(_)));
        for event in events {
            let _ = tx.send(event);
        }
        if done {
            conn.close().await;
            return Ok(());
        }
        if closed {
            return Err(std::io::Error::other("the node closed the observer's connection"));
        }
        conn.flush().await?;
    }
}
