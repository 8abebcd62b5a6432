//! Driving one server with worker processes: start them (pinned when asked), step them through linking, views and
//! the measured phase, and add up what they report.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::clock;
use crate::hist::Histogram;
use crate::servers::process::{cpu_seconds, pinned, wait_or_kill, Deployment};
use crate::servers::target::Target;
use crate::window::{self, BoardSpec};
use crate::worker::{Report, Spec};

type BoxError = Box<dyn std::error::Error>;

/// One load against one server: who links, and what is sent once everyone has.
#[derive(Clone, Debug)]
pub struct Load {
    pub users: u32,
    /// Load processes; worker `w` runs on `cores[w % cores.len()]` when cores are given.
    pub workers: u32,
    /// Link attempts under way at once, over all workers.
    pub in_flight: u32,
    pub track_views: bool,
    pub senders: u32,
    pub echo: bool,
    pub rate: f64,
    pub window: u32,
    pub duration_ms: u64,
    pub warmup_ms: u64,
    pub link_timeout_ms: u64,
    /// Read the server's RSS once everyone is linked and idle.
    pub measure_idle: bool,
}

impl Load {
    pub fn population(users: u32) -> Load {
        Load {
            users,
            workers: 1,
            in_flight: 64,
            track_views: false,
            senders: 0,
            echo: false,
            rate: 0.0,
            window: 1,
            duration_ms: 0,
            warmup_ms: 0,
            link_timeout_ms: 120_000,
            measure_idle: false,
        }
    }
}

#[derive(Default)]
pub struct Outcome {
    pub first_start: u64,
    pub last_done: u64,
    pub link_latency: Histogram,
    pub linked: u32,
    pub views: Option<(u32, u32, u64)>,
    pub idle_kib_per_user: Option<f64>,
    pub sent: u64,
    pub received: u64,
    pub in_window: u64,
    pub latency: Histogram,
    pub disconnected: u32,
    pub errors: Vec<String>,
    /// CPU of the server (all nodes of a cluster) and of all load processes during the measured phase, in % of one
    /// core.
    pub cpu_pct: Option<(f64, f64)>,
    /// The server's CPU over the same phase, in seconds.
    pub server_cpu_s: Option<f64>,
    /// The server's CPU (all nodes of a cluster) while everyone linked, until every view was complete when views are
    /// tracked, in seconds.
    pub link_cpu_s: Option<f64>,
    /// The load processes' CPU over the same phase (from their start), in seconds: on a machine whose cores are all
    /// busy, what the load takes is what the server does not get.
    pub link_load_cpu_s: Option<f64>,
    /// The CPU Redis used (a cluster's), in seconds: while everyone linked (and, when tracked, until every view was
    /// complete), and during the measured phase (until every result was in).
    pub redis_cpu_s: Option<RedisCpu>,
    /// What a node crash cost (the crash groups).
    pub crash: Option<CrashOutcome>,
}

impl Outcome {
    /// The link phase of `workers` workers: waits up to `wait` for each one's [`Report::Linked`], and sums them up (the
    /// earliest start, the latest end, every latency and error, how many linked). The rest is left at its default.
    pub(crate) fn of_links(reports: &mut Reports, workers: usize, wait: Duration) -> Result<Outcome, BoxError> {
        let mut outcome = Outcome {
            first_start: u64::MAX,
            ..Outcome::default()
        };
        for report in reports.collect(workers, wait, "the links", |r| matches!(r, Report::Linked { .. }))? {
            if let Report::Linked {
                first_start,
                last_done,
                latency,
                linked,
                errors,
                ..
            } = report
            {
                outcome.first_start = outcome.first_start.min(first_start);
                outcome.last_done = outcome.last_done.max(last_done);
                outcome.link_latency.merge(&Histogram::from_wire(&latency));
                outcome.linked += linked;
                outcome.errors.extend(errors);
            }
        }
        Ok(outcome)
    }
}

/// The CPU Redis used in each phase, in seconds, less what it uses when the nodes are idle (its own timers and theirs:
/// lease renewals, reaps, polls), and the measured phase's wall time.
#[derive(Default, Debug)]
pub struct RedisCpu {
    /// While idle, before the load started, in seconds per second.
    pub idle_rate: f64,
    pub linking: f64,
    pub measured: Option<f64>,
    pub measured_wall: f64,
}

