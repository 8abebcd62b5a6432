//! The multicore part of the report: throughput by number of server cores, per target, as a table, goals and a plot
//! (multicore.svg, beside ratios.svg).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::svg::svg_start;
use crate::results::{format_ratio, format_value, verdict, versus, Results};
use crate::servers::target::Target;

/// One throughput the multicore groups measure.
struct Metric {
    /// The group's kind: `multicore-<kind>-<k>c`.
    kind: &'static str,
    /// The metric's key within the group.
    value: &'static str,
    name: &'static str,
    unit: &'static str,
}

const ECHO: Metric = Metric {
    kind: "echo",
    value: "rtt_per_s",
    name: "echo",
    unit: "round trips/s",
};
const FANOUT: Metric = Metric {
    kind: "fanout",
    value: "delivered_per_s",
    name: "fan-out",
    unit: "deliveries/s",
};

/// The goals: on 8 server cores, echo and fan-out at least this fraction of bare axum's…
const VS_AXUM_AT_8: f64 = 0.8;
/// …and echo on 8 cores at least this many times echo on 1.
const SCALING_8_OVER_1: f64 = 5.0;

fn key(metric: &Metric, cores: u32, value: &str) -> String {
    format!("multicore-{}-{cores}c.{value}", metric.kind)
}

/// The server core counts measured, ascending.
fn measured(results: &Results) -> Vec<u32> {
    let cores: BTreeSet<u32> = results
        .values
        .keys()
        .filter_map(|key| {
            let group = key.split('.').next()?;
            let rest = group
                .strip_prefix("multicore-echo-")
                .or_else(|| group.strip_prefix("multicore-fanout-"))?;
            rest.strip_suffix('c')?.parse().ok()
        })
        .collect();
    cores.into_iter().collect()
}

/// The targets shown: the ones of the run that the multicore groups measure.
fn shown(results: &Results) -> Vec<Target> {
    [Target::Emitter, Target::Axum, Target::AxumEqual]
        .into_iter()
        .filter(|target| results.has(*target))
        .collect()
}

/// emitter on `cores` ÷ emitter on 1 core.
fn scaling(results: &Results, metric: &Metric, cores: u32) -> Option<f64> {
    let many = results.median(&key(metric, cores, metric.value), Target::Emitter)?;
    let one = results.median(&key(metric, 1, metric.value), Target::Emitter)?;
    let ratio = many / one;
    ratio.is_finite().then_some(ratio)
}

