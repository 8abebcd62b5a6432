//! The scenario groups: what load each one puts on which targets, where it is pinned, and the metrics it yields.

use crate::load::{Load, Outcome};
use crate::servers::target::Target;

pub mod cluster;
pub mod multicore;

/// Where a group's server and load processes run (`taskset -c` lists).
#[derive(Clone, Debug)]
pub struct Pin {
    /// The server's CPUs, e.g. `0-3`.
    pub server: String,
    /// One entry per load core; worker `w` runs on `load[w % load.len()]`.
    pub load: Vec<String>,
}

/// A node crash: `victims` users linked on the last node, the nodes' lease `lease_ms`.
#[derive(Clone, Debug)]
pub struct Crash {
    pub victims: u32,
    pub lease_ms: u64,
}

/// A scenario: one load, run against each of its targets.
pub struct Group {
    pub name: String,
    /// What `--only` matches besides the name: the multicore groups share `multicore`.
    pub family: &'static str,
    pub targets: &'static [Target],
    pub load: Load,
    /// Pin the server and the load to these CPUs; `None` lets the scheduler place them.
    pub pin: Option<Pin>,
    /// Instead of running `load`: link `load.users` users on one node of a cluster and kill it (the crash groups).
    pub crash: Option<Crash>,
}

const KRMX_TARGETS: &[Target] = &[Target::Emitter, Target::Before, Target::Node];
const ALL_TARGETS: &[Target] = &Target::SINGLE;
/// Node is left out where it would take too long (its link storms are O(N²) at a fraction of our rate) or where a
/// single-threaded server has nothing to show (the multicore groups).
pub const NO_NODE: &[Target] = &[Target::Emitter, Target::Before, Target::Axum, Target::AxumEqual];

/// Users per load process in the larger storms: each connection is a file descriptor of the worker, and a few
/// thousand per process keeps every process far below a per-process limit of 20,000 and spreads the parsing.
const USERS_PER_WORKER: u32 = 5_000;

/// The groups run every round, in order. `echo_pin` places the echo group (server and load on a core each).
pub fn groups(smoke: bool, echo_pin: Option<Pin>) -> Vec<Group> {
    let (duration_ms, warmup_ms) = if smoke { (1_000, 200) } else { (10_000, 2_000) };
    let storm = |users: u32| Load {
        track_views: true,
        workers: users.div_ceil(USERS_PER_WORKER),
        link_timeout_ms: if smoke { 30_000 } else { 600_000 },
        ..Load::population(users)
    };
    let fanout = |users: u32, senders: u32| Load {
        senders,
        duration_ms,
        warmup_ms,
        ..Load::population(users)
    };
    let (small, large, medium, huge) = if smoke {
        (50, 100, 150, 200)
    } else {
        (1_000, 2_000, 5_000, 10_000)
    };
    let (fan_users, fan_senders) = if smoke { (20, 2) } else { (200, 10) };
    let group = |name: &str, targets, load, pin| Group {
        name: name.to_owned(),
        family: "",
        targets,
        load,
        pin,
        crash: None,
    };
    let mut groups = vec![
        group("storm1k", KRMX_TARGETS, storm(small), None),
        group(
            "storm2k",
            ALL_TARGETS,
            Load {
                measure_idle: true,
                senders: 1,
                window: 4,
                duration_ms: duration_ms / 2,
                warmup_ms: warmup_ms / 2,
                ..storm(large)
            },
            None,
        ),
        // The idle footprint at the size the issue that set its goal named (6 KiB per connection after 5,000 links):
        // large enough that the server's fixed memory is spread thin, small enough for one load process.
        group(
            "storm5k",
            NO_NODE,
            Load {
                measure_idle: true,
                ..storm(medium)
            },
            None,
        ),
        // The idle footprint at 10,000 users: emitter's per-user state and what a storm of 200 million frames leaves
        // behind, at the size where it starts to matter. Node is left out: its storm would take most of an hour.
        group(
            "storm10k",
            NO_NODE,
            Load {
                measure_idle: true,
                ..storm(huge)
            },
            None,
        ),
        group(
            "fanout-rate",
            ALL_TARGETS,
            Load {
                rate: 50.0,
                ..fanout(fan_users, fan_senders)
            },
            None,
        ),
        group(
            "fanout-max",
            ALL_TARGETS,
            Load {
                window: 32,
                ..fanout(fan_users, fan_senders)
            },
            None,
        ),
        group(
            "echo",
            ALL_TARGETS,
            Load {
                echo: true,
                window: 1,
                ..fanout(if smoke { 4 } else { 50 }, if smoke { 4 } else { 50 })
            },
            echo_pin.clone(),
        ),
    ];
    // The echo a user would measure by hand: the server on one core and the load on the other, 50 users each with
    // one echo in flight, 6 s per run (the first second not counted). Not in the smoke: its echo group covers it.
    // (The setups users copy for the link storm and the fan-out at full rate are storm1k and fanout-max as they are.)
    if !smoke {
        groups.push(group(
            "echo-pinned",
            NO_NODE,
            Load {
                echo: true,
                window: 1,
                duration_ms: 6_000,
                warmup_ms: 1_000,
                ..fanout(50, 50)
            },
            echo_pin,
        ));
    }
    groups
}

