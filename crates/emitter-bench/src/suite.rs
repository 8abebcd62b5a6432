//! The runner: starts each target server, drives it with worker processes, alternates targets round by round, and
//! hands the medians to the report.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::clock;
use crate::hist::Histogram;
use crate::process::{cpu_seconds, pinned, wait_or_kill, Server};
use crate::report;
use crate::results::Results;
use crate::target::Target;
use crate::window::{self, BoardSpec};
use crate::worker::{Report, Spec};

type BoxError = Box<dyn std::error::Error>;

struct Options {
    rounds: u32,
    targets: Vec<Target>,
    out: Option<PathBuf>,
    only: Option<Vec<String>>,
    scale_users: u32,
    scale_workers: u32,
    smoke: bool,
    node_dir: PathBuf,
}

const HELP: &str =
    "emitter-bench suite [--rounds N] [--targets emitter,node,axum,axum-equal] [--only GROUPS] [--scale-users N]
                    [--scale-workers N] [--out DIR] [--node-dir DIR]

Runs every scenario group against every target, alternating the order each round, and writes DIR/results.md,
DIR/ratios.svg and DIR/results.json (DIR defaults to docs/src/performance; --out - writes nothing).
Groups: storm1k, storm2k (link storm of 2,000 + idle footprint + broadcast to many), fanout-rate, fanout-max, echo,
scale (once, after the rounds; --scale-users 0 skips it). Defaults: 3 rounds, all targets, 19,000 users over 4
workers for scale. Node needs `npm ci` in --node-dir (default bench/node); `just bench` does it.";

fn parse_options(args: &[String], smoke: bool) -> Result<Options, BoxError> {
    let mut options = Options {
        rounds: if smoke { 1 } else { 3 },
        targets: if smoke {
            vec![Target::Emitter]
        } else {
            Target::ALL.to_vec()
        },
        out: (!smoke).then(|| PathBuf::from("docs/src/performance")),
        only: None,
        scale_users: if smoke { 300 } else { 19_000 },
        scale_workers: if smoke { 2 } else { 4 },
        smoke,
        node_dir: PathBuf::from("bench/node"),
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!("{HELP}");
            std::process::exit(0);
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--rounds" => options.rounds = value.parse()?,
            "--targets" => {
                options.targets = value
                    .split(',')
                    .map(|name| Target::parse(name).ok_or_else(|| format!("unknown target {name}")))
                    .collect::<Result<_, _>>()?;
            }
            "--only" => options.only = Some(value.split(',').map(str::to_owned).collect()),
            "--out" => options.out = (value != "-").then(|| PathBuf::from(value)),
            "--scale-users" => options.scale_users = value.parse()?,
            "--scale-workers" => options.scale_workers = value.parse::<u32>()?.max(1),
            "--node-dir" => options.node_dir = PathBuf::from(value),
            _ => return Err(format!("unknown option {flag}; see --help").into()),
        }
    }
    Ok(options)
}

// ---- loads -----------------------------------------------------------------------------------------------------------

/// One load against one server: who links, and what is sent once everyone has.
#[derive(Clone, Debug)]
struct Load {
    users: u32,
    workers: u32,
    in_flight: u32,
    track_views: bool,
    senders: u32,
    echo: bool,
    rate: f64,
    window: u32,
    duration_ms: u64,
    warmup_ms: u64,
    link_timeout_ms: u64,
    /// Read the server's RSS once everyone is linked and idle.
    measure_idle: bool,
}

impl Load {
    fn population(users: u32) -> Load {
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
struct Outcome {
    first_start: u64,
    last_done: u64,
    link_latency: Histogram,
    linked: u32,
    views: Option<(u32, u32, u64)>,
    idle_kib_per_user: Option<f64>,
    sent: u64,
    received: u64,
    in_window: u64,
    latency: Histogram,
    disconnected: u32,
    errors: Vec<String>,
    /// CPU of the server and of all load processes during the measured phase, in % of one core.
    cpu_pct: Option<(f64, f64)>,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
}

fn send_line(workers: &mut [Worker], line: &str) {
    for worker in workers {
        let _ = writeln!(worker.stdin, "{line}");
        let _ = worker.stdin.flush();
    }
}

/// Waits for one report of the expected kind from each worker.
fn collect(
    reports: &mpsc::Receiver<(usize, Result<Report, String>)>,
    count: usize,
    timeout: Duration,
    what: &str,
) -> Result<Vec<Report>, BoxError> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    while got.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match reports.recv_timeout(left) {
            Ok((_, Ok(report))) => got.push(report),
            Ok((worker, Err(error))) => return Err(format!("worker {worker}: {error}").into()),
            Err(_) => return Err(format!("timed out waiting for {what} ({}/{count} workers)", got.len()).into()),
        }
    }
    Ok(got)
}

