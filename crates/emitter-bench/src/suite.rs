//! The runner: starts each target server, drives it with worker processes, alternates targets round by round, and
//! hands the medians to the report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use crate::clock;
use crate::load::{run_load, Outcome};
use crate::report;
use crate::results::Results;
use crate::scenario::cluster;
use crate::scenario::multicore;
use crate::scenario::{self, describe, metrics, Group, Pin};
use crate::servers::process::Deployment;
use crate::servers::redis;
use crate::servers::target::Target;

type BoxError = Box<dyn std::error::Error>;

struct Options {
    rounds: u32,
    targets: Vec<Target>,
    out: Option<PathBuf>,
    only: Option<Vec<String>>,
    scale_users: u32,
    scale_workers: u32,
    /// Server core counts for the multicore groups.
    cores: Vec<u32>,
    /// Where each server's output goes, one file per group and target.
    logs: PathBuf,
    smoke: bool,
    node_dir: PathBuf,
    /// Users linked on the node the crash groups kill.
    crash_users: u32,
}

const HELP: &str = "emitter-bench suite [--rounds N] [--targets emitter,node,axum,axum-equal,cluster] [--only GROUPS]
                    [--cores 1,2,4,8] [--scale-users N] [--scale-workers N] [--crash-users N] [--out DIR]
                    [--node-dir DIR] [--logs DIR]

Runs every scenario group against every target, alternating the order each round, and writes DIR/results.md,
DIR/ratios.svg, DIR/multicore.svg and DIR/results.json (DIR defaults to docs/src/performance; --out - writes nothing).
Server logs go to --logs (default target/bench-logs).

Groups: storm1k, storm2k (link storm of 2,000, idle footprint, broadcast to many), storm5k (link storm of 5,000
and idle footprint, not against Node), storm10k (link storm of 10,000
and idle footprint), fanout-rate, fanout-max, echo, multicore (for each of --cores: the server pinned to that many
CPUs and the load to the rest, echo and fan-out with 1,000 users; on by default with 4 CPUs or more, --only multicore
runs it anywhere; a count that leaves the load fewer CPUs than the server is skipped), cluster-serial-links (150
users over 3 load processes, one link in flight each), cluster-links (a link storm of 1,000 users over 3 load
processes), cluster-fanout (200 users over 3 load processes, 10 senders at 50
broadcasts/s each: 100,000 deliveries/s offered), cluster-crash-10s and cluster-crash-2s (--crash-users N, default
1,000, linked on one node of the cluster, which is SIGKILLed; lease 10 s and 2 s), scale (once, after the rounds;
--scale-users 0 skips it). --only takes group names, `multicore` for all multicore groups, or `cluster` for all
cluster groups.

