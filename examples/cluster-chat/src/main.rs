//! Runs one node of the chat cluster until Ctrl-C: the page at `/`, the Krmx endpoint at `/ws`,
//! `/health` and `/metrics`.
//!
//! `REDIS_URL` (default `redis://127.0.0.1/`), `KRMX_CLUSTER` (the cluster's name, default `chat`), `PORT` (default
//! 8082) and `NODE_ID` (unique per process, default `node-<PORT>`).

use std::env::var;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    example_support::init_tracing("info");
    let redis_url = var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1/".to_owned());
    let cluster_name = var("KRMX_CLUSTER").unwrap_or_else(|_| "chat".to_owned());
    let listener = example_support::bind_port(8082).await?;
    let node_id = var("NODE_ID").unwrap_or(format!("node-{}", listener.local_addr()?.port()));

    let server = example_cluster_chat::build();
    let (node, port) = example_cluster_chat::start(&server, &redis_url, &cluster_name, &node_id, listener).await?;
    println!("chat node {node_id} of cluster {cluster_name} on http://localhost:{port}/ (Ctrl-C to stop)");

    tokio::signal::ctrl_c().await?;
    // This node's users are unlinked (they stay users of the cluster), its connections close, and the HTTP server
    // stops; then the node releases its lease.
    server.close().await?;
    node.stopped().await;
    Ok(())
}