/// How long Redis's idle CPU is sampled before a load starts.
const REDIS_IDLE_SAMPLE: Duration = Duration::from_secs(1);

/// A node killed with its users linked: when a client on another node heard of their unlinks, in seconds after the
/// kill.
#[derive(Debug)]
pub struct CrashOutcome {
    pub first_unlinked_s: f64,
    pub all_unlinked_s: f64,
}

pub struct Worker {
    pub child: Child,
    stdin: ChildStdin,
}

/// Starts worker process number `w` with `spec`, pinned to `core` when given; its reports go to `tx`, tagged `w`.
pub fn spawn_worker(
    spec: &Spec,
    w: usize,
    core: Option<&str>,
    tx: &mpsc::Sender<(usize, Result<Report, String>)>,
) -> Result<Worker, BoxError> {
    let exe = std::env::current_exe()?;
    let mut child = pinned(&exe, core)
        .arg("worker")
        .arg(serde_json::to_string(spec)?)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no worker stdout")?;
    let stdin = child.stdin.take().ok_or("no worker stdin")?;
    let tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let report = serde_json::from_str::<Report>(&line).map_err(|error| format!("{error}: {line}"));
            if tx.send((w, report)).is_err() {
                break;
            }
        }
    });
    Ok(Worker { child, stdin })
}

/// Tells the workers to quit and waits for them (kills one that lingers).
pub fn quit(workers: &mut [Worker]) {
    send_line(workers, "quit");
    for worker in workers {
        wait_or_kill(&mut worker.child, Duration::from_secs(10));
    }
}

fn send_line(workers: &mut [Worker], line: &str) {
    for worker in workers {
        let _ = writeln!(worker.stdin, "{line}");
        let _ = worker.stdin.flush();
    }
}

/// The workers' reports, as they arrive. A worker may report a phase before another worker has reported the phase
/// before it (its users' views can be complete before another worker has reported its links): such a report is kept
/// for the phase it belongs to.
pub struct Reports {
    rx: mpsc::Receiver<(usize, Result<Report, String>)>,
    early: Vec<Report>,
}

impl Reports {
    pub fn new(rx: mpsc::Receiver<(usize, Result<Report, String>)>) -> Reports {
        Reports { rx, early: Vec::new() }
    }

    /// Waits for `count` reports that `wanted` picks (one from each worker), keeping any other for later.
    pub fn collect(
        &mut self,
        count: usize,
        timeout: Duration,
        what: &str,
        wanted: fn(&Report) -> bool,
    ) -> Result<Vec<Report>, BoxError> {
        let deadline = Instant::now() + timeout;
        let (mut got, early): (Vec<Report>, Vec<Report>) = self.early.drain(..).partition(wanted);
        self.early = early;
        while got.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((_, Ok(report))) if wanted(&report) => got.push(report),
                Ok((_, Ok(report))) => self.early.push(report),
                Ok((worker, Err(error))) => return Err(format!("worker {worker}: {error}").into()),
                Err(_) => return Err(format!("timed out waiting for {what} ({}/{count} workers)", got.len()).into()),
            }
        }
        Ok(got)
    }
}

/// A worker's spec for users `first..first + count` of `load`, against the server on `port`. `deadline_ms` and
/// `board` are for the caller to adjust.
pub fn worker_spec(load: &Load, krmx: bool, port: u16, first: u32, count: u32, epoch: u64) -> Spec {
    // Receivers wait this long at most for what the runner said was sent.
    let drain_ms = 30_000;
    Spec {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        path: "/".to_owned(),
        krmx,
        version: "0.5.5".to_owned(),
        first,
        count,
        total: load.users,
        in_flight: (load.in_flight / load.workers).max(1),
        epoch,
        track_views: load.track_views && krmx,
        senders: (0, load.senders),
        echo: load.echo,
        rate: load.rate,
        window: load.window,
        duration_ms: load.duration_ms,
        warmup_ms: load.warmup_ms,
        drain_ms,
        pad: 0,
        read_buffer: if load.users > 5_000 { 16 * 1024 } else { 64 * 1024 },
        link_timeout_ms: load.link_timeout_ms,
        deadline_ms: 2 * load.link_timeout_ms + load.duration_ms + drain_ms + 120_000,
        board: None,
    }
}

