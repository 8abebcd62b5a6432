//! The blocking handle: from synchronous code, inside a runtime or not, racing on threads, across a dropped
//! connection.

use std::sync::{Arc, Barrier};

use emitter_redis::wire::{Change, LogEvent};
use emitter_redis::{Error, Refusal};

use crate::support::{connect_node, connect_nodes, options};
use emitter_testing::redis_or_skip;

/// The core's membership path is synchronous and may run on a runtime's only thread: the blocking handle works there,
/// because it never waits for the runtime.
#[tokio::test(flavor = "current_thread")]
async fn it_works_on_a_current_thread_runtimes_own_thread() {
    let server = redis_or_skip!();
    let (cluster, lease) = connect_node(&server, "sync", "node-a", options()).await;
    let blocking = cluster.blocking();
    // Called right here, on the runtime's one thread, as a listener would.
    let entries = blocking.submit(&lease, Change::link("alice", 1, true)).unwrap();
    assert_eq!(entries.len(), 2);
    assert!(matches!(
        blocking.submit(&lease, Change::link("alice", 2, true)),
        Err(Error::Refused(Refusal::AlreadyLinked { .. }))
    ));
    assert_eq!(
        blocking.entries_after(0).unwrap(),
        cluster.entries_after(0).await.unwrap()
    );
    assert_eq!(blocking.snapshot().unwrap(), cluster.snapshot().await.unwrap());
    assert_eq!(blocking.head().unwrap(), (Some(cluster.epoch()), 2));
    // And from a thread outside any runtime.
    let from_thread = std::thread::spawn(move || blocking.submit(&lease, Change::join("bob")));
    assert!(from_thread.join().unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_racing_through_blocking_handles_get_one_winner_per_name() {
    const TRIALS: usize = 200;
    const THREADS: usize = 4;
    let server = redis_or_skip!();
    let racers = connect_nodes(&server, "sync-race", THREADS).await;
    let start = Arc::new(Barrier::new(THREADS));
    // A thread never panics while the others may wait for it at the barrier: it records what went wrong instead.
    let threads: Vec<_> = racers
        .into_iter()
        .enumerate()
        .map(|(i, (cluster, lease))| {
            let (blocking, start) = (cluster.blocking(), start.clone());
            std::thread::spawn(move || {
                let (mut won, mut failed) = (Vec::new(), Vec::new());
                for trial in 0..TRIALS {
                    start.wait();
                    let connection = (trial * THREADS + i) as u64;
                    match blocking.submit(&lease, Change::link(format!("user{trial}"), connection, true)) {
                        Ok(_) => won.push(trial),
                        Err(Error::Refused(Refusal::AlreadyLinked { .. })) => {}
                        Err(other) => failed.push(format!("trial {trial}: {other}")),
                    }
                }
                (won, failed)
            })
        })
        .collect();
    let mut wins = Vec::new();
    for thread in threads {
        let (won, failed) = thread.join().unwrap();
        assert_eq!(failed, Vec::<String>::new());
        wins.extend(won);
    }
    wins.sort_unstable();
    assert_eq!(wins, (0..TRIALS).collect::<Vec<_>>(), "every name won exactly once");
}

/// A blocking connection that dies fails the call in flight (outcome unknown) and is made again on the next one.
#[tokio::test]
async fn it_reconnects_after_its_connection_is_killed() {
    let server = redis_or_skip!();
    let (cluster, lease) = connect_node(&server, "sync-kill", "node-a", options()).await;
    let blocking = cluster.blocking();
    blocking.submit(&lease, Change::join("alice")).unwrap();
    let mut admin = server.admin();
    let _: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(&mut admin)
        .unwrap();
    // The first call may fail (its connection was killed under it); then it is made again.
    let mut result = blocking.submit(&lease, Change::join("bob"));
    if let Err(Error::Redis(_)) = result {
        result = blocking.submit(&lease, Change::join("bob"));
    }
    let entries = result.unwrap();
    assert!(matches!(&entries[..], [entry] if matches!(&entry.event, LogEvent::Joined { user } if user == "bob")));
}