/// The scale run: once per run, after the rounds.
pub fn scale_group(smoke: bool, users: u32, workers: u32) -> Group {
    Group {
        name: "scale".to_owned(),
        family: "",
        targets: NO_NODE,
        load: Load {
            workers,
            in_flight: 64,
            senders: 1,
            window: 8,
            duration_ms: if smoke { 1_000 } else { 10_000 },
            warmup_ms: if smoke { 200 } else { 2_000 },
            link_timeout_ms: if smoke { 60_000 } else { 1_800_000 },
            ..Load::population(users)
        },
        pin: None,
        crash: None,
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Turns one outcome into named metric values (`group.metric`).
pub fn metrics(group: &Group, target: Target, outcome: &Outcome) -> Vec<(String, f64)> {
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
    let storm = load.track_views || group.name == "scale";
    if storm && target.krmx() {
        put("linked", f64::from(outcome.linked));
        if link_span > 0.0 {
            put("links_per_s", f64::from(outcome.linked) / link_span);
        }
        // What a link cost the server in CPU (the messages it sends included): unlike links/s, it holds still on a
        // machine others share.
        if let Some(cpu_s) = outcome.link_cpu_s.filter(|_| outcome.linked > 0) {
            put("server_us_per_link", cpu_s / f64::from(outcome.linked) * 1e6);
            // Every process of the run: the server's (every node), the load's and Redis's. When the run has the
            // machine's cores busy, links/s follows the inverse of this, whatever the setup.
            if let Some(load_s) = outcome.link_load_cpu_s {
                let redis_s = outcome.redis_cpu_s.as_ref().map_or(0.0, |redis| redis.linking);
                put("load_us_per_link", load_s / f64::from(outcome.linked) * 1e6);
                put(
                    "all_us_per_link",
                    (cpu_s + load_s + redis_s) / f64::from(outcome.linked) * 1e6,
                );
            }
        }
        put("link_p50_ms", ms(outcome.link_latency.quantile(0.5)));
        put("link_p99_ms", ms(outcome.link_latency.quantile(0.99)));
        if let Some((complete, correct, at)) = outcome.views {
            put("correct_pct", 100.0 * f64::from(correct) / f64::from(load.users));
            if complete == load.users {
                put("views_s", at.saturating_sub(outcome.first_start) as f64 / 1e9);
            }
        }
    } else if storm {
        put("linked", f64::from(outcome.linked));
    }
    if let Some(crash) = &outcome.crash {
        put("unlinked_all_s", crash.all_unlinked_s);
        put(
            "unlinked_spread_ms",
            (crash.all_unlinked_s - crash.first_unlinked_s) * 1e3,
        );
    }
    if let Some(redis) = &outcome.redis_cpu_s {
        put("redis_idle_pct", 100.0 * redis.idle_rate);
        // Groups that only link: everything Redis did counts for the links.
        if load.duration_ms == 0 && outcome.linked > 0 {
            put("redis_us_per_link", redis.linking * 1e6 / f64::from(outcome.linked));
        }
        if let Some(measured) = redis.measured.filter(|_| !load.echo && outcome.sent > 0) {
            put("redis_us_per_broadcast", measured * 1e6 / outcome.sent as f64);
            if redis.measured_wall > 0.0 {
                put("redis_cpu_pct", 100.0 * measured / redis.measured_wall);
            }
        }
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
        // What each one cost the server, in CPU: on a machine others share, the rate follows the CPU the server
        // gets, while this stays put.
        if let Some(cpu_s) = outcome.server_cpu_s.filter(|_| outcome.received > 0) {
            put("server_us_per_msg", cpu_s / outcome.received as f64 * 1e6);
        }
        put("loss_pct", loss);
        let scale = if load.echo { 1e3 } else { 1e6 }; // echo in µs, the rest in ms
        let unit = if load.echo { "us" } else { "ms" };
        for (q, name) in [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (1.0, "max")] {
            put(&format!("{name}_{unit}"), outcome.latency.quantile(q) as f64 / scale);
        }
    }
    values
}

/// What a group runs, in a sentence for the report's legend. It starts with the number of users (the report reads it
/// back for the "all linked" goal).
pub fn describe(group: &Group) -> String {
    let load = &group.load;
    if let Some(crash) = &group.crash {
        return describe_crash(crash);
    }
    let mut text = format!("{} users", load.users);
    if load.workers > 1 {
        text += &format!(" over {} load processes", load.workers);
        if group.targets.contains(&Target::Cluster) {
            text += " (against the cluster, one per node)";
        }
    }
    if load.track_views {
        text += &format!(", {} links in flight", load.in_flight);
    }
    if load.measure_idle {
        text += ", then 2 s idle";
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
    if group.targets.contains(&Target::Cluster) && load.senders > 0 {
        text += ", every sender on the first node";
    }
    if let Some(pin) = &group.pin {
        let per_core = if load.workers > 1 {
            ", one load process per core"
        } else {
            ""
        };
        text += &format!(
            ", server on CPU {} and load on CPU {}{per_core}",
            pin.server,
            pin.load.join(",")
        );
    }
    text
}

/// What one crash group runs, for the legend.
pub fn describe_crash(crash: &Crash) -> String {
    format!(
        "{} users linked on node n{}, one client on n1; n{} is SIGKILLed; lease {} s (renewed every third of it), dead \
         nodes reaped every 1 s, so the unlinks are due between about {:.1} and {:.1} s after the kill",
        crash.victims,
        crate::servers::process::NODES,
        crate::servers::process::NODES,
        crash.lease_ms as f64 / 1e3,
        crash.lease_ms as f64 * 2.0 / 3.0 / 1e3,
        crash.lease_ms as f64 / 1e3 + 1.0,
    )
}
