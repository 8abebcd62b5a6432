//! The server `emitter-bench` measures: the Krmx server a user would write for a broadcast app, and nothing else.
//!
//! It listens on 127.0.0.1:`PORT` (default 8084) at path `/`, accepts new users (Krmx 0.5.x and 0.6.x clients alike,
//! the default) without authentication, holds up to 19,500 connections (see [`MAX_CONNECTIONS`]), and for each
//! linked user's message:
//! - `bench/msg` is broadcast, unchanged, to every linked user, the sender included;
//! - `bench/echo` is sent back to its sender only;
//! - anything else is ignored.
//!
//! It runs until Ctrl-C, or until stdin closes when `EXIT_ON_EOF` is set (the benchmark runner sets it, so that the
//! server never outlives the runner).
//!
//! With `--cluster REDIS_URL --node ID` the same server is one node of a cluster on Redis (`emitter-redis`), joined
//! before it listens: what `emitter-bench`'s `cluster` target runs, three of them on one Redis.
//!
//! ```text
//! example-bench [--cluster redis://127.0.0.1:6379/ --node n1 [--name bench] [--lease-ms 10000]]
//! ```
//!
//! `--name` is the cluster's name (default `bench`), `--lease-ms` the node's lease (default: emitter-redis's, 10 s).

use std::time::Duration;

use emitter_core::Server;
use emitter_redis::{Cluster, Node, Options};
use tokio::io::AsyncReadExt;

/// Connections one process may hold. The default of 10,000 turns the 19,000-user scale run away (HTTP 503); each
/// connection is a file descriptor, and this machine's per-process limit is 20,000.
const MAX_CONNECTIONS: usize = 19_500;

/// Builds the benchmark server: default settings but room for the scale run's connections, one message listener.
fn build() -> Server {
    let server = Server::builder().max_connections(MAX_CONNECTIONS).build();
    server.on_message(|u, m| match m.kind.as_str() {
        "bench/msg" => {
            let _ = u.server().broadcast(m, None);
        }
        "bench/echo" => {
            let _ = u.send(m);
        }
        _ => {}
    });
    server
}

/// What the command line asks for: a node of a cluster, or (without arguments) a server on its own.
#[derive(Debug, PartialEq)]
struct Args {
    /// The Redis URL and the node id, when this server is a node of a cluster.
    cluster: Option<(String, String)>,
    name: String,
    lease: Option<Duration>,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let (mut url, mut node, mut name, mut lease) = (None, None, "bench".to_owned(), None);
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--cluster" => url = Some(value.clone()),
            "--node" => node = Some(value.clone()),
            "--name" => name = value.clone(),
            "--lease-ms" => {
                let ms: u64 = value
                    .parse()
                    .map_err(|_| format!("--lease-ms takes milliseconds, not {value:?}"))?;
                lease = Some(Duration::from_millis(ms));
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    let cluster = match (url, node) {
        (Some(url), Some(node)) => Some((url, node)),
        (None, None) => None,
        _ => return Err("--cluster and --node go together".to_owned()),
    };
    Ok(Args { cluster, name, lease })
}

/// Resolves once stdin reaches its end.
async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    while matches!(stdin.read(&mut sink).await, Ok(read) if read > 0) {}
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    example_support::init_tracing("warn");
    let args = parse_args(&std::env::args().skip(1).collect::<Vec<_>>())?;
    let listener = example_support::bind_port(8084).await?;
    let server = build();
    // A node joins its cluster before it listens; the handle is not needed after that (the node keeps itself in step
    // until the server closes, and a killed process leaves its lease to expire).
    let _node = match &args.cluster {
        Some((url, id)) => {
            let mut options = Options::default();
            if let Some(lease) = args.lease {
                options.lease = lease;
            }
            let cluster = Cluster::connect(url, &args.name, options).await?;
            Some(Node::start(&server, cluster, id).await?)
        }
        None => None,
    };
    let port = emitter_axum::listen_on(&server, listener).await?;
    match &args.cluster {
        Some((_, id)) => println!(
            "bench server on ws://127.0.0.1:{port}/, node {id} of cluster {}",
            args.name
        ),
        None => println!("bench server on ws://127.0.0.1:{port}/"),
    }

    let exit_on_eof = std::env::var_os("EXIT_ON_EOF").is_some();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            // A graceful close tells every user it left: quick for a few users, slow for thousands, so bounded.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server.close()).await;
        }
        // The runner went away: exit at once; the sockets close with the process.
        () = stdin_closed(), if exit_on_eof => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        parse_args(&args.iter().map(|arg| (*arg).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn reads_the_cluster_options() {
        assert_eq!(parse(&[]).unwrap().cluster, None);
        let args = parse(&[
            "--cluster",
            "redis://127.0.0.1:7/",
            "--node",
            "n2",
            "--lease-ms",
            "2000",
        ])
        .unwrap();
        assert_eq!(args.cluster, Some(("redis://127.0.0.1:7/".to_owned(), "n2".to_owned())));
        assert_eq!(
            (args.name.as_str(), args.lease),
            ("bench", Some(Duration::from_secs(2)))
        );
        assert!(parse(&["--node", "n1"]).is_err());
        assert!(parse(&["--lease-ms", "soon"]).is_err());
        assert!(parse(&["--cluster"]).is_err());
    }
}
