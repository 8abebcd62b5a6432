//! Leases: fencing a node that outlived its lease, renewing, reaping, a node registering again, a killed process.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use emitter_redis::wire::{Change, LogEvent, Notification, Replica, UnlinkReason};
use emitter_redis::{Cluster, Error, Options, Refusal};

use crate::support::{connect_node, lease_deadline, options, redis_now_ms, within, RedisServer};
use emitter_testing::redis_or_skip;

fn short_lease(ms: u64) -> Options {
    Options {
        lease: Duration::from_millis(ms),
        reap_interval: None,
        ..options()
    }
}

/// Waits (bounded) until Redis's clock is past `node`'s lease deadline: the moment the lease is gone.
async fn until_lease_passes(server: &RedisServer, cluster: &str, node: &str) {
    let mut admin = server.admin();
    let deadline = lease_deadline(&mut admin, cluster, node).expect("a lease");
    within(
        Duration::from_secs(5),
        "redis's clock passes the lease deadline",
        async {
            while redis_now_ms(&mut admin) <= deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        },
    )
    .await;
}

fn assert_fenced<T: std::fmt::Debug>(result: Result<T, Error>) {
    match result {
        Err(Error::Refused(Refusal::Fenced)) => {}
        other => panic!("expected Fenced, got {other:?}"),
    }
}

#[tokio::test]
async fn a_node_past_its_lease_links_nobody_until_it_registers_again() {
    let server = redis_or_skip!();
    let (cluster, lease) = connect_node(&server, "fenced", "node-a", short_lease(200)).await;
    cluster.submit(&lease, Change::link("alice", 1, true)).await.unwrap();

    // Nothing renews it (a paused process): once Redis's clock passes the deadline, every change is refused.
    until_lease_passes(&server, "fenced", "node-a").await;
    assert_fenced(cluster.submit(&lease, Change::link("bob", 2, true)).await);
    assert_fenced(cluster.submit(&lease, Change::join("carol")).await);
    assert_fenced(cluster.submit(&lease, Change::unlink("alice")).await);
    assert_fenced(cluster.renew(&lease).await);
    assert_eq!(cluster.snapshot().await.unwrap().users.len(), 1, "nothing changed");

    // Registering again: a new generation; alice, linked to the old one, is unlinked (that process is gone).
    let again = cluster.register_node("node-a").await.unwrap();
    assert!(again.generation() > lease.generation());
    let log = cluster.entries_after(2).await.unwrap();
    assert!(
        matches!(&log[..], [entry] if matches!(&entry.event,
            LogEvent::Unlinked { user, reason: UnlinkReason::NodeRestarted, link } if user == "alice" && lease.owns(link))),
        "{log:?}"
    );
    cluster.submit(&again, Change::link("bob", 2, true)).await.unwrap();
    assert_fenced(cluster.submit(&lease, Change::link("carol", 3, true)).await);
}

