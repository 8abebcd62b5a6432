//! The report of a run: the goals of the performance issue with their verdicts, and the files under docs/: a
//! Markdown table (results.md), a plot of the ratios (ratios.svg) and every raw value (results.json).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

pub mod cluster;
pub mod multicore;
mod svg;

use crate::results::{format_ratio, format_value, verdict, versus, Results};
use crate::servers::target::Target;
use svg::svg_start;

/// What a metric is checked against.
#[derive(Clone, Copy)]
enum Goal {
    None,
    /// Our advantage over Node (×) is at least this.
    VsNode(f64),
    /// Our advantage over bare axum (×) is at least this.
    VsAxum(f64),
    /// Our value is at most this.
    AtMost(f64),
    /// Our value is at least this.
    AtLeast(f64),
    /// Every user of the group linked.
    AllLinked,
}

struct Def {
    key: &'static str,
    label: &'static str,
    higher_is_better: bool,
    /// Whether a ratio between targets means anything (not for loss or correctness percentages).
    ratio: bool,
    goal: Goal,
}

const fn def(key: &'static str, label: &'static str, higher_is_better: bool, ratio: bool, goal: Goal) -> Def {
    Def {
        key,
        label,
        higher_is_better,
        ratio,
        goal,
    }
}

/// Every metric the table shows, in order.
const DEFS: &[Def] = &[
    def("storm1k.links_per_s", "links/s", true, true, Goal::VsNode(40.0)),
    def(
        "storm1k.server_us_per_link",
        "server CPU per link (µs)",
        false,
        true,
        Goal::None,
    ),
    def("storm1k.link_p50_ms", "link latency p50 (ms)", false, true, Goal::None),
    def("storm1k.link_p99_ms", "link latency p99 (ms)", false, true, Goal::None),
    def(
        "storm1k.views_s",
        "until every client saw every user (s)",
        false,
        true,
        Goal::None,
    ),
    def(
        "storm1k.correct_pct",
        "clients with the full, correct user list (%)",
        true,
        false,
        Goal::AtLeast(100.0),
    ),
    def("storm2k.links_per_s", "links/s", true, true, Goal::VsNode(40.0)),
    def("storm2k.link_p50_ms", "link latency p50 (ms)", false, true, Goal::None),
    def("storm2k.link_p99_ms", "link latency p99 (ms)", false, true, Goal::None),
    def(
        "storm2k.views_s",
        "until every client saw every user (s)",
        false,
        true,
        Goal::None,
    ),
    def(
        "storm2k.correct_pct",
        "clients with the full, correct user list (%)",
        true,
        false,
        Goal::AtLeast(100.0),
    ),
    def(
        "storm2k.idle_kib",
        "idle: server RSS per linked connection (KiB)",
        false,
        true,
        Goal::AtMost(10.0),
    ),
    def(
        "storm2k.delivered_per_s",
        "broadcast to many: delivered msgs/s",
        true,
        true,
        Goal::None,
    ),
    def(
        "storm2k.loss_pct",
        "broadcast to many: loss (%)",
        false,
        false,
        Goal::None,
    ),
    def(
        "storm2k.p50_ms",
        "broadcast to many: latency p50 (ms)",
        false,
        true,
        Goal::None,
    ),
    def(
        "storm2k.p99_ms",
        "broadcast to many: latency p99 (ms)",
        false,
        true,
        Goal::None,
    ),
    def("storm5k.links_per_s", "links/s", true, true, Goal::None),
    def(
        "storm5k.correct_pct",
        "clients with the full, correct user list (%)",
        true,
        false,
        Goal::AtLeast(100.0),
    ),
    def(
        "storm5k.idle_kib",
        "idle: server RSS per linked connection (KiB)",
        false,
        true,
        Goal::AtMost(6.0),
    ),
    def("storm10k.links_per_s", "links/s", true, true, Goal::None),
    def("storm10k.link_p50_ms", "link latency p50 (ms)", false, true, Goal::None),
    def("storm10k.link_p99_ms", "link latency p99 (ms)", false, true, Goal::None),
    def(
        "storm10k.views_s",
        "until every client saw every user (s)",
        false,
        true,
        Goal::None,
    ),
    def(
        "storm10k.correct_pct",
        "clients with the full, correct user list (%)",
        true,
        false,
        Goal::AtLeast(100.0),
    ),
    def(
        "storm10k.idle_kib",
        "idle: server RSS per linked connection (KiB)",
        false,
        true,
        Goal::AtMost(10.0),
    ),
    def(
        "fanout-rate.delivered_per_s",
        "delivered msgs/s",
        true,
        true,
        Goal::None,
    ),
    def("fanout-rate.loss_pct", "loss (%)", false, false, Goal::None),
    def("fanout-rate.p50_ms", "latency p50 (ms)", false, true, Goal::None),
    def("fanout-rate.p90_ms", "latency p90 (ms)", false, true, Goal::None),
    def("fanout-rate.p99_ms", "latency p99 (ms)", false, true, Goal::None),
    def("fanout-rate.max_ms", "latency max (ms)", false, true, Goal::None),
    def(
        "fanout-max.delivered_per_s",
        "delivered msgs/s",
        true,
        true,
        Goal::VsAxum(0.9),
    ),
    def("fanout-max.loss_pct", "loss (%)", false, false, Goal::None),
    def(
        "fanout-max.server_us_per_msg",
        "server CPU per delivery (µs)",
        false,
        true,
        Goal::None,
    ),
    def("fanout-max.p50_ms", "latency p50 (ms)", false, true, Goal::None),
    def("fanout-max.p90_ms", "latency p90 (ms)", false, true, Goal::None),
    def("fanout-max.p99_ms", "latency p99 (ms)", false, true, Goal::None),
    def("fanout-max.max_ms", "latency max (ms)", false, true, Goal::None),
    def(
        "fanout-max.server_cpu_pct",
        "server CPU (% of a core)",
        false,
        false,
        Goal::None,
    ),
    def(
        "fanout-max.load_cpu_pct",
        "load generator CPU (% of a core)",
        false,
        false,
        Goal::None,
    ),
    def("echo.rtt_per_s", "round trips/s", true, true, Goal::VsAxum(0.9)),
    def("echo.p50_us", "RTT p50 (µs)", false, true, Goal::None),
    def("echo.p90_us", "RTT p90 (µs)", false, true, Goal::None),
    def("echo.p99_us", "RTT p99 (µs)", false, true, Goal::None),
    def("echo.max_us", "RTT max (µs)", false, true, Goal::None),
    def("echo-pinned.rtt_per_s", "round trips/s", true, true, Goal::VsAxum(0.95)),
    def(
        "echo-pinned.server_us_per_msg",
        "server CPU per round trip (µs)",
        false,
        true,
        Goal::None,
    ),
    def("echo-pinned.p50_us", "RTT p50 (µs)", false, true, Goal::None),
    def("echo-pinned.p99_us", "RTT p99 (µs)", false, true, Goal::None),
    def(
        "scale.linked",
        "users linked in one process",
        true,
        false,
        Goal::AllLinked,
    ),
    def("scale.links_per_s", "links/s while filling up", true, true, Goal::None),
    def(
        "scale.delivered_per_s",
        "broadcast to all: delivered msgs/s",
        true,
        true,
        Goal::None,
    ),
    def("scale.loss_pct", "broadcast to all: loss (%)", false, false, Goal::None),
    def(
        "scale.p50_ms",
        "broadcast to all: latency p50 (ms)",
        false,
        true,
        Goal::None,
    ),
    def(
        "scale.p99_ms",
        "broadcast to all: latency p99 (ms)",
        false,
        true,
        Goal::None,
    ),
    def(
        "scale.max_ms",
        "broadcast to all: latency max (ms)",
        false,
        true,
        Goal::None,
    ),
    def(
        "scale.server_cpu_pct",
        "broadcast to all: server CPU (% of a core)",
        false,
        false,
        Goal::None,
    ),
];

