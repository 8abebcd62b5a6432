//! The multicore groups: the server pinned to 1, 2, 4, 8… CPUs, the load on the others, one load process per CPU.
//!
//! For each count `k` of server CPUs there are two groups, `multicore-echo-<k>c` and `multicore-fanout-<k>c`, run
//! against emitter and bare axum (both buffer variants). The server gets the first `k` CPUs this process may use and
//! the load the rest, so the server's runtime starts `k` worker threads and shares nothing with the load. A count
//! that would leave the load fewer CPUs than the server is skipped: below that the load generator, which spends
//! about as much CPU per message as the server, would be what the run measures.

use crate::load::Load;
use crate::scenario::{Group, Pin, NO_NODE};

/// Users in every multicore group.
const USERS: u32 = 1_000;
/// Broadcast senders in the fan-out groups, each with this many messages in flight.
const FANOUT_SENDERS: u32 = 4;
const FANOUT_WINDOW: u32 = 32;

/// The CPUs this process may run on (its affinity, as `taskset` and cgroups leave it), lowest first.
pub fn allowed_cpus() -> Vec<u32> {
    let listed = std::fs::read_to_string("/proc/self/status").ok().and_then(|status| {
        let line = status.lines().find(|line| line.starts_with("Cpus_allowed_list:"))?;
        parse_cpu_list(line.split_once(':')?.1.trim())
    });
    listed.unwrap_or_else(|| {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        (0..n as u32).collect()
    })
}

/// Reads a kernel CPU list such as `0-3,8,10-11`.
fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.split(',').filter(|part| !part.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => cpus.extend(first.trim().parse::<u32>().ok()?..=last.trim().parse().ok()?),
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    (!cpus.is_empty()).then_some(cpus)
}

fn join(cpus: &[u32]) -> String {
    cpus.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// The multicore groups for each of `cores` that `cpus` can hold, and a note for each that it cannot.
pub fn groups(cores: &[u32], cpus: &[u32], smoke: bool) -> (Vec<Group>, Vec<String>) {
    let (duration_ms, warmup_ms) = if smoke { (1_000, 200) } else { (10_000, 2_000) };
    let users = if smoke { 20 } else { USERS };
    let mut groups = Vec::new();
    let mut notes = Vec::new();
    for &k in cores {
        let left = cpus.len().saturating_sub(k as usize);
        if k == 0 || left < k as usize {
            notes.push(format!(
                "multicore at {k} server core(s) skipped: {} CPU(s) here leave {left} for the load, which needs at \
                 least as many as the server",
                cpus.len()
            ));
            continue;
        }
        let (server, load) = cpus.split_at(k as usize);
        let pin = Pin {
            server: join(server),
            load: load.iter().map(u32::to_string).collect(),
        };
        let base = Load {
            workers: (load.len() as u32).min(users),
            duration_ms,
            warmup_ms,
            ..Load::population(users)
        };
        groups.push(Group {
            name: format!("multicore-echo-{k}c"),
            family: "multicore",
            targets: NO_NODE,
            // Every user keeps one echo in flight: 1,000 requests outstanding at any time, far more than 8 cores
            // can hold in progress, so the server never waits for work. One in flight (rather than several) keeps
            // this a measure of the cost per message: with more, both sides would read and write several frames per
            // syscall, and the run would measure that batching instead.
            load: Load {
                echo: true,
                senders: users,
                window: 1,
                ..base.clone()
            },
            pin: Some(pin.clone()),
            crash: None,
        });
        groups.push(Group {
            name: format!("multicore-fanout-{k}c"),
            family: "multicore",
            targets: NO_NODE,
            // A few senders at the rate their windows allow: each message in flight until every user (of every load
            // process) has it, so every recipient's queue stays bounded while the server is kept busy.
            load: Load {
                senders: FANOUT_SENDERS.min(users),
                window: FANOUT_WINDOW,
                ..base
            },
            pin: Some(pin),
            crash: None,
        });
    }
    (groups, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8,10-11"), Some(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(parse_cpu_list("5"), Some(vec![5]));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn the_load_gets_at_least_as_many_cpus_as_the_server() {
        let cpus: Vec<u32> = (0..16).collect();
        let (planned, notes) = groups(&[1, 2, 4, 8, 16], &cpus, false);
        assert_eq!(planned.len(), 8);
        assert_eq!(notes.len(), 1);
        let eight = planned
            .iter()
            .find(|g| g.name == "multicore-fanout-8c")
            .expect("8 cores");
        let pin = eight.pin.as_ref().expect("pinned");
        assert_eq!(pin.server, "0,1,2,3,4,5,6,7");
        assert_eq!(pin.load.len(), 8);
        assert_eq!(eight.load.workers, 8);
        let (planned, notes) = groups(&[1, 2], &[0, 1], false);
        assert_eq!((planned.len(), notes.len()), (2, 1));
    }
}