/// The Markdown tables (throughput, then CPU), or nothing when no multicore group ran.
pub fn table(results: &Results) -> String {
    let cores = measured(results);
    if cores.is_empty() {
        return String::new();
    }
    let targets = shown(results);
    let cell = |value: Option<String>| value.unwrap_or_else(|| "–".to_owned());
    let mut out = String::new();
    let _ = write!(out, "| server cores |");
    for metric in [&ECHO, &FANOUT] {
        for target in &targets {
            let _ = write!(out, " {}: {} |", metric.name, target.name());
        }
        let _ = write!(
            out,
            " {0}: emitter ÷ axum | {0}: emitter ÷ emitter on 1 core |",
            metric.name
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "|---|{}", "---|".repeat(2 * (targets.len() + 2)));
    for &k in &cores {
        let _ = write!(out, "| {k} |");
        for metric in [&ECHO, &FANOUT] {
            let metric_key = key(metric, k, metric.value);
            for target in &targets {
                let _ = write!(
                    out,
                    " {} |",
                    cell(results.median(&metric_key, *target).map(format_value))
                );
            }
            let versus = results.advantage(&metric_key, true, Target::Axum).map(format_ratio);
            let _ = write!(out, " {} |", cell(versus));
            let _ = write!(out, " {} |", cell(scaling(results, metric, k).map(format_ratio)));
        }
        let _ = writeln!(out);
    }
    // CPU used during the measured phase, in % of one core: a server well below `cores × 100%` was waiting for the
    // load (or for the kernel's loopback work, which is charged to whichever side's CPU ran it).
    let _ = write!(out, "\n| server cores |");
    for metric in [&ECHO, &FANOUT] {
        for target in &targets {
            let _ = write!(out, " {}: {} server / load |", metric.name, target.name());
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "|---|{}", "---|".repeat(2 * targets.len()));
    for &k in &cores {
        let _ = write!(out, "| {k} |");
        for metric in [&ECHO, &FANOUT] {
            for target in &targets {
                let server = results.median(&key(metric, k, "server_cpu_pct"), *target);
                let load = results.median(&key(metric, k, "load_cpu_pct"), *target);
                let text = match (server, load) {
                    (Some(server), Some(load)) => Some(format!("{server:.0} / {load:.0}")),
                    _ => None,
                };
                let _ = write!(out, " {} |", cell(text));
            }
        }
        let _ = writeln!(out);
    }
    out
}

/// The multicore goals, each with its verdict.
pub fn checks(results: &Results) -> Vec<(String, String)> {
    let unmeasured = |text: String| {
        if text == "not measured" {
            "not measured (needs 8 server cores and 8 more for the load: 16 CPUs, `--only multicore`)".to_owned()
        } else {
            text
        }
    };
    let mut checks = Vec::new();
    for metric in [&ECHO, &FANOUT] {
        let metric_key = key(metric, 8, metric.value);
        let advantage = results.advantage(&metric_key, true, Target::Axum);
        checks.push((
            format!(
                "multicore {} ({}) on 8 server cores: ≥ {VS_AXUM_AT_8}× bare axum (default buffers)",
                metric.name, metric.unit
            ),
            versus(
                results,
                &metric_key,
                unmeasured(verdict(advantage, VS_AXUM_AT_8, true, "×")),
                Target::Axum,
            ),
        ));
    }
    checks.push((
        format!(
            "multicore {} ({}): emitter on 8 server cores ≥ {SCALING_8_OVER_1}× emitter on 1",
            ECHO.name, ECHO.unit
        ),
        match (
            scaling(results, &ECHO, 8),
            results.median(&key(&ECHO, 8, ECHO.value), Target::Emitter),
            results.median(&key(&ECHO, 1, ECHO.value), Target::Emitter),
        ) {
            (ratio @ Some(_), Some(eight), Some(one)) => format!(
                "{}; {} on 8 cores, {} on 1",
                verdict(ratio, SCALING_8_OVER_1, true, "×"),
                format_value(eight),
                format_value(one)
            ),
            _ => unmeasured(verdict(None, SCALING_8_OVER_1, true, "×")),
        },
    ));
    checks
}

/// A compact number for the plot's labels: 950, 85.2k, 1.23M.
fn short(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

/// Rounds up to 1, 2 or 5 times a power of ten, for the top of an axis.
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|step| step * power)
        .find(|top| *top >= value)
        .unwrap_or(10.0 * power)
}

const COLORS: [(Target, &str, &str); 3] = [
    (Target::Emitter, "#d62728", ""),
    (Target::Axum, "#2b7bd9", ""),
    (Target::AxumEqual, "#86b6ea", r#" stroke-dasharray="5,4""#),
];

/// Throughput against server cores, one panel per metric, one line per target.
pub fn svg(results: &Results) -> String {
    let cores = measured(results);
    let targets = shown(results);
    let (panel_w, panel_h, left, top, gap) = (380.0, 260.0, 70.0, 80.0, 90.0);
    let width = left + 2.0 * panel_w + gap + 30.0;
    let height = if cores.is_empty() { 80.0 } else { top + panel_h + 60.0 };
    let mut out = svg_start(
        width,
        height,
        "Throughput by server cores (server pinned to k CPUs, load on the others)",
    );
    if cores.is_empty() {
        let _ = writeln!(
            out,
            r#"<text x="10" y="60">No multicore run in these results: `emitter-bench suite --only multicore` (crates/emitter-bench/multicore.sh) on a machine with 4 CPUs or more.</text>"#
        );
        let _ = writeln!(out, "</svg>");
        return out;
    }
    for (i, (target, color, dash)) in COLORS.iter().filter(|(t, _, _)| targets.contains(t)).enumerate() {
        let lx = left + i as f64 * 150.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" y1="42" x2="{}" y2="42" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="46">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            target.name()
        );
    }
    let (lo, hi) = (f64::from(cores[0]).log2(), f64::from(cores[cores.len() - 1]).log2());
    for (p, metric) in [&ECHO, &FANOUT].into_iter().enumerate() {
        let x0 = left + p as f64 * (panel_w + gap);
        let x = |k: u32| {
            if hi > lo {
                x0 + 20.0 + (f64::from(k).log2() - lo) / (hi - lo) * (panel_w - 40.0)
            } else {
                x0 + panel_w / 2.0
            }
        };
        let values = |target: Target| -> Vec<(u32, f64)> {
            cores
                .iter()
                .filter_map(|&k| Some((k, results.median(&key(metric, k, metric.value), target)?)))
                .collect()
        };
        let max = targets
            .iter()
            .flat_map(|target| values(*target))
            .map(|(_, v)| v)
            .fold(0.0, f64::max);
        let y_top = nice_ceiling(max * 1.1);
        let y = |v: f64| top + panel_h - v / y_top * panel_h;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{}: {}</text>"#,
            x0 + panel_w / 2.0,
            top - 12.0,
            metric.name,
            metric.unit
        );
        for step in 0..=5 {
            let v = y_top * f64::from(step) / 5.0;
            let gy = y(v);
            let _ = writeln!(
                out,
                r##"<line x1="{x0}" y1="{gy:.1}" x2="{}" y2="{gy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                x0 + panel_w,
                x0 - 6.0,
                gy + 4.0,
                short(v)
            );
        }
        for &k in &cores {
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{k}</text>"#,
                x(k),
                top + panel_h + 18.0
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">server cores</text>"#,
            x0 + panel_w / 2.0,
            top + panel_h + 38.0
        );
        for (target, color, dash) in COLORS.iter().filter(|(t, _, _)| targets.contains(t)) {
            let points = values(*target);
            if points.is_empty() {
                continue;
            }
            let path: Vec<String> = points
                .iter()
                .map(|(k, v)| format!("{:.1},{:.1}", x(*k), y(*v)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
                path.join(" ")
            );
            for (k, v) in &points {
                let _ = writeln!(
                    out,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/><text x="{:.1}" y="{:.1}" font-size="10" fill="{color}">{}</text>"#,
                    x(*k),
                    y(*v),
                    x(*k) + 5.0,
                    y(*v) - 5.0,
                    short(*v)
                );
            }
        }
    }
    let _ = writeln!(out, "</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_goals_and_plot_follow_what_was_measured() {
        let mut results = Results::new(&[Target::Emitter, Target::Axum], 1);
        assert!(table(&results).is_empty());
        assert!(checks(&results)
            .iter()
            .all(|(_, verdict)| verdict.starts_with("not measured")));
        for (k, emitter, axum) in [(1, 100_000.0, 120_000.0), (8, 600_000.0, 700_000.0)] {
            results.add(&format!("multicore-echo-{k}c.rtt_per_s"), Target::Emitter, emitter);
            results.add(&format!("multicore-echo-{k}c.rtt_per_s"), Target::Axum, axum);
        }
        assert_eq!(measured(&results), vec![1, 8]);
        let text = table(&results);
        assert!(text.contains("| 8 | 600,000 | 700,000 | 0.86× | 6.00× |"), "{text}");
        let verdicts = checks(&results);
        assert!(verdicts[0].1.starts_with("met (0.86×"), "{verdicts:?}");
        assert!(verdicts[1].1.starts_with("not measured"), "{verdicts:?}");
        assert!(verdicts[2].1.starts_with("met (6.00×"), "{verdicts:?}");
        assert!(svg(&results).contains("<polyline"));
        assert_eq!(nice_ceiling(770_000.0), 1_000_000.0);
        assert_eq!(nice_ceiling(130.0), 200.0);
    }
}