Targets: emitter (examples/bench), before (examples/bench built from other code, the binary EMITTER_BENCH_BEFORE
names, to measure a change side by side with the code before it; only when named), node (@krmx/server), axum (bare axum, tungstenite's default buffers: every goal
is measured against it), axum-equal (bare axum with emitter-axum's 1 KiB/2 KiB buffers, shown to explain), cluster
(three processes of examples/bench, each a node of one cluster on a redis-server the run starts: the cluster groups
run against it and against emitter alone, and only when it is among the targets; they are skipped with a note when
redis-server is not on PATH, or fail the run if EMITTER_REDIS=1).
Defaults: 3 rounds, all targets, --cores 1,2,4,8, 19,000 users over 4 workers for scale. Node needs `npm ci` in
--node-dir (default tests/node-baseline); `just bench` does it.";

fn parse_options(args: &[String], smoke: bool) -> Result<Options, BoxError> {
    let mut options = Options {
        rounds: if smoke { 1 } else { 3 },
        targets: if smoke {
            vec![Target::Emitter, Target::Cluster]
        } else {
            Target::ALL.to_vec()
        },
        out: (!smoke).then(|| PathBuf::from("docs/src/performance")),
        only: None,
        scale_users: if smoke { 300 } else { 19_000 },
        scale_workers: if smoke { 2 } else { 4 },
        // The smoke only checks that a pinned run works: one server core is enough, and fits 2 CPUs.
        cores: if smoke { vec![1] } else { vec![1, 2, 4, 8] },
        logs: PathBuf::from("target/bench-logs"),
        smoke,
        node_dir: PathBuf::from("tests/node-baseline"),
        crash_users: 1_000,
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
            "--cores" => {
                options.cores = value
                    .split(',')
                    .map(|k| match k.trim().parse::<u32>() {
                        Ok(k) if k > 0 => Ok(k),
                        _ => Err(format!("--cores takes counts of at least 1, not {k:?}")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--scale-users" => options.scale_users = value.parse()?,
            "--scale-workers" => options.scale_workers = value.parse::<u32>()?.max(1),
            "--node-dir" => options.node_dir = PathBuf::from(value),
            "--crash-users" => options.crash_users = value.parse::<u32>()?.max(1),
            "--logs" => options.logs = PathBuf::from(value),
            _ => return Err(format!("unknown option {flag}; see --help").into()),
        }
    }
    Ok(options)
}

/// Every group of this run, in order, with notes on what was left out and why; an error when the cluster groups are
/// wanted, redis-server is missing, and `EMITTER_REDIS=1` says that must fail.
fn plan(options: &Options, taskset: bool, cpus: &[u32]) -> Result<(Vec<Group>, Vec<String>), String> {
    let mut notes = Vec::new();
    let named = |name: &str| options.only.as_ref().is_some_and(|only| only.iter().any(|o| o == name));
    // The echo group puts the server on one CPU and the load on another, when it can.
    let echo_pin = match cpus {
        [server, load, ..] if taskset => Some(Pin {
            server: server.to_string(),
            load: vec![load.to_string()],
        }),
        _ => {
            notes.push("taskset is missing or there is one CPU: the echo group ran unpinned".to_owned());
            None
        }
    };
    let mut groups = scenario::groups(options.smoke, echo_pin);
    // Multicore needs pinning. By default it runs with 4 CPUs or more (1 and 2 server cores, at least); asked for by
    // name, or in the smoke (1 core), with whatever there is.
    let multicore_named = named("multicore") || groups_named(options, "multicore-");
    let multicore_default = options.only.is_none() && (options.smoke || cpus.len() >= 4);
    if multicore_named || multicore_default {
        if taskset {
            let (more, skipped) = multicore::groups(&options.cores, cpus, options.smoke);
            groups.extend(more);
            notes.extend(skipped);
        } else {
            notes.push("taskset is missing: the multicore groups were skipped".to_owned());
        }
    } else if options.only.is_none() {
        notes.push(format!(
            "the multicore groups did not run: {} CPU(s) here (they run by default with 4 or more; --only multicore \
             runs them anyway)",
            cpus.len()
        ));
    }
    if options.targets.contains(&Target::Cluster) {
        groups.extend(cluster::groups(options.smoke, options.crash_users));
    }
    let wanted = |group: &Group| {
        options.only.as_ref().is_none_or(|only| {
            only.iter()
                .any(|o| *o == group.name || (!group.family.is_empty() && *o == group.family))
        })
    };
    groups.retain(wanted);
    if groups.iter().any(|group| group.family == "cluster") && redis::find_server().is_none() {
        if redis::required() {
            let hint = "apt-get install redis-server, or run .ci/steps/05-redis.sh";
            return Err(format!("EMITTER_REDIS=1 but redis-server is not on PATH ({hint})"));
        }
        notes.push("redis-server is not on PATH: the cluster groups were skipped".to_owned());
        groups.retain(|group| group.family != "cluster");
    }
    Ok((groups, notes))
}

fn groups_named(options: &Options, prefix: &str) -> bool {
    options
        .only
        .as_ref()
        .is_some_and(|only| only.iter().any(|o| o.starts_with(prefix)))
}

pub fn main(args: &[String], smoke: bool) -> Result<(), BoxError> {
    let options = parse_options(args, smoke)?;
    std::fs::create_dir_all(&options.logs)?;
    let taskset = Command::new("taskset")
        .arg("-c")
        .arg("0")
        .arg("true")
        .status()
        .is_ok_and(|status| status.success());
    let cpus = multicore::allowed_cpus();
    let mut results = Results::new(&options.targets, options.rounds);
    results.notes.push(format!(
        "load average when the run started: {}; {} CPU(s) available",
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        cpus.len()
    ));
    let (groups, notes) = plan(&options, taskset, &cpus)?;
    for note in notes {
        eprintln!("note: {note}");
        results.notes.push(note);
    }
    let mut runner = Runner {
        options: &options,
        epoch: clock::unix_ns(),
        failures: 0,
    };
    for group in &groups {
        results.describe(&group.name, describe(group));
    }
    for round in 0..options.rounds {
        eprintln!("== round {} of {}", round + 1, options.rounds);
        for (g, group) in groups.iter().enumerate() {
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
                runner.run(group, target, &mut results);
            }
        }
    }
    let scale_wanted = options
        .only
        .as_ref()
        .is_none_or(|only| only.iter().any(|o| o == "scale"));
    if options.scale_users > 0 && scale_wanted {
        let group = scenario::scale_group(options.smoke, options.scale_users, options.scale_workers);
        results.describe(&group.name, describe(&group));
        eprintln!("== scale");
        for target in options.targets.iter().copied().filter(|t| group.targets.contains(t)) {
            runner.run(&group, target, &mut results);
        }
    }
    report_all(&results, &options)?;
    if runner.failures > 0 {
        return Err(format!(
            "{} scenario run(s) failed; see the notes above and the server logs in {}",
            runner.failures,
            options.logs.display()
        )
        .into());
    }
    Ok(())
}

/// Runs groups against targets, one at a time, and counts the runs that failed.
struct Runner<'a> {
    options: &'a Options,
    /// The clock every load process reads send times against.
    epoch: u64,
    failures: u32,
}

impl Runner<'_> {
    /// Runs `group` against `target` and files what it measured (or why it could not) in `results`.
    fn run(&mut self, group: &Group, target: Target, results: &mut Results) {
        let log = self.options.logs.join(format!("{}-{}.log", group.name, target.name()));
        eprintln!(
            "[{}] {} on {}: {}",
            clock::now(),
            group.name,
            target.name(),
            describe(group)
        );
        let started = Instant::now();
        let server_cpus = group.pin.as_ref().map(|pin| pin.server.as_str());
        let load_cpus = group.pin.as_ref().map_or(&[][..], |pin| &pin.load[..]);
        let lease_ms = group.crash.as_ref().map(|crash| crash.lease_ms);
        let deployment = Deployment::start(target, &self.options.node_dir, server_cpus, &log, lease_ms);
        let outcome = deployment.and_then(|mut deployment| {
            let outcome = match &group.crash {
                Some(crash) => cluster::run_crash(&mut deployment, crash, self.epoch),
                None => run_load(&deployment, target, &group.load, self.epoch, load_cpus),
            };
            deployment.stop();
            outcome
        });
        match outcome {
            Ok(outcome) => self.file(group, target, &outcome, started, results),
            Err(error) => {
                self.failures += 1;
                eprintln!("    failed: {error}");
                results
                    .notes
                    .push(format!("{} on {} failed: {error}", group.name, target.name()));
            }
        }
    }

    /// Files a run's metrics, and a note when it did not go as planned (not every user linked, disconnects, wrong
    /// views, nothing sent, errors).
    fn file(&mut self, group: &Group, target: Target, outcome: &Outcome, started: Instant, results: &mut Results) {
        let values = metrics(group, target, outcome);
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
            self.failures += u32::from(broken);
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
}

/// Prints the tables and the goals' verdicts, and writes the report when `--out` asks for one.
fn report_all(results: &Results, options: &Options) -> Result<(), BoxError> {
    for table in [
        report::table(results),
        report::multicore::table(results),
        report::cluster::table(results),
    ] {
        if !table.is_empty() {
            println!("{table}");
        }
    }
    if let Some(out) = &options.out {
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        report::write(results, out, &command)?;
        eprintln!("wrote {}", out.display());
    }
    let summary: BTreeMap<_, _> = report::checks(results).into_iter().collect();
    for (goal, verdict) in &summary {
        eprintln!("{goal}: {verdict}");
    }
    Ok(())
}
