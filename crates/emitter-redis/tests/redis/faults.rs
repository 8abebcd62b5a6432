//! Redis misbehaving: restarted empty, paused (DEBUG SLEEP) shorter and longer than a lease, its pub/sub clients
//! killed.

use std::time::{Duration, Instant};

use emitter_redis::wire::{Change, LogEvent, Notification, Notifications, Replica};
use emitter_redis::LeaseLost;
use emitter_redis::{Error, Options, Refusal};

use crate::support::{connect, connect_node, lease_deadline, options, redis_now_ms, within};
use emitter_testing::redis::RedisServer;
use emitter_testing::redis_or_skip;

/// Retries `f` while it fails with a connection error (a reconnection in progress), up to 10 s.
async fn after_reconnecting<T, F, Fut>(mut f: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match f().await {
            Err(Error::Redis(error)) if Instant::now() < deadline => {
                tracing::debug!(%error, "retrying");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

async fn next_where(
    subscription: &mut Notifications,
    what: &str,
    accept: impl Fn(&Notification) -> bool,
) -> Notification {
    within(Duration::from_secs(10), what, async {
        loop {
            let notification = subscription.next().await.expect("the subscription lives");
            if accept(&notification) {
                return notification;
            }
        }
    })
    .await
}

fn epoch_gone<T: std::fmt::Debug>(result: Result<T, Error>) {
    match result {
        Err(Error::Refused(Refusal::EpochChanged { current: None })) => {}
        other => panic!("expected EpochChanged with no epoch, got {other:?}"),
    }
}

#[tokio::test]
async fn redis_restarted_empty_is_an_epoch_change_everywhere_until_the_nodes_reopen() {
    let mut server = redis_or_skip!();
    let options = Options {
        lease: Duration::from_millis(600),
        ..options()
    };
    let cluster = connect(&server, "restart", options).await;
    let old_epoch = cluster.epoch();
    let lease = cluster.register_node("node-a").await.unwrap();
    let mut alive = cluster.keep_alive(lease.clone());
    let mut subscription = cluster.subscribe("node-a").await.unwrap();
    next_where(&mut subscription, "subscribed", |n| {
        matches!(n, Notification::Subscribed { .. })
    })
    .await;
    cluster.submit(&lease, Change::link("alice", 1, true)).await.unwrap();
    let blocking = cluster.blocking();
    assert_eq!(blocking.snapshot().unwrap().users.len(), 1);

    server.restart_empty();

    epoch_gone(after_reconnecting(|| cluster.submit(&lease, Change::link("bob", 2, true))).await);
    epoch_gone(after_reconnecting(|| cluster.entries_after(0)).await);
    epoch_gone(after_reconnecting(|| cluster.snapshot()).await);
    epoch_gone(after_reconnecting(|| cluster.renew(&lease)).await);
    // The blocking handle's connection died with the server; its next call reconnects.
    let _ = blocking.snapshot();
    epoch_gone(blocking.snapshot());
    next_where(&mut subscription, "the subscription notices", |n| {
        matches!(n, Notification::EpochChanged { current: None })
    })
    .await;
    let lost = within(Duration::from_secs(10), "the keep-alive notices", alive.wait_lost()).await;
    assert!(matches!(lost, LeaseLost::EpochChanged { current: None }), "{lost:?}");

    // The node reopens: a new epoch, an empty state; it registers again and carries on from seq 1.
    let new_epoch = cluster.reopen().await.unwrap();
    assert_ne!(new_epoch, old_epoch);
    // The old lease belongs to the old epoch: refused as such, naming the new one.
    match cluster.submit(&lease, Change::join("carol")).await {
        Err(Error::Refused(Refusal::EpochChanged { current: Some(epoch) })) => assert_eq!(epoch, new_epoch),
        other => panic!("expected EpochChanged, got {other:?}"),
    }
    let lease = cluster.register_node("node-a").await.unwrap();
    let entries = cluster.submit(&lease, Change::link("alice", 1, true)).await.unwrap();
    assert_eq!(entries[0].seq, 1);
    let snapshot = cluster.snapshot().await.unwrap();
    assert_eq!((snapshot.epoch, snapshot.seq), (new_epoch, 2));
}

/// Whether Redis is paused: a PING on a fresh connection gets no answer within 100 ms.
fn redis_is_paused(url: &str) -> bool {
    let client = redis::Client::open(url).unwrap();
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(100)) else {
        return true;
    };
    conn.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    redis::cmd("PING").query::<String>(&mut conn).is_err()
}

/// A pause shorter than the lease only delays: a change sent during it completes after it, the lease holds.
#[tokio::test]
async fn a_redis_pause_shorter_than_the_lease_only_delays() {
    let server = redis_or_skip!();
    let options = Options {
        lease: Duration::from_millis(2_000),
        reap_interval: Some(Duration::from_millis(100)),
        ..options()
    };
    let (cluster, lease) = connect_node(&server, "nap", "node-a", options).await;
    let alive = cluster.keep_alive(lease.clone());
    cluster.submit(&lease, Change::link("alice", 1, true)).await.unwrap();

    // Submit only once Redis is seen asleep, so that the change really lands inside the pause.
    let sleeper = put_to_sleep(&server, "0.7").await;
    let sent = Instant::now();
    cluster.submit(&lease, Change::link("bob", 2, true)).await.unwrap();
    let waited = sent.elapsed();
    sleeper.join().unwrap();
    assert!(
        waited >= Duration::from_millis(50),
        "the submit waited for the pause ({waited:?})"
    );

    // A renewal after the pause extends the lease past it, and the keep-alive never lost it.
    let mut admin = server.admin();
    let after_pause = redis_now_ms(&mut admin);
    within(Duration::from_secs(5), "a renewal after the pause", async {
        while lease_deadline(&mut admin, "nap", "node-a").unwrap_or(0) < after_pause + 1_500 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(alive.lost(), None);
    let users = cluster.snapshot().await.unwrap().users;
    assert!(
        users.iter().all(|user| user.link.is_some()),
        "nobody was reaped: {users:?}"
    );
}

/// A pause longer than the lease: the node's lease is gone when Redis wakes. The keep-alive reports it, the node
/// links nobody, and a reaper unlinks its users.
#[tokio::test]
async fn a_redis_pause_longer_than_the_lease_fences_the_node() {
    let server = redis_or_skip!();
    let options = Options {
        lease: Duration::from_millis(300),
        reap_interval: None,
        ..options()
    };
    let (cluster, lease) = connect_node(&server, "coma", "node-a", options).await;
    let mut alive = cluster.keep_alive(lease.clone());
    cluster.submit(&lease, Change::link("alice", 1, true)).await.unwrap();

    let mut admin = server.admin();
    let sleeper = std::thread::spawn(move || {
        let _: () = redis::cmd("DEBUG").arg("SLEEP").arg("1").query(&mut admin).unwrap();
    });
    // The keep-alive gives up on its own clock while Redis sleeps (or is refused right after).
    let lost = within(
        Duration::from_secs(10),
        "the keep-alive loses the lease",
        alive.wait_lost(),
    )
    .await;
    assert!(matches!(lost, LeaseLost::Unreachable | LeaseLost::Fenced), "{lost:?}");
    sleeper.join().unwrap();

    match cluster.submit(&lease, Change::link("bob", 2, true)).await {
        Err(Error::Refused(Refusal::Fenced)) => {}
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert!(matches!(
        cluster.renew(&lease).await,
        Err(Error::Refused(Refusal::Fenced))
    ));
    let other = connect(&server, "coma", Options::default()).await;
    let reaped = other.reap_dead_nodes("node-b").await.unwrap();
    assert!(
        matches!(&reaped[..], [entry] if matches!(&entry.event, LogEvent::Unlinked { user, .. } if user == "alice"))
    );
}

/// The subscription's connection is killed; the changes made while it is away publish their seqs to nobody. It
/// comes back, says so, and the subscriber's read of the log fills the gap: nothing is lost, only delayed. The poll
/// is off, so only the resubscription can have told it.
#[tokio::test]
async fn a_killed_subscription_comes_back_and_the_log_fills_the_gap() {
    let server = redis_or_skip!();
    let no_poll = Options {
        poll_interval: Duration::from_secs(3_600),
        ..options()
    };
    let (writer, writer_lease) = connect_node(&server, "killed-sub", "node-w", options()).await;
    let reader = connect(&server, "killed-sub", no_poll).await;
    let mut subscription = reader.subscribe("node-r").await.unwrap();
    let mut replica = Replica::empty();
    next_where(&mut subscription, "subscribed", |n| {
        matches!(n, Notification::Subscribed { resubscribed: false })
    })
    .await;

    let mut admin = server.admin();
    let seq_channel = "emitter:{killed-sub}:seq";
    let subscribers = |admin: &mut redis::Connection| -> u64 {
        let (_, count): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(seq_channel)
            .query(admin)
            .unwrap();
        count
    };
    // Kill the subscription and change things before it is back. The subscriber reconnects within milliseconds, so
    // a round may miss the window; repeat until one provably published to nobody.
    let mut submitted = 0u64;
    let mut unheard_round = false;
    for round in 0..20 {
        let killed: u64 = crate::support::kill_pubsub_clients(&mut admin);
        assert!(killed >= 1, "round {round}: a pub/sub client to kill");
        let before = subscribers(&mut admin);
        for i in 0..3 {
            writer
                .submit(&writer_lease, Change::join(format!("u{round}-{i}")))
                .await
                .unwrap();
            submitted += 1;
        }
        if before == 0 && subscribers(&mut admin) == 0 {
            unheard_round = true;
        }
        // Catch up on what it tells us, up to its coming back.
        let back = next_where(&mut subscription, "resubscribed", |n| {
            matches!(n, Notification::Subscribed { resubscribed: true })
        });
        back.await;
        for entry in reader.entries_after(replica.seq()).await.unwrap() {
            replica.apply(&entry).unwrap();
        }
        assert_eq!(
            replica.seq(),
            submitted,
            "round {round}: every change is in, via the log"
        );
        if unheard_round {
            break;
        }
    }
    assert!(unheard_round, "no round published while the subscription was away");
    let stats = reader.stats();
    assert!(stats.subscription_drops >= 1 && stats.resubscriptions >= 1, "{stats:?}");
    assert_eq!(replica.users(), reader.snapshot().await.unwrap().users);
}

/// The publish queue is bounded in bytes: while Redis sleeps, 16 KiB messages fill a 64 KiB budget long before the
/// 65,536-message bound, and the rest are refused with `QueueFull` and counted; once Redis wakes, publishing works.
#[tokio::test]
async fn the_publish_queue_is_bounded_in_bytes() {
    let server = redis_or_skip!();
    let options = Options {
        publish_budget: 64 << 10,
        ..options()
    };
    let (cluster, lease) = connect_node(&server, "budget", "node-a", options).await;
    let sleeper = put_to_sleep(&server, "1").await;
    let body = bytes::Bytes::from(vec![b'x'; 16 << 10]);
    let (mut queued, mut refused) = (0usize, 0usize);
    for _ in 0..100 {
        match cluster.publish_broadcast(&lease, 0, None, body.clone()) {
            Ok(()) => queued += 1,
            Err(Error::QueueFull) => refused += 1,
            Err(error) => panic!("unexpected {error}"),
        }
    }
    assert!(
        (1..=4).contains(&queued),
        "{queued} messages of 16 KiB queued under a 64 KiB budget"
    );
    assert_eq!(refused, 100 - queued);
    assert_eq!(cluster.stats().publish_queue_full, refused as u64);
    assert!(Error::QueueFull.to_string().contains("publish_budget"));
    sleeper.join().unwrap();
    // Redis took what was queued: the budget is free again.
    within(Duration::from_secs(5), "a publish after the pause", async {
        while cluster.publish_broadcast(&lease, 0, None, body.clone()).is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Puts Redis to sleep for `seconds` (`DEBUG SLEEP`, on a thread of its own) and returns once it is seen asleep; join
/// the thread to wait for it to wake.
async fn put_to_sleep(server: &RedisServer, seconds: &'static str) -> std::thread::JoinHandle<()> {
    let mut admin = server.admin();
    let sleeper = std::thread::spawn(move || {
        let _: () = redis::cmd("DEBUG").arg("SLEEP").arg(seconds).query(&mut admin).unwrap();
    });
    let url = server.url();
    within(Duration::from_secs(5), "redis pauses", async {
        while !tokio::task::spawn_blocking({
            let url = url.clone();
            move || redis_is_paused(&url)
        })
        .await
        .unwrap()
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    sleeper
}