fn run_load(server: &Server, target: Target, load: &Load, epoch: u64, core: Option<&str>) -> Result<Outcome, BoxError> {
    let exe = std::env::current_exe()?;
    let rss_before = server.rss_kib();
    let (tx, reports) = mpsc::channel();
    let mut workers = Vec::new();
    let per = load.users / load.workers;
    let mut first = 0;
    // Receivers wait this long at most for what the runner said was sent.
    let drain_ms = 30_000;
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
        let spec = Spec {
            addr: SocketAddr::from(([127, 0, 0, 1], server.port)),
            path: "/".to_owned(),
            krmx: target.krmx(),
            version: "0.5.5".to_owned(),
            first,
            count,
            total: load.users,
            in_flight: (load.in_flight / load.workers).max(1),
            epoch,
            track_views: load.track_views && target.krmx(),
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
            board: board.as_ref().map(|path| BoardSpec {
                path: path.clone(),
                worker: w,
                workers: load.workers,
            }),
        };
        first += count;
        let mut child = pinned(&exe, core)
            .arg("worker")
            .arg(serde_json::to_string(&spec)?)
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
                if tx.send((w as usize, report)).is_err() {
                    break;
                }
            }
        });
        workers.push(Worker { child, stdin });
    }
    let outcome = drive(server, load, target.krmx(), &reports, &mut workers, rss_before, epoch);
    send_line(&mut workers, "quit");
    for worker in &mut workers {
        wait_or_kill(&mut worker.child, Duration::from_secs(10));
    }
    if let Some(path) = &board {
        let _ = std::fs::remove_file(path);
    }
    outcome
}

