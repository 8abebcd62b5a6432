//! Runs the card game on `PORT` (default 8087) until Ctrl-C or SIGTERM: the page at `/`, the Krmx endpoint at `/ws`.
//! `CARDS_SEED` fixes the shuffles (by default they follow the clock); `CARDS_INSPECT=1` lets clients ask for the
//! server's side of each domain with `test/inspect`, for the interop tests.
//!
//! With `REDIS_URL` set, the process is node `NODE_ID` (default `node-<PORT>`) of the cluster `KRMX_CLUSTER` (default
//! `cards`) on that Redis, with a lease of `KRMX_LEASE_MS` (default 10000): any number of such processes serve one
//! game, its table, chat and moods journaled on Redis (each run by one owner node, taken over by another within a
//! lease when it dies).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use emitter_redis::journal::{JournalOptions, RedisJournal};
use emitter_redis::{Cluster, Node, Options as ClusterOptions};
use emitter_state::journal::Journal;
use example_cards::Options;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    example_support::init_tracing("info");
    let listener = example_support::bind_port(8087).await?;

    let clock = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    let options = Options {
        seed: example_support::env_number("CARDS_SEED", clock)?,
        inspect: std::env::var("CARDS_INSPECT").is_ok_and(|value| value == "1"),
        grace_period: None,
    };

    let mut node = None;
    let mut journal: Option<Arc<RedisJournal>> = None;
    let cards = match std::env::var("REDIS_URL") {
        Ok(url) => {
            let name = std::env::var("KRMX_CLUSTER").unwrap_or_else(|_| "cards".to_owned());
            let port = listener.local_addr()?.port();
            let id = std::env::var("NODE_ID").unwrap_or_else(|_| format!("node-{port}"));
            let lease = Duration::from_millis(example_support::env_number("KRMX_LEASE_MS", 10_000)?);
            let cluster = Cluster::connect(
                &url,
                &name,
                ClusterOptions {
                    lease,
                    ..ClusterOptions::default()
                },
            )
            .await?;
            // The models are the cluster's: attached to its journal before the node takes any user.
            let shared = Arc::new(
                cluster
                    .journal(JournalOptions {
                        lease,
                        ..JournalOptions::default()
                    })
                    .await,
            );
            let cards = example_cards::build_journaled(options, Some(shared.clone() as Arc<dyn Journal>))?;
            // Served once the replicas hold what Redis had: a player linking before would see an empty table first.
            for domain in [example_cards::CARDS, example_cards::CHAT, example_cards::MOODS] {
                shared.loaded(domain).await?;
            }
            node = Some(Node::start(&cards.server, cluster, &id).await?);
            journal = Some(shared);
            println!("cards node {id} of cluster {name} on {url}");
            cards
        }
        Err(_) => example_cards::build(options),
    };
    let port = emitter_axum::serve(&cards.server, listener, example_cards::app(&cards.server)).await?;
    println!("cards on http://localhost:{port}/ (Ctrl-C to stop)");

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    cards.server.close().await?;
    if let Some(node) = node {
        node.stopped().await;
    }
    if let Some(journal) = journal {
        journal.close().await;
    }
    Ok(())
}
