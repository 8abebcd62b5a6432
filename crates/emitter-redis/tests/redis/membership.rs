//! Changes, their refusals, their seqs, and the log replaying to the state.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use emitter_redis::wire::{Change, LogEntry, LogEvent, Replica, UnlinkReason};
use emitter_redis::{Error, Refusal};

use crate::support::{connect, connect_nodes, options, within};
use emitter_testing::redis_or_skip;

fn refusal(result: Result<Vec<LogEntry>, Error>) -> Refusal {
    match result {
        Err(Error::Refused(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn changes_get_contiguous_seqs_and_the_log_replays_to_the_same_users() {
    let server = redis_or_skip!();
    let cluster = connect(&server, "replay", options()).await;
    let a = cluster.register_node("node-a").await.unwrap();
    let b = cluster.register_node("node-b").await.unwrap();

    let mut returned = Vec::new();
    let mut submit = |entries: Vec<LogEntry>| returned.extend(entries);
    submit(cluster.submit(&a, Change::link("alice", 1, true)).await.unwrap()); // join + link
    submit(cluster.submit(&b, Change::join("bob")).await.unwrap());
    submit(cluster.submit(&b, Change::link("bob", 7, false)).await.unwrap());
    submit(cluster.submit(&a, Change::link("carol", 2, true)).await.unwrap());
    submit(cluster.submit(&a, Change::unlink_connection("alice", 1)).await.unwrap());
    submit(cluster.submit(&b, Change::link("alice", 8, false)).await.unwrap()); // relinked on another node
    submit(cluster.submit(&b, Change::leave("carol")).await.unwrap()); // kicked while linked: unlink, leave
    submit(cluster.submit(&a, Change::join("dave")).await.unwrap());
    submit(cluster.submit(&a, Change::leave("dave")).await.unwrap()); // unlinked: leave only
    submit(cluster.submit(&a, Change::unlink("bob")).await.unwrap()); // a server method, whatever node bob is on

    let seqs: Vec<u64> = returned.iter().map(|entry| entry.seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "one seq each, no gaps"
    );
    let kinds: Vec<String> = returned
        .iter()
        .map(|entry| match &entry.event {
            LogEvent::Joined { user } => format!("join {user}"),
            LogEvent::Linked { user, link } => format!("link {user} {}/{}", link.node, link.connection),
            LogEvent::Unlinked { user, reason, .. } => format!("unlink {user} {reason:?}"),
            LogEvent::Left { user } => format!("leave {user}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "join alice",
            "link alice node-a/1",
            "join bob",
            "link bob node-b/7",
            "join carol",
            "link carol node-a/2",
            "unlink alice Requested",
            "link alice node-b/8",
            "unlink carol Leaving",
            "leave carol",
            "join dave",
            "leave dave",
            "unlink bob Requested",
        ]
    );

    // The log holds exactly what the submits returned, and replays to the snapshot's users.
    let log = cluster.entries_after(0).await.unwrap();
    assert_eq!(log, returned);
    assert_eq!(cluster.entries_after(5).await.unwrap(), returned[5..]);
    assert_eq!(cluster.entries_after(seqs.len() as u64).await.unwrap(), []);
    let mut replayed = Replica::empty();
    for entry in &log {
        assert_eq!(replayed.apply(entry), Ok(true));
    }
    let snapshot = cluster.snapshot().await.unwrap();
    assert_eq!(snapshot.seq, seqs.len() as u64);
    assert_eq!(replayed.users(), snapshot.users);
    let names: Vec<&str> = snapshot.users.iter().map(|user| user.name.as_str()).collect();
    assert_eq!(names, ["alice", "bob"], "join order");
    let alice = &snapshot.users[0];
    assert_eq!(
        alice.link.as_ref().map(|link| (link.node.as_str(), link.connection)),
        Some(("node-b", 8))
    );
    assert_eq!(snapshot.users[1].link, None);
    assert_eq!(
        cluster.head().await.unwrap(),
        (Some(cluster.epoch()), seqs.len() as u64)
    );

    // The connection index holds exactly the links left: alice's on node-b; node-a's connection 1 is free again.
    let mut admin = server.admin();
    let connections: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg("emitter:{replay}:connections")
        .query(&mut admin)
        .unwrap();
    assert_eq!(
        connections,
        [(format!("node-b/{}/8", b.generation()), "alice".to_owned())]
    );
    cluster.submit(&a, Change::link("erin", 1, true)).await.unwrap();
}

#[tokio::test]
async fn refusals_read_as_the_core_words_them_and_change_nothing() {
    let server = redis_or_skip!();
    let cluster = connect(&server, "refusals", options()).await;
    let a = cluster.register_node("node-a").await.unwrap();
    let b = cluster.register_node("node-b").await.unwrap();
    cluster.submit(&a, Change::link("alice", 1, true)).await.unwrap();
    cluster.submit(&a, Change::join("bob")).await.unwrap();
    let before = cluster.snapshot().await.unwrap();

    let core = |error: emitter_core::Error| error.to_string();
    let cases = [
        (
            Change::join("alice"),
            Refusal::JoinExistingUser,
            core(emitter_core::Error::JoinExistingUser),
        ),
        (
            Change::unlink("nobody"),
            Refusal::UnlinkUnknownUser,
            core(emitter_core::Error::UnlinkUnknownUser),
        ),
        (
            Change::unlink("bob"),
            Refusal::UnlinkUnlinkedUser,
            core(emitter_core::Error::UnlinkUnlinkedUser),
        ),
        (
            Change::leave("nobody"),
            Refusal::KickUnknownUser,
            core(emitter_core::Error::KickUnknownUser),
        ),
        (
            Change::link("alice", 2, true),
            Refusal::AlreadyLinked { user: "alice".into() },
            "user alice is already linked to a connection".into(),
        ),
        (
            Change::link("carol", 3, false),
            Refusal::NotAcceptingNewUsers,
            "server is not accepting new users".into(),
        ),
    ];
    for (change, expected, words) in cases {
        let refused = refusal(cluster.submit(&b, change.clone()).await);
        assert_eq!(refused, expected, "{change:?}");
        assert_eq!(refused.to_string(), words);
    }
    // A node unlinking (or leaving) through a connection the user is not linked to: not its business.
    for change in [
        Change::unlink_connection("alice", 2), // node-a's connection 1 holds alice, not 2
        Change::leave_connection("alice", 2),
        Change::unlink_connection("bob", 1), // bob is not linked at all
    ] {
        assert_eq!(
            refusal(cluster.submit(&a, change.clone()).await),
            Refusal::NotLinkedHere,
            "{change:?}"
        );
    }
    // The same connection id on another node is another connection.
    assert_eq!(
        refusal(cluster.submit(&b, Change::unlink_connection("alice", 1)).await),
        Refusal::NotLinkedHere
    );
    // A connection links one user at most: node-a's connection 1 holds alice (node-b's connection 1 is another one).
    for user in ["bob", "carol"] {
        assert_eq!(
            refusal(cluster.submit(&a, Change::link(user, 1, true)).await),
            Refusal::ConnectionLinked
        );
    }
    assert_eq!(cluster.snapshot().await.unwrap(), before, "refusals change nothing");

    // The core's own rejection wording, where it is in the core: the link checks it would make in one process.
    let rejections = [
        Refusal::AlreadyLinked { user: "simon".into() }.to_string(),
        Refusal::NotAcceptingNewUsers.to_string(),
    ];
    assert_eq!(
        rejections,
        [
            "user simon is already linked to a connection",
            "server is not accepting new users"
        ]
    );

    // And a leave through the right connection goes through: unlink (leave), then leave.
    let entries = cluster.submit(&a, Change::leave_connection("alice", 1)).await.unwrap();
    assert!(matches!(
        &entries[0].event,
        LogEvent::Unlinked {
            reason: UnlinkReason::Leaving,
            ..
        }
    ));
    assert!(matches!(&entries[1].event, LogEvent::Left { user } if user == "alice"));
}

/// Many connections race to link one name, over several Redis connections and tokio tasks: exactly one wins, every
/// other is told the user is already linked, and the log has exactly one link for it. Hundreds of trials.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_of_many_concurrent_links_of_a_name_wins() {
    const TRIALS: usize = 300;
    const RACERS: usize = 8;
    let server = redis_or_skip!();
    // Four handles: four connections to Redis, so the racers' scripts really arrive interleaved.
    let handles: Vec<_> = connect_nodes(&server, "race", 4)
        .await
        .into_iter()
        .map(Arc::new)
        .collect();
    within(Duration::from_secs(60), "the races", async {
        for trial in 0..TRIALS {
            let user = format!("user{trial}");
            let start = Arc::new(tokio::sync::Barrier::new(RACERS));
            let mut racers = Vec::new();
            for racer in 0..RACERS {
                let handle = handles[racer % handles.len()].clone();
                let (user, start) = (user.clone(), start.clone());
                racers.push(tokio::spawn(async move {
                    let (cluster, lease) = &*handle;
                    start.wait().await;
                    let result = cluster
                        .submit(lease, Change::link(user, (trial * RACERS + racer) as u64, true))
                        .await;
                    (racer, result)
                }));
            }
            let mut winners = Vec::new();
            for racer in racers {
                let (racer, result) = racer.await.unwrap();
                match result {
                    Ok(entries) => winners.push((racer, entries)),
                    Err(Error::Refused(Refusal::AlreadyLinked { user: name })) => assert_eq!(name, user),
                    Err(other) => panic!("trial {trial}: racer {racer}: {other}"),
                }
            }
            assert_eq!(winners.len(), 1, "trial {trial}: exactly one winner");
            let (_, entries) = &winners[0];
            assert!(
                matches!(&entries[0].event, LogEvent::Joined { .. }),
                "the winner's link created the user"
            );
        }
    })
    .await;
    let (cluster, _) = &*handles[0];
    let log = cluster.entries_after(0).await.unwrap();
    assert_eq!(log.len(), TRIALS * 2, "one join and one link per name, nothing else");
    let mut linked = HashSet::new();
    for entry in &log {
        if let LogEvent::Linked { user, .. } = &entry.event {
            assert!(linked.insert(user.clone()), "{user} linked twice");
        }
    }
    assert_eq!(linked.len(), TRIALS);
}

/// Two cluster names in one Redis share nothing: not users, not seqs, not keys, not notifications, not a lost state.
#[tokio::test]
async fn two_cluster_names_are_independent() {
    let server = redis_or_skip!();
    let a = connect(&server, "alpha", options()).await;
    let b = connect(&server, "beta", options()).await;
    assert_ne!(a.epoch(), b.epoch());
    let lease_a = a.register_node("node-1").await.unwrap();
    let lease_b = b.register_node("node-1").await.unwrap();
    let mut at_a = a.subscribe("node-1").await.unwrap();
    within(Duration::from_secs(10), "subscribed", async {
        while !matches!(
            at_a.next().await,
            Some(emitter_redis::wire::Notification::Subscribed { .. })
        ) {}
    })
    .await;

    // The same names, the same node id, the same connection ids: no conflict.
    for cluster_and_lease in [(&b, &lease_b), (&a, &lease_a)] {
        let (cluster, lease) = cluster_and_lease;
        let entries = cluster.submit(lease, Change::link("alice", 1, true)).await.unwrap();
        assert_eq!(entries.iter().map(|entry| entry.seq).collect::<Vec<_>>(), [1, 2]);
    }
    b.submit(&lease_b, Change::join("bob")).await.unwrap();
    assert_eq!(a.snapshot().await.unwrap().users.len(), 1);
    assert_eq!(b.snapshot().await.unwrap().users.len(), 2);
    // Alpha's subscriber hears alpha's seqs only (beta's 3 would come first if it heard beta).
    let heard = within(Duration::from_secs(10), "alpha's seq", async {
        loop {
            if let Some(emitter_redis::wire::Notification::Seq(seq)) = at_a.next().await {
                return seq;
            }
        }
    })
    .await;
    assert_eq!(heard, 2);

    let mut admin = server.admin();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut admin).unwrap();
    assert!(!keys.is_empty());
    for key in &keys {
        assert!(
            key.starts_with("emitter:{alpha}:") || key.starts_with("emitter:{beta}:"),
            "{key}"
        );
    }
    // Beta's state is lost (its epoch deleted by hand): beta must reopen; alpha carries on.
    let _: () = redis::cmd("DEL").arg("emitter:{beta}:epoch").query(&mut admin).unwrap();
    assert!(matches!(
        b.submit(&lease_b, Change::join("carol")).await,
        Err(Error::Refused(Refusal::EpochChanged { current: None }))
    ));
    a.submit(&lease_a, Change::join("carol")).await.unwrap();
    b.reopen().await.unwrap();
    assert_eq!(b.snapshot().await.unwrap().users, [], "beta starts over");
    assert_eq!(a.snapshot().await.unwrap().users.len(), 2, "alpha is untouched");
}