#[tokio::test]
async fn keep_alive_holds_a_short_lease_through_many_renewals() {
    let server = redis_or_skip!();
    let (cluster, lease) = connect_node(&server, "kept", "node-a", short_lease(300)).await;
    let alive = cluster.keep_alive(lease.clone());
    let mut admin = server.admin();
    let first = lease_deadline(&mut admin, "kept", "node-a").unwrap();
    // Wait for the lease to be extended well past three leases' worth: renewals, not luck, kept it.
    within(Duration::from_secs(10), "renewals extend the lease", async {
        while lease_deadline(&mut admin, "kept", "node-a").unwrap_or(0) < first + 1_000 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(alive.lost(), None);
    cluster.submit(&lease, Change::link("alice", 1, true)).await.unwrap();
}

#[tokio::test]
async fn a_released_lease_unlinks_its_users_and_fences_the_node() {
    let server = redis_or_skip!();
    let (cluster, lease) = connect_node(&server, "released", "node-a", options()).await;
    cluster.submit(&lease, Change::link("alice", 1, true)).await.unwrap();
    cluster.submit(&lease, Change::join("bob")).await.unwrap();
    let entries = cluster.release(&lease).await.unwrap();
    assert!(
        matches!(&entries[..], [entry] if matches!(&entry.event, LogEvent::Unlinked { reason: UnlinkReason::NodeReleased, .. }))
    );
    assert_fenced(cluster.submit(&lease, Change::join("carol")).await);
    assert_fenced(cluster.release(&lease).await);
    let users = cluster.snapshot().await.unwrap().users;
    assert!(
        users.iter().all(|user| user.link.is_none()) && users.len() == 2,
        "users stay, unlinked"
    );
}

/// A node whose lease ran out has its users unlinked by another node's reaper, and every node hears of it through
/// the log.
#[tokio::test]
async fn the_reaper_unlinks_a_dead_nodes_users_for_everyone() {
    let server = redis_or_skip!();
    let (dead, dead_lease) = connect_node(&server, "reap", "node-dead", short_lease(300)).await;
    dead.submit(&dead_lease, Change::link("alice", 1, true)).await.unwrap();
    dead.submit(&dead_lease, Change::link("bob", 2, true)).await.unwrap();

    let live_options = Options {
        reap_interval: Some(Duration::from_millis(50)),
        ..options()
    };
    let (live, live_lease) = connect_node(&server, "reap", "node-live", live_options).await;
    live.submit(&live_lease, Change::link("carol", 1, true)).await.unwrap();
    let mut notifications = live.subscribe("node-live").await.unwrap();
    let mut replica = Replica::from_snapshot(live.snapshot().await.unwrap());
    let _alive = live.keep_alive(live_lease.clone());

    let mut reaped = Vec::new();
    within(Duration::from_secs(10), "the dead node's users are unlinked", async {
        while reaped.len() < 2 {
            match notifications.next().await {
                Some(Notification::Subscribed { .. } | Notification::Seq(_)) => {
                    for entry in live.entries_after(replica.seq()).await.unwrap() {
                        replica.apply(&entry).unwrap();
                        if let LogEvent::Unlinked { user, reason, link } = &entry.event {
                            assert_eq!(*reason, UnlinkReason::LeaseExpired);
                            assert!(dead_lease.owns(link));
                            assert_eq!(entry.by, "node-live");
                            reaped.push(user.clone());
                        }
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    reaped.sort();
    assert_eq!(reaped, ["alice", "bob"]);
    assert!(
        replica.user("carol").is_some_and(|carol| carol.link.is_some()),
        "the live node's user stays linked"
    );
    assert_eq!(replica.users(), live.snapshot().await.unwrap().users);
    assert_fenced(dead.submit(&dead_lease, Change::link("alice", 3, true)).await);
}

const CHILD_URL: &str = "EMITTER_REDIS_CHILD_URL";
const CHILD_READY: &str = "EMITTER-REDIS-CHILD-READY";
const CHILD_LEASE: Duration = Duration::from_millis(600);

/// Not a test by itself: the node process that `a_killed_node_process…` starts and SIGKILLs (without its
/// environment variable, it returns at once).
#[tokio::test]
async fn child_node_process() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let options = Options {
        lease: CHILD_LEASE,
        ..options()
    };
    let cluster = Cluster::connect(&url, "killed", options).await.unwrap();
    let lease = cluster.register_node("node-doomed").await.unwrap();
    let _alive = cluster.keep_alive(lease.clone());
    for (connection, user) in ["alice", "bob", "carol"].into_iter().enumerate() {
        cluster
            .submit(&lease, Change::link(user, connection as u64, true))
            .await
            .unwrap();
    }
    println!("{CHILD_READY}");
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn a_killed_node_process_has_its_users_unlinked_within_its_lease_and_a_reap() {
    let server = redis_or_skip!();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "leases::child_node_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_URL, server.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains(CHILD_READY))
    });
    assert!(within(Duration::from_secs(30), "the child node links its users", ready)
        .await
        .unwrap());

    let reap_interval = Duration::from_millis(100);
    let live_options = Options {
        reap_interval: Some(reap_interval),
        ..options()
    };
    let (live, lease) = connect_node(&server, "killed", "node-live", live_options).await;
    let linked = live.snapshot().await.unwrap().users;
    assert_eq!(linked.iter().filter(|user| user.link.is_some()).count(), 3);
    let _alive = live.keep_alive(lease);

    child.kill().unwrap(); // SIGKILL: no release, no goodbye
    let killed = Instant::now();
    let _ = child.wait();
    within(Duration::from_secs(10), "the killed node's users are unlinked", async {
        while live
            .snapshot()
            .await
            .unwrap()
            .users
            .iter()
            .any(|user| user.link.is_some())
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let took = killed.elapsed();
    // The lease ran at most CHILD_LEASE past the kill (the child renewed it last just before), the reaper runs every
    // reap_interval; the rest is slack for a loaded machine.
    assert!(
        took <= CHILD_LEASE + reap_interval + Duration::from_secs(2),
        "took {took:?}"
    );
    let reasons: Vec<UnlinkReason> = live
        .entries_after(0)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|entry| match entry.event {
            LogEvent::Unlinked { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, [UnlinkReason::LeaseExpired; 3]);
}
