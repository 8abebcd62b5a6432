//! What a run measured: every value of every round by metric and target, with medians, ratios and number formats.

use std::collections::BTreeMap;

use crate::servers::target::Target;

/// Every value of every round, by metric (`group.metric`) and target.
pub struct Results {
    pub values: BTreeMap<String, BTreeMap<Target, Vec<f64>>>,
    /// What each group runs, for the legend.
    pub groups: BTreeMap<String, String>,
    pub targets: Vec<Target>,
    pub rounds: u32,
    pub started: String,
    /// Anything worth knowing about the run: errors, the load on the machine, what was skipped.
    pub notes: Vec<String>,
}

pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

impl Results {
    pub fn new(targets: &[Target], rounds: u32) -> Results {
        Results {
            values: BTreeMap::new(),
            groups: BTreeMap::new(),
            targets: targets.to_vec(),
            rounds,
            started: crate::clock::now(),
            notes: Vec::new(),
        }
    }

    /// Records one round's value.
    pub fn add(&mut self, metric: &str, target: Target, value: f64) {
        self.values
            .entry(metric.to_owned())
            .or_default()
            .entry(target)
            .or_default()
            .push(value);
    }

    /// Says what a group runs, for the table's legend.
    pub fn describe(&mut self, group: &str, text: String) {
        self.groups.insert(group.to_owned(), text);
    }

    pub fn median(&self, metric: &str, target: Target) -> Option<f64> {
        median(self.values.get(metric)?.get(&target)?)
    }

    /// Our advantage over `other` on `metric` (× > 1 is better for us), whichever way the metric points.
    pub fn advantage(&self, metric: &str, higher_is_better: bool, other: Target) -> Option<f64> {
        let ours = self.median(metric, Target::Emitter)?;
        let theirs = self.median(metric, other)?;
        let ratio = if higher_is_better { ours / theirs } else { theirs / ours };
        ratio.is_finite().then_some(ratio)
    }

    pub fn has(&self, target: Target) -> bool {
        self.targets.contains(&target)
    }

    /// The number of users a group runs, read from its description ("N users …").
    pub fn group_users(&self, group: &str) -> Option<f64> {
        let text = self.groups.get(group)?;
        text.split_whitespace().next()?.parse().ok()
    }
}

pub fn format_value(value: f64) -> String {
    let abs = value.abs();
    if abs >= 10_000.0 {
        // Thousands separators for big counts.
        let digits = format!("{:.0}", value);
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 && c.is_ascii_digit() {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if abs >= 100.0 {
        format!("{value:.0}")
    } else if abs >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

pub fn format_ratio(ratio: f64) -> String {
    if ratio >= 100.0 {
        format!("{ratio:.0}×")
    } else if ratio >= 10.0 {
        format!("{ratio:.1}×")
    } else {
        format!("{ratio:.2}×")
    }
}

/// A verdict on one goal: met, missed by how much, or not measured.
pub fn verdict(value: Option<f64>, goal: f64, higher: bool, unit: &str) -> String {
    match value {
        None => "not measured".to_owned(),
        Some(value) if (higher && value >= goal) || (!higher && value <= goal) => {
            format!("met ({}{unit})", format_value(value))
        }
        Some(value) => format!(
            "MISSED: {}{unit}, {:.0}% of the way",
            format_value(value),
            100.0 * if higher { value / goal } else { goal / value }
        ),
    }
}

/// A verdict on a ratio, followed by the two medians it came from.
pub fn versus(results: &Results, metric: &str, verdict: String, other: Target) -> String {
    match (results.median(metric, Target::Emitter), results.median(metric, other)) {
        (Some(ours), Some(theirs)) => format!(
            "{verdict}; emitter {}, {} {}",
            format_value(ours),
            other.name(),
            format_value(theirs)
        ),
        _ => verdict,
    }
}
