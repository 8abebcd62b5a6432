//! Runs the conformance server: the main endpoint on `PORT` (default 8787), the closed one on `CLOSED_PORT` (default
//! 8788) and the policy one on `POLICY_PORT` (default 8789), all at path `/`, on `HOST` (default 127.0.0.1: a test
//! server stays on loopback unless asked), until Ctrl-C or SIGTERM.
//!
//! The main endpoint's port also answers `GET /metrics` (Prometheus) and `GET /health`, and the main endpoint serves
//! the state app (Krmx State's atoms, stream `counter` and projection `tally`; see the README's State section).
//!
//! With `REDIS_URL` set, the endpoints are nodes of clusters on that Redis: `KRMX_CLUSTER` (default `conformance`)
//! for the main one, `<KRMX_CLUSTER>-closed` and `<KRMX_CLUSTER>-policy` for the others, as node `NODE_ID` (default
//! `node-<PORT>`), with a lease of `KRMX_LEASE_MS` (default 10000); the state app's models are then shared by the
//! cluster's nodes through a journal on that Redis (its domain leases as long as the node's).
//!
//! With `STATE_REDIS_URL` set instead (one process), the state app's models are kept in that Redis as a store
//! (`STATE_STORE`, default `conformance-state`): a restarted process resumes where the last one stopped.

use std::sync::Arc;
use std::time::Duration;

use emitter_redis::journal::{JournalOptions, MembershipSeqs, RedisJournal};
use emitter_redis::{Cluster, Node, Options};
use emitter_state::journal::Journal;
use example_support::env_number;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    example_support::init_tracing("info");
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".to_owned());
    let main_port: u16 = env_number("PORT", 8787)?;
    let closed_port: u16 = env_number("CLOSED_PORT", 8788)?;
    let policy_port: u16 = env_number("POLICY_PORT", 8789)?;

    let main_listener = TcpListener::bind((host.as_str(), main_port))
        .await
        .unwrap_or_else(|error| panic!("cannot bind PORT {main_port}: {error}"));
    let closed_listener = TcpListener::bind((host.as_str(), closed_port))
        .await
        .unwrap_or_else(|error| panic!("cannot bind CLOSED_PORT {closed_port}: {error}"));
    let policy_listener = TcpListener::bind((host.as_str(), policy_port))
        .await
        .unwrap_or_else(|error| panic!("cannot bind POLICY_PORT {policy_port}: {error}"));
    let main_port = main_listener.local_addr()?.port();
    let closed = example_conformance::build_closed();
    let policy = example_conformance::build_policy();

    let lease = Duration::from_millis(env_number("KRMX_LEASE_MS", 10_000)?);
    let mut nodes = Vec::new();
    let mut journal: Option<Arc<RedisJournal>> = None;
    let main;
    if let Ok(url) = std::env::var("REDIS_URL") {
        let cluster = std::env::var("KRMX_CLUSTER").unwrap_or_else(|_| "conformance".to_owned());
        let node = std::env::var("NODE_ID").unwrap_or_else(|_| format!("node-{main_port}"));
        let options = Options {
            lease,
            ..Options::default()
        };
        // The state app's models are the cluster's: attached to its journal before the node takes any user.
        let main_cluster = Cluster::connect(&url, &cluster, options.clone()).await?;
        let shared = Arc::new(
            main_cluster
                .journal(JournalOptions {
                    lease,
                    ..JournalOptions::default()
                })
                .await,
        );
        main = example_conformance::build_main_journaled(Some(shared.clone() as Arc<dyn Journal>))?.0;
        loaded(&shared).await?;
        journal = Some(shared);
        let (closed_cluster, policy_cluster) = (format!("{cluster}-closed"), format!("{cluster}-policy"));
        let join = example_conformance::join_cluster;
        nodes.push(Node::start(&main, main_cluster, &node).await?);
        nodes.push(join(&closed, &url, &closed_cluster, &node, options.clone()).await?);
        nodes.push(join(&policy, &url, &policy_cluster, &node, options).await?);
        println!("conformance node {node} of cluster {cluster} on {url}");
    } else if let Ok(url) = std::env::var("STATE_REDIS_URL") {
        let store = std::env::var("STATE_STORE").unwrap_or_else(|_| "conformance-state".to_owned());
        let options = JournalOptions {
            lease,
            // One process: a restarted one counts membership changes from 1 again.
            membership: MembershipSeqs::Process,
            ..JournalOptions::default()
        };
        let shared = Arc::new(RedisJournal::connect(&url, &store, options).await?);
        main = example_conformance::build_main_journaled(Some(shared.clone() as Arc<dyn Journal>))?.0;
        loaded(&shared).await?;
        journal = Some(shared);
        println!("conformance state kept in store {store} on {url}");
    } else {
        main = example_conformance::build_main();
    }
    let main_port = example_conformance::serve_main_server(&main, main_listener).await?;
    let closed_port = example_conformance::serve_closed_server(&closed, closed_listener).await?;
    let policy_port = emitter_axum::listen_on(&policy, policy_listener).await?;
    println!(
        "conformance server: main on ws://localhost:{main_port}/, closed on ws://localhost:{closed_port}/, \
         policy on ws://localhost:{policy_port}/"
    );

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    tracing::info!("closing");
    let (main_closed, closed_closed, policy_closed) = tokio::join!(main.close(), closed.close(), policy.close());
    main_closed?;
    closed_closed?;
    policy_closed?;
    for node in nodes {
        node.stopped().await;
    }
    if let Some(journal) = journal {
        journal.close().await;
    }
    Ok(())
}

/// Waits until the state app's replicas hold what the journal had: a user who links before would get the initial
/// state in its catch-up (and the stored one only after it).
async fn loaded(journal: &RedisJournal) -> Result<(), emitter_state::journal::JournalError> {
    use example_conformance::state::{ATOMS, COUNTER, TALLY};
    for domain in [ATOMS, COUNTER, TALLY] {
        journal.loaded(domain).await?;
    }
    Ok(())
}