fn drive(
    server: &Server,
    load: &Load,
    krmx: bool,
    reports: &mpsc::Receiver<(usize, Result<Report, String>)>,
    workers: &mut [Worker],
    rss_before: Option<u64>,
    epoch: u64,
) -> Result<Outcome, BoxError> {
    let mut outcome = Outcome {
        first_start: u64::MAX,
        ..Outcome::default()
    };
    let n = workers.len();
    let link_wait = Duration::from_millis(load.link_timeout_ms) + Duration::from_secs(30);
    for report in collect(reports, n, link_wait, "the links")? {
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
    // Workers track views only on Krmx targets; a worker whose users all failed to link still reports them.
    if load.track_views && krmx {
        let mut views = (0, 0, 0);
        for report in collect(reports, n, link_wait, "complete views")? {
            if let Report::Views { complete, correct, at } = report {
                views = (views.0 + complete, views.1 + correct, views.2.max(at));
            }
        }
        outcome.views = Some(views);
    }
    if load.measure_idle {
        std::thread::sleep(Duration::from_secs(2));
        if let (Some(before), Some(after)) = (rss_before, server.rss_kib()) {
            outcome.idle_kib_per_user = Some(after.saturating_sub(before) as f64 / f64::from(load.users.max(1)));
        }
    }
    if load.duration_ms > 0 {
        let go = clock::since(epoch) + 300_000_000;
        let cpu = |workers: &[Worker]| {
            let load: Option<f64> = workers.iter().map(|w| cpu_seconds(w.child.id())).sum();
            (cpu_seconds(server.child.id()), load, Instant::now())
        };
        let before = cpu(workers);
        send_line(workers, &format!("go {go}"));
        let wait = Duration::from_millis(load.duration_ms) + Duration::from_secs(30);
        let mut sent = 0;
        for report in collect(reports, n, wait, "the send counts")? {
            if let Report::Sent { sent: count } = report {
                sent += count;
            }
        }
        // Every linked user receives every broadcast; an echo only goes back to its sender.
        send_line(workers, &format!("expect {sent}"));
        let wait = Duration::from_millis(30_000) + Duration::from_secs(30);
        for report in collect(reports, n, wait, "the results")? {
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
        if let (Some(s0), Some(s1), Some(l0), Some(l1)) = (before.0, after.0, before.1, after.1) {
            outcome.cpu_pct = Some((100.0 * (s1 - s0) / wall, 100.0 * (l1 - l0) / wall));
        }
    }
    outcome.errors.truncate(5);
    Ok(outcome)
}

// ---- scenario groups -----------------------------------------------------------------------------------------------

struct Group {
    name: &'static str,
    targets: &'static [Target],
    load: Load,
    /// Run the server on core 0 and the load on core 1.
    pin: bool,
}

const KRMX_TARGETS: &[Target] = &[Target::Emitter, Target::Node];
const ALL_TARGETS: &[Target] = &Target::ALL;
const NO_NODE: &[Target] = &[Target::Emitter, Target::Axum, Target::AxumEqual];

fn groups(options: &Options) -> Vec<Group> {
    let smoke = options.smoke;
    let (duration_ms, warmup_ms) = if smoke { (1_000, 200) } else { (10_000, 2_000) };
    let storm = |users: u32| Load {
        track_views: true,
        link_timeout_ms: if smoke { 30_000 } else { 600_000 },
        ..Load::population(users)
    };
    let fanout = |users: u32, senders: u32| Load {
        senders,
        duration_ms,
        warmup_ms,
        ..Load::population(users)
    };
    let (small, large) = if smoke { (50, 100) } else { (1_000, 2_000) };
    let (fan_users, fan_senders) = if smoke { (20, 2) } else { (200, 10) };
    vec![
        Group {
            name: "storm1k",
            targets: KRMX_TARGETS,
            load: storm(small),
            pin: false,
        },
        Group {
            name: "storm2k",
            targets: ALL_TARGETS,
            load: Load {
                measure_idle: true,
                senders: 1,
                window: 4,
                duration_ms: duration_ms / 2,
                warmup_ms: warmup_ms / 2,
                ..storm(large)
            },
            pin: false,
        },
        Group {
            name: "fanout-rate",
            targets: ALL_TARGETS,
            load: Load {
                rate: 50.0,
                ..fanout(fan_users, fan_senders)
            },
            pin: false,
        },
        Group {
            name: "fanout-max",
            targets: ALL_TARGETS,
            load: Load {
                window: 32,
                ..fanout(fan_users, fan_senders)
            },
            pin: false,
        },
        Group {
            name: "echo",
            targets: ALL_TARGETS,
            load: Load {
                echo: true,
                window: 1,
                ..fanout(if smoke { 4 } else { 50 }, if smoke { 4 } else { 50 })
            },
            pin: true,
        },
    ]
}

fn scale_group(options: &Options) -> Group {
    let users = options.scale_users;
    Group {
        name: "scale",
        targets: NO_NODE,
        load: Load {
            workers: options.scale_workers,
            in_flight: 64,
            senders: 1,
            window: 8,
            duration_ms: if options.smoke { 1_000 } else { 10_000 },
            warmup_ms: if options.smoke { 200 } else { 2_000 },
            link_timeout_ms: if options.smoke { 60_000 } else { 1_800_000 },
            ..Load::population(users)
        },
        pin: false,
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Turns one outcome into named metric values.
fn metrics(group: &Group, target: Target, outcome: &Outcome) -> Vec<(String, f64)> {
    let load = &group.load;
    let mut values = Vec::new();
    let mut put = |name: &str, value: f64| values.push((format!("{}.{name}", group.name), value));
    let link_span = outcome.last_done.saturating_sub(outcome.first_start) as f64 / 1e9;
    let window_s = (load.duration_ms - load.warmup_ms) as f64 / 1e3;
    let expected = if load.echo {
        outcome.sent
    } else {
        outcome.sent * u64::from(outcome.linked)
    };
    let loss = if expected > 0 {
        100.0 * (1.0 - outcome.received as f64 / expected as f64).max(0.0)
    } else {
        0.0
    };
    match group.name {
        "storm1k" | "storm2k" | "scale" if target.krmx() => {
            put("linked", f64::from(outcome.linked));
            if link_span > 0.0 {
                put("links_per_s", f64::from(outcome.linked) / link_span);
            }
            put("link_p50_ms", ms(outcome.link_latency.quantile(0.5)));
            put("link_p99_ms", ms(outcome.link_latency.quantile(0.99)));
            if let Some((complete, correct, at)) = outcome.views {
                put("correct_pct", 100.0 * f64::from(correct) / f64::from(load.users));
                if complete == load.users {
                    put("views_s", at.saturating_sub(outcome.first_start) as f64 / 1e9);
                }
            }
        }
        "storm2k" | "scale" => put("linked", f64::from(outcome.linked)),
        _ => {}
    }
    if let Some(kib) = outcome.idle_kib_per_user {
        put("idle_kib", kib);
    }
    if let Some((server, load)) = outcome.cpu_pct {
        put("server_cpu_pct", server);
        put("load_cpu_pct", load);
    }
    if load.duration_ms > 0 && outcome.sent > 0 {
        let per_s = outcome.in_window as f64 / window_s;
        put(if load.echo { "rtt_per_s" } else { "delivered_per_s" }, per_s);
        put("loss_pct", loss);
        let scale = if load.echo { 1e3 } else { 1e6 }; // echo in µs, the rest in ms
        let unit = if load.echo { "us" } else { "ms" };
        for (q, name) in [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (1.0, "max")] {
            put(&format!("{name}_{unit}"), outcome.latency.quantile(q) as f64 / scale);
        }
    }
    values
}

fn describe(group: &Group) -> String {
    let load = &group.load;
    let mut text = format!("{} users", load.users);
    if load.workers > 1 {
        text += &format!(" over {} load processes", load.workers);
    }
    if load.track_views {
        text += &format!(", {} links in flight", load.in_flight);
    }
    if load.duration_ms > 0 {
        let what = if load.echo { "bench/echo" } else { "bench/msg" };
        let pace = if load.rate > 0.0 {
            format!("{} msg/s each", load.rate)
        } else {
            format!("window {}", load.window)
        };
        text += &format!(
            ", {} sender(s) of {what} ({pace}) for {} s",
            load.senders,
            load.duration_ms as f64 / 1000.0
        );
    }
    if group.pin {
        text += ", server on core 0 and load on core 1";
    }
    text
}

pub fn main(args: &[String], smoke: bool) -> Result<(), BoxError> {
    let options = parse_options(args, smoke)?;
    let epoch = clock::unix_ns();
    let logs = PathBuf::from("target/bench-logs");
    std::fs::create_dir_all(&logs)?;
    let taskset = Command::new("taskset")
        .arg("-c")
        .arg("0")
        .arg("true")
        .status()
        .is_ok_and(|status| status.success());
    let wanted = |name: &str| options.only.as_ref().is_none_or(|only| only.iter().any(|o| o == name));
    let mut results = Results::new(&options.targets, options.rounds);
    results.notes.push(format!(
        "load average when the run started: {}",
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    ));
    if !taskset {
        results
            .notes
            .push("taskset is missing: the echo group ran unpinned".to_owned());
    }
    let mut failures = 0;
    let mut run_group = |group: &Group, target: Target, results: &mut Results| {
        let core = |core: &'static str| (group.pin && taskset).then_some(core);
        let log = logs.join(format!("{}-{}.log", group.name, target.name()));
        eprintln!(
            "[{}] {} on {}: {}",
            clock::now(),
            group.name,
            target.name(),
            describe(group)
        );
        let started = Instant::now();
        let outcome = Server::start(target, &options.node_dir, core("0"), &log).and_then(|server| {
            let outcome = run_load(&server, target, &group.load, epoch, core("1"));
            server.stop();
            outcome
        });
        match outcome {
            Ok(outcome) => {
                let values = metrics(group, target, &outcome);
                eprintln!(
                    "    {:.1} s: {}",
                    started.elapsed().as_secs_f64(),
                    values
                        .iter()
                        .map(|(name, value)| format!("{}={value:.2}", name.split('.').nth(1).unwrap_or(name)))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                let broken = outcome.linked < group.load.users
                    || outcome.disconnected > 0
                    || outcome.views.is_some_and(|(_, correct, _)| correct < group.load.users)
                    || (group.load.duration_ms > 0 && outcome.sent == 0);
                if broken || !outcome.errors.is_empty() {
                    failures += u32::from(broken);
                    let note = format!(
                        "{} on {}: linked {}/{}, disconnected {}, views {:?}, errors: {}",
                        group.name,
                        target.name(),
                        outcome.linked,
                        group.load.users,
                        outcome.disconnected,
                        outcome.views,
                        outcome.errors.join("; ")
                    );
                    eprintln!("    problem: {note}");
                    results.notes.push(note);
                }
                for (name, value) in values {
                    results.add(&name, target, value);
                }
            }
            Err(error) => {
                failures += 1;
                eprintln!("    failed: {error}");
                results
                    .notes
                    .push(format!("{} on {} failed: {error}", group.name, target.name()));
            }
        }
    };
    let groups = groups(&options);
    for group in &groups {
        results.describe(group.name, describe(group));
    }
    for round in 0..options.rounds {
        eprintln!("== round {} of {}", round + 1, options.rounds);
        for (g, group) in groups.iter().enumerate().filter(|(_, group)| wanted(group.name)) {
            let mut targets: Vec<Target> = options
                .targets
                .iter()
                .copied()
                .filter(|target| group.targets.contains(target))
                .collect();
            // Alternate: each round and group starts with a different target.
            let len = targets.len().max(1);
            targets.rotate_left((round as usize + g) % len);
            for target in targets {
                run_group(group, target, &mut results);
            }
        }
    }
    if options.scale_users > 0 && wanted("scale") {
        let group = scale_group(&options);
        results.describe(group.name, describe(&group));
        eprintln!("== scale");
        for target in options.targets.iter().copied().filter(|t| group.targets.contains(t)) {
            run_group(&group, target, &mut results);
        }
    }
    let table = report::table(&results);
    println!("{table}");
    if let Some(out) = &options.out {
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        report::write(&results, out, &command)?;
        eprintln!("wrote {}", out.display());
    }
    let summary: BTreeMap<_, _> = report::checks(&results).into_iter().collect();
    for (goal, verdict) in &summary {
        eprintln!("{goal}: {verdict}");
    }
    if failures > 0 {
        return Err(format!("{failures} scenario run(s) failed; see the notes above and target/bench-logs").into());
    }
    Ok(())
}