/// Runs `load` against `deployment`: worker `w` connects to its server `w % servers`, and is pinned to
/// `cores[w % cores.len()]` when `cores` is not empty.
pub fn run_load(
    deployment: &Deployment,
    target: Target,
    load: &Load,
    epoch: u64,
    cores: &[String],
) -> Result<Outcome, BoxError> {
    let rss_before = deployment.rss_kib();
    // What Redis spends with the nodes up and nothing happening, to take out of the phases' figures.
    let redis_idle = match redis_cpu(deployment)? {
        Some(before) => {
            let started = Instant::now();
            std::thread::sleep(REDIS_IDLE_SAMPLE);
            let after = redis_cpu(deployment)?.unwrap_or(before);
            Some((after - before).max(0.0) / started.elapsed().as_secs_f64())
        }
        None => None,
    };
    let redis_before = redis_cpu(deployment)?.map(|cpu| (cpu, Instant::now()));
    let server_before = server_cpu(deployment);
    let (tx, rx) = mpsc::channel();
    let mut reports = Reports::new(rx);
    let mut workers = Vec::new();
    let per = load.users / load.workers;
    let mut first = 0;
    // Several load processes and a broadcast window: they share their progress through a small file, so that the
    // window counts every user (see window.rs).
    let board = (load.workers > 1 && load.senders > 0 && !load.echo && load.rate == 0.0).then(|| {
        static RUN: AtomicU32 = AtomicU32::new(0);
        let n = RUN.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!("emitter-bench-{}-{n}.window", std::process::id()))
    });
    if let Some(path) = &board {
        window::create(path, load.workers, load.senders)?;
    }
    for w in 0..load.workers {
        let count = per + u32::from(w < load.users % load.workers);
        let server = &deployment.servers[w as usize % deployment.servers.len()];
        let spec = Spec {
            board: board.as_ref().map(|path| BoardSpec {
                path: path.clone(),
                worker: w,
                workers: load.workers,
            }),
            ..worker_spec(load, target.krmx(), server.port, first, count, epoch)
        };
        first += count;
        let core = (!cores.is_empty()).then(|| cores[w as usize % cores.len()].as_str());
        workers.push(spawn_worker(&spec, w as usize, core, &tx)?);
    }
    let phases = Phases {
        rss_before,
        server_before,
        redis_before: redis_before.zip(redis_idle),
        epoch,
    };
    let outcome = drive(deployment, load, target.krmx(), &mut reports, &mut workers, phases);
    deployment.save_commandstats();
    quit(&mut workers);
    if let Some(path) = &board {
        let _ = std::fs::remove_file(path);
    }
    outcome
}

/// Redis's CPU so far, in seconds, when the deployment has a Redis.
fn redis_cpu(deployment: &Deployment) -> Result<Option<f64>, BoxError> {
    match &deployment.redis {
        Some(redis) => Ok(Some(redis.cpu_seconds()?)),
        None => Ok(None),
    }
}

/// The CPU the server's processes (every node of a cluster) used so far, in seconds.
fn server_cpu(deployment: &Deployment) -> Option<f64> {
    deployment.server_pids().into_iter().map(cpu_seconds).sum()
}

/// What was read before the workers started.
struct Phases {
    rss_before: Option<u64>,
    /// The server's CPU, in seconds.
    server_before: Option<f64>,
    /// Redis's CPU and when it was read, and its idle rate.
    redis_before: Option<((f64, Instant), f64)>,
    epoch: u64,
}