/// Our advantage over `other` on a metric of the table, when a ratio means anything for it.
fn advantage(results: &Results, def: &Def, other: Target) -> Option<f64> {
    def.ratio
        .then(|| results.advantage(def.key, def.higher_is_better, other))
        .flatten()
}

/// Each goal of the issue with its verdict: met, missed by how much, or not measured; with the numbers.
pub fn checks(results: &Results) -> Vec<(String, String)> {
    let mut checks = Vec::new();
    for def in DEFS {
        let group = def.key.split('.').next().unwrap_or_default();
        let name = |what: String| format!("{group} {}: {what}", def.label);
        match def.goal {
            Goal::None => {}
            Goal::VsNode(goal) => checks.push((
                name(format!("≥ {goal}× node")),
                versus(
                    results,
                    def.key,
                    verdict(advantage(results, def, Target::Node), goal, true, "×"),
                    Target::Node,
                ),
            )),
            Goal::VsAxum(goal) => checks.push((
                name(format!("≥ {goal}× bare axum (default buffers)")),
                versus(
                    results,
                    def.key,
                    verdict(advantage(results, def, Target::Axum), goal, true, "×"),
                    Target::Axum,
                ),
            )),
            Goal::AtMost(goal) => checks.push((
                name(format!("≤ {goal}")),
                verdict(results.median(def.key, Target::Emitter), goal, false, ""),
            )),
            Goal::AtLeast(goal) => checks.push((
                name(format!("≥ {goal}")),
                verdict(results.median(def.key, Target::Emitter), goal, true, ""),
            )),
            Goal::AllLinked => {
                if let Some(users) = results.group_users(group) {
                    checks.push((
                        name(format!("all {users} linked")),
                        verdict(results.median(def.key, Target::Emitter), users, true, ""),
                    ));
                }
            }
        }
    }
    if let (Some(axum), Some(node)) = (
        results.median("fanout-max.delivered_per_s", Target::Axum),
        results.median("fanout-max.delivered_per_s", Target::Node),
    ) {
        let ratio = axum / node;
        let verdict = if ratio >= 10.0 { "holds" } else { "does not hold" };
        checks.push((
            "fanout-max: bare axum ≥ 10× node (the premise)".to_owned(),
            format!("{verdict} ({})", format_ratio(ratio)),
        ));
    }
    checks.extend(multicore::checks(results));
    if results.has(Target::Cluster) {
        checks.extend(cluster::checks(results));
    }
    checks
}

