//! The cluster table: three nodes on one Redis beside the same server on its own, and the goal for the
//! cluster's fan-out.

use std::fmt::Write as _;

use crate::results::{format_ratio, format_value, verdict, Results};
use crate::scenario::cluster::{FANOUT_RATE, FANOUT_SENDERS, FANOUT_USERS};
use crate::servers::target::Target;

/// Every metric of the cluster table, in order: key and label.
const ROWS: &[(&str, &str)] = &[
    ("cluster-serial-links.links_per_s", "links/s"),
    ("cluster-serial-links.link_p50_ms", "link latency p50 (ms)"),
    ("cluster-serial-links.link_p99_ms", "link latency p99 (ms)"),
    ("cluster-serial-links.redis_us_per_link", "Redis CPU per link (µs)"),
    ("cluster-links.links_per_s", "links/s"),
    ("cluster-links.link_p50_ms", "link latency p50 (ms)"),
    ("cluster-links.link_p99_ms", "link latency p99 (ms)"),
    ("cluster-links.views_s", "until every client saw every user (s)"),
    (
        "cluster-links.correct_pct",
        "clients with the full, correct user list (%)",
    ),
    ("cluster-links.redis_us_per_link", "Redis CPU per link (µs)"),
    (
        "cluster-links.server_us_per_link",
        "server CPU per link, all nodes (µs)",
    ),
    ("cluster-links.load_us_per_link", "load generator CPU per link (µs)"),
    (
        "cluster-links.all_us_per_link",
        "CPU per link, every process: server, load and Redis (µs)",
    ),
    (
        "cluster-links.redis_idle_pct",
        "Redis CPU when idle, taken out of the line above (% of a core)",
    ),
    ("cluster-fanout.delivered_per_s", "delivered msgs/s"),
    ("cluster-fanout.loss_pct", "loss (%)"),
    ("cluster-fanout.p50_ms", "latency p50 (ms)"),
    ("cluster-fanout.p90_ms", "latency p90 (ms)"),
    ("cluster-fanout.p99_ms", "latency p99 (ms)"),
    ("cluster-fanout.max_ms", "latency max (ms)"),
    ("cluster-fanout.server_cpu_pct", "server CPU, all nodes (% of a core)"),
    ("cluster-fanout.load_cpu_pct", "load generator CPU (% of a core)"),
    ("cluster-fanout.redis_cpu_pct", "Redis CPU above idle (% of a core)"),
    ("cluster-fanout.redis_us_per_broadcast", "Redis CPU per broadcast (µs)"),
    (
        "cluster-fanout.redis_idle_pct",
        "Redis CPU when idle, taken out of the lines above (% of a core)",
    ),
    (
        "cluster-crash-10s.unlinked_all_s",
        "kill → every krmx/unlinked seen on another node (s)",
    ),
    (
        "cluster-crash-10s.unlinked_spread_ms",
        "first → last of those krmx/unlinked (ms)",
    ),
    (
        "cluster-crash-2s.unlinked_all_s",
        "kill → every krmx/unlinked seen on another node (s)",
    ),
    (
        "cluster-crash-2s.unlinked_spread_ms",
        "first → last of those krmx/unlinked (ms)",
    ),
];

/// The Markdown table of medians: one node, the cluster, and the cluster's value ÷ the one node's (a plain ratio,
/// whichever way the metric points); empty when no cluster group ran.
pub fn table(results: &Results) -> String {
    let rows: Vec<_> = ROWS
        .iter()
        .filter(|(key, _)| results.values.contains_key(*key))
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| group | metric | one node | cluster: 3 nodes + Redis | cluster ÷ one node |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    let mut last_group = "";
    for (key, label) in rows {
        let group = key.split('.').next().unwrap_or_default();
        let group_cell = if group == last_group { "" } else { group };
        last_group = group;
        let single = results.median(key, Target::Emitter);
        let cluster = results.median(key, Target::Cluster);
        let ratio = match (single, cluster) {
            (Some(single), Some(cluster)) if single > 0.0 && !key.ends_with("_pct") => {
                Some(format_ratio(cluster / single))
            }
            _ => None,
        };
        let cell = |value: Option<f64>| value.map_or_else(|| "–".to_owned(), format_value);
        let _ = writeln!(
            out,
            "| {group_cell} | {label} | {} | {} | {} |",
            cell(single),
            cell(cluster),
            ratio.as_deref().unwrap_or("–")
        );
    }
    out
}

/// The goal for the cluster: 100,000 deliveries/s offered across nodes keeps p99 at most 10 ms.
pub fn checks(results: &Results) -> Vec<(String, String)> {
    let offered = f64::from(FANOUT_USERS * FANOUT_SENDERS) * FANOUT_RATE;
    let goal = format!(
        "cluster-fanout: {} deliveries/s offered across 3 nodes, p99 ≤ 10 ms",
        format_value(offered)
    );
    let users = results.group_users("cluster-fanout");
    let verdict = match users {
        None => "not measured".to_owned(),
        Some(users) if users != f64::from(FANOUT_USERS) => format!("not measured at that rate ({users} users)"),
        Some(_) => {
            let delivered = results.median("cluster-fanout.delivered_per_s", Target::Cluster);
            let p99 = verdict(
                results.median("cluster-fanout.p99_ms", Target::Cluster),
                10.0,
                false,
                " ms",
            );
            match delivered {
                Some(delivered) => format!("{p99}; {} deliveries/s sustained", format_value(delivered)),
                None => p99,
            }
        }
    };
    vec![(goal, verdict)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_and_the_goal_follow_what_was_measured() {
        let mut results = Results::new(&[Target::Emitter, Target::Cluster], 1);
        assert!(table(&results).is_empty());
        assert_eq!(checks(&results)[0].1, "not measured");
        results.add("cluster-links.links_per_s", Target::Emitter, 2_000.0);
        results.add("cluster-links.links_per_s", Target::Cluster, 500.0);
        results.add("cluster-links.correct_pct", Target::Emitter, 100.0);
        results.add("cluster-links.correct_pct", Target::Cluster, 100.0);
        results.add("cluster-crash-2s.unlinked_all_s", Target::Cluster, 2.5);
        let text = table(&results);
        assert!(
            text.contains("| cluster-links | links/s | 2000 | 500 | 0.25× |"),
            "{text}"
        );
        assert!(
            text.contains("| clients with the full, correct user list (%) | 100 | 100 | – |"),
            "{text}"
        );
        assert!(
            text.contains("| cluster-crash-2s | kill → every krmx/unlinked seen on another node (s) | – | 2.50 | – |"),
            "{text}"
        );
        results.describe("cluster-fanout", "200 users over 3 load processes".to_owned());
        results.add("cluster-fanout.p99_ms", Target::Cluster, 4.0);
        results.add("cluster-fanout.delivered_per_s", Target::Cluster, 100_000.0);
        let verdicts = checks(&results);
        assert!(verdicts[0].1.starts_with("met (4.00 ms); 100,000"), "{verdicts:?}");
    }
}