fn drive(
    deployment: &Deployment,
    load: &Load,
    krmx: bool,
    reports: &mut Reports,
    workers: &mut [Worker],
    phases: Phases,
) -> Result<Outcome, BoxError> {
    let Phases {
        rss_before,
        server_before,
        redis_before,
        epoch,
    } = phases;
    let n = workers.len();
    let link_wait = Duration::from_millis(load.link_timeout_ms) + Duration::from_secs(30);
    let mut outcome = Outcome::of_links(reports, n, link_wait)?;
    // Workers track views only on Krmx targets; a worker whose users all failed to link still reports them.
    if load.track_views && krmx {
        let mut views = (0, 0, 0);
        for report in reports.collect(n, link_wait, "complete views", |r| matches!(r, Report::Views { .. }))? {
            if let Report::Views { complete, correct, at } = report {
                views = (views.0 + complete, views.1 + correct, views.2.max(at));
            }
        }
        outcome.views = Some(views);
    }
    if let (Some(before), Some(after)) = (server_before, server_cpu(deployment)) {
        outcome.link_cpu_s = Some(after - before);
    }
    // The workers started after `server_before`: all their CPU so far is this phase's.
    outcome.link_load_cpu_s = workers.iter().map(|w| cpu_seconds(w.child.id())).sum();
    // Everything Redis did for the links, the nodes' catching up included, until every view was complete.
    if let (Some(((before, at), idle_rate)), Some(after)) = (redis_before, redis_cpu(deployment)?) {
        outcome.redis_cpu_s = Some(RedisCpu {
            idle_rate,
            linking: (after - before - idle_rate * at.elapsed().as_secs_f64()).max(0.0),
            ..RedisCpu::default()
        });
    }
    if load.measure_idle {
        std::thread::sleep(Duration::from_secs(2));
        if let (Some(before), Some(after)) = (rss_before, deployment.rss_kib()) {
            outcome.idle_kib_per_user = Some(after.saturating_sub(before) as f64 / f64::from(load.users.max(1)));
        }
    }
    if load.duration_ms > 0 {
        let go = clock::since(epoch) + 300_000_000;
        let servers = deployment.server_pids();
        let cpu = |workers: &[Worker]| {
            let load: Option<f64> = workers.iter().map(|w| cpu_seconds(w.child.id())).sum();
            let server: Option<f64> = servers.iter().map(|pid| cpu_seconds(*pid)).sum();
            (server, load, Instant::now())
        };
        let redis_before = redis_cpu(deployment)?;
        let before = cpu(workers);
        send_line(workers, &format!("go {go}"));
        let wait = Duration::from_millis(load.duration_ms) + Duration::from_secs(30);
        let mut sent = 0;
        for report in reports.collect(n, wait, "the send counts", |r| matches!(r, Report::Sent { .. }))? {
            if let Report::Sent { sent: count } = report {
                sent += count;
            }
        }
        // Every linked user receives every broadcast; an echo only goes back to its sender.
        send_line(workers, &format!("expect {sent}"));
        let wait = Duration::from_millis(30_000) + Duration::from_secs(30);
        for report in reports.collect(n, wait, "the results", |r| matches!(r, Report::Result { .. }))? {
            if let Report::Result {
                sent,
                received,
                in_window,
                latency,
                disconnected,
                errors,
            } = report
            {
                outcome.sent += sent;
                outcome.received += received;
                outcome.in_window += in_window;
                outcome.latency.merge(&Histogram::from_wire(&latency));
                outcome.disconnected += disconnected;
                outcome.errors.extend(errors);
            }
        }
        // CPU used during the measured phase (and the drain after it), as % of one core.
        let after = cpu(workers);
        let wall = after.2.duration_since(before.2).as_secs_f64();
        if let (Some(redis), Some(before), Some(after)) =
            (outcome.redis_cpu_s.as_mut(), redis_before, redis_cpu(deployment)?)
        {
            redis.measured = Some((after - before - redis.idle_rate * wall).max(0.0));
            redis.measured_wall = wall;
        }
        if let (Some(s0), Some(s1), Some(l0), Some(l1)) = (before.0, after.0, before.1, after.1) {
            outcome.cpu_pct = Some((100.0 * (s1 - s0) / wall, 100.0 * (l1 - l0) / wall));
            outcome.server_cpu_s = Some(s1 - s0);
        }
    }
    outcome.errors.truncate(5);
    Ok(outcome)
}