/// The Markdown table of medians and ratios; empty when none of its groups ran.
pub fn table(results: &Results) -> String {
    if !DEFS.iter().any(|def| results.values.contains_key(def.key)) {
        return String::new();
    }
    let mut out = String::new();
    let shown: Vec<Target> = Target::SINGLE
        .into_iter()
        .filter(|target| results.has(*target))
        .collect();
    let _ = write!(out, "| group | metric |");
    for target in &shown {
        let _ = write!(out, " {} |", target.name());
    }
    // Ratios against the reference and the bare server with default buffers, which the goals are measured against;
    // axum-equal gets a column of values only, to explain a difference rather than to set a bar.
    let ratio_targets: Vec<Target> = shown
        .iter()
        .copied()
        .filter(|t| matches!(t, Target::Before | Target::Node | Target::Axum))
        .collect();
    for target in &ratio_targets {
        let _ = write!(out, " emitter vs {} |", target.name());
    }
    let _ = writeln!(out, " goal |");
    let _ = writeln!(out, "|{}", "---|".repeat(3 + shown.len() + ratio_targets.len()));
    let mut last_group = "";
    for def in DEFS {
        if !results.values.contains_key(def.key) {
            continue;
        }
        let group = def.key.split('.').next().unwrap_or_default();
        let group_cell = if group == last_group { "" } else { group };
        last_group = group;
        let _ = write!(out, "| {group_cell} | {} |", def.label);
        for target in &shown {
            let cell = results.median(def.key, *target).map(format_value);
            let _ = write!(out, " {} |", cell.as_deref().unwrap_or("–"));
        }
        for target in &ratio_targets {
            let cell = advantage(results, def, *target).map(format_ratio);
            let _ = write!(out, " {} |", cell.as_deref().unwrap_or("–"));
        }
        let goal = match def.goal {
            Goal::None => String::new(),
            Goal::VsNode(goal) => format!("≥ {goal}× node"),
            Goal::VsAxum(goal) => format!("≥ {goal}× axum"),
            Goal::AtMost(goal) => format!("≤ {goal}"),
            Goal::AtLeast(goal) => format!("≥ {goal}"),
            Goal::AllLinked => "all".to_owned(),
        };
        let _ = writeln!(out, " {goal} |");
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A horizontal bar chart of our advantage over each other target, on a log scale, with the goals marked.
pub fn svg(results: &Results) -> String {
    let others: Vec<Target> = [Target::Node, Target::Axum]
        .into_iter()
        .filter(|target| results.has(*target))
        .collect();
    let rows: Vec<(&Def, Vec<Option<f64>>)> = DEFS
        .iter()
        .filter(|def| def.ratio)
        .map(|def| {
            (
                def,
                others
                    .iter()
                    .map(|other| advantage(results, def, *other))
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|(_, ratios)| ratios.iter().any(Option::is_some))
        .collect();
    let colors = ["#d9822b", "#2b7bd9"];
    let (left, plot, row_h, top) = (330.0, 540.0, 30.0, 70.0);
    let (lo, hi) = (-1.0f64, 3.0f64); // 0.1× .. 1000×
    let x = |ratio: f64| left + (ratio.log10().clamp(lo, hi) - lo) / (hi - lo) * plot;
    let height = top + rows.len() as f64 * row_h + 40.0;
    let width = left + plot + 30.0;
    let mut out = svg_start(
        width,
        height,
        "emitter's advantage (×, log scale; right of 1× is better for emitter)",
    );
    for (i, other) in others.iter().enumerate() {
        let lx = left + i as f64 * 140.0;
        let _ = writeln!(
            out,
            r#"<rect x="{lx}" y="34" width="12" height="12" fill="{}"/><text x="{}" y="45">vs {}</text>"#,
            colors[i],
            lx + 16.0,
            other.name()
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="45">| goal</text>"#,
        left + others.len() as f64 * 140.0
    );
    for decade in [-1, 0, 1, 2, 3] {
        let ratio = 10f64.powi(decade);
        let gx = x(ratio);
        let stroke = if decade == 0 { "#000" } else { "#ccc" };
        let _ = writeln!(
            out,
            r#"<line x1="{gx}" y1="{}" x2="{gx}" y2="{}" stroke="{stroke}"/><text x="{gx}" y="{}" text-anchor="middle">{}×</text>"#,
            top - 8.0,
            height - 30.0,
            height - 14.0,
            if decade < 0 {
                "0.1".to_owned()
            } else {
                format!("{}", ratio as u64)
            }
        );
    }
    for (r, (def, ratios)) in rows.iter().enumerate() {
        let y = top + r as f64 * row_h;
        let group = def.key.split('.').next().unwrap_or_default();
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{} {}</text>"#,
            left - 8.0,
            y + 16.0,
            escape(group),
            escape(def.label)
        );
        for (i, ratio) in ratios.iter().enumerate() {
            let Some(ratio) = ratio else { continue };
            let by = y + 4.0 + i as f64 * 11.0;
            let (x0, x1) = (x(1.0).min(x(*ratio)), x(1.0).max(x(*ratio)));
            let _ = writeln!(
                out,
                r#"<rect x="{x0:.1}" y="{by}" width="{:.1}" height="10" fill="{}"/><text x="{:.1}" y="{}" font-size="10">{}</text>"#,
                (x1 - x0).max(1.0),
                colors[i],
                x1 + 3.0,
                by + 9.0,
                format_ratio(*ratio)
            );
        }
        let goal = match def.goal {
            Goal::VsNode(goal) => others.iter().position(|t| *t == Target::Node).map(|i| (i, goal)),
            Goal::VsAxum(goal) => others.iter().position(|t| *t == Target::Axum).map(|i| (i, goal)),
            _ => None,
        };
        if let Some((i, goal)) = goal {
            let gx = x(goal);
            let by = y + 2.0 + i as f64 * 11.0;
            let _ = writeln!(
                out,
                r##"<line x1="{gx:.1}" y1="{by}" x2="{gx:.1}" y2="{}" stroke="#000" stroke-width="2"/>"##,
                by + 14.0
            );
        }
    }
    let _ = writeln!(out, "</svg>");
    out
}

/// Writes results.md, ratios.svg, multicore.svg and results.json into `dir`.
pub fn write(results: &Results, dir: &Path, command: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "<!-- Generated by `emitter-bench suite` (`just bench`); do not edit by hand. -->\n"
    );
    let _ = writeln!(
        md,
        "Run of {}: `{}`, {} round(s), medians shown. Ratios are emitter's advantage (above 1× is better for \
         emitter, whichever way the metric points).\n",
        results.started, command, results.rounds
    );
    let main_table = table(results);
    if !main_table.is_empty() {
        let _ = writeln!(md, "{main_table}");
    }
    let multicore_table = multicore::table(results);
    if multicore_table.is_empty() {
        let _ = writeln!(md, "Multicore: not run (see the notes below).\n");
    } else {
        let _ = writeln!(
            md,
            "Multicore: the server pinned to the first k CPUs and the load to the others; echo in round trips/s, \
             fan-out in deliveries/s, medians (emitter ÷ axum above 1× is better for emitter), then the CPU each side \
             used (% of one core):\n"
        );
        let _ = writeln!(md, "{multicore_table}");
    }
    let cluster_table = cluster::table(results);
    if !cluster_table.is_empty() {
        let _ = writeln!(
            md,
            "Cluster: three processes of examples/bench, each a node of one cluster on a redis-server of its own, \
             against the same server alone, on the same machine; medians:\n"
        );
        let _ = writeln!(md, "{cluster_table}");
    }
    let _ = writeln!(md, "Groups:\n");
    for (group, text) in &results.groups {
        if results.values.keys().any(|key| key.starts_with(&format!("{group}."))) {
            let _ = writeln!(md, "- **{group}**: {text}");
        }
    }
    let _ = writeln!(md, "\nGoals:\n");
    for (goal, verdict) in checks(results) {
        let _ = writeln!(md, "- {goal} — {verdict}");
    }
    if !results.notes.is_empty() {
        let _ = writeln!(md, "\nNotes:\n");
        for note in &results.notes {
            let _ = writeln!(md, "- {}", note.replace('\n', " "));
        }
    }
    std::fs::write(dir.join("results.md"), md)?;
    std::fs::write(dir.join("ratios.svg"), svg(results))?;
    std::fs::write(dir.join("multicore.svg"), multicore::svg(results))?;
    let json = serde_json::json!({
        "started": results.started,
        "command": command,
        "rounds": results.rounds,
        "values": results.values.iter().map(|(metric, by_target)| {
            (metric.clone(), by_target.iter().map(|(t, v)| (t.name().to_owned(), v.clone())).collect::<BTreeMap<_, _>>())
        }).collect::<BTreeMap<_, _>>(),
        "notes": results.notes,
    });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&json).unwrap_or_default() + "\n",
    )?;
    Ok(())
}
