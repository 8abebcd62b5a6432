//! The processes of a run: servers under test, pinned to cores when asked, and what /proc says about them.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::servers::redis::Redis;
use crate::servers::target::Target;

type BoxError = Box<dyn std::error::Error>;

/// Nodes in a cluster run.
pub const NODES: usize = 3;

fn free_port() -> Result<u16, BoxError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `command` under `taskset -c core`, when a core is given.
pub fn pinned(program: &Path, core: Option<&str>) -> Command {
    match core {
        Some(core) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(core).arg(program);
            command
        }
        None => Command::new(program),
    }
}

pub struct Server {
    pub child: Child,
    stdin: Option<ChildStdin>,
    pub port: u16,
}

impl Server {
    pub fn start(target: Target, node_dir: &Path, core: Option<&str>, log: &Path) -> Result<Server, BoxError> {
        let port = free_port()?;
        let exe = std::env::current_exe()?;
        let command = match target {
            Target::Emitter => pinned(&bench_server()?, core),
            Target::Before => match std::env::var_os("EMITTER_BENCH_BEFORE") {
                Some(before) => pinned(Path::new(&before), core),
                None => {
                    return Err("the before target needs EMITTER_BENCH_BEFORE: the examples/bench to compare".into())
                }
            },
            Target::Axum | Target::AxumEqual => {
                let mut command = pinned(&exe, core);
                command.arg("baseline");
                if target == Target::AxumEqual {
                    command.env("BASELINE_EQUAL_BUFFERS", "1");
                }
                command
            }
            Target::Node => {
                let script = node_dir.join("server.js");
                if !node_dir.join("node_modules/@krmx/server").exists() {
                    return Err(format!("run `npm ci` in {} first", node_dir.display()).into());
                }
                let mut command = pinned(Path::new("node"), core);
                command.arg(script);
                command
            }
            Target::Cluster => return Err("a cluster is not one server: see Deployment".into()),
        };
        Server::spawn(command, port, target.name(), log)
    }

    /// examples/bench as node `id` of the cluster on `redis`, with a lease of `lease_ms` (emitter-redis's default when
    /// `None`).
    pub fn start_node(redis: &Redis, id: &str, lease_ms: Option<u64>, log: &Path) -> Result<Server, BoxError> {
        let mut command = Command::new(bench_server()?);
        command.args(["--cluster", &redis.url(), "--node", id]);
        if let Some(lease_ms) = lease_ms {
            command.args(["--lease-ms", &lease_ms.to_string()]);
        }
        Server::spawn(command, free_port()?, &format!("node {id}"), log)
    }

    fn spawn(mut command: Command, port: u16, name: &str, log: &Path) -> Result<Server, BoxError> {
        let log = std::fs::File::create(log)?;
        let mut child = command
            .env("PORT", port.to_string())
            .env("EXIT_ON_EOF", "1")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let stdin = child.stdin.take();
        let mut server = Server { child, stdin, port };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(30) || server.child.try_wait()?.is_some() {
                server.stop();
                return Err(format!("{name} did not start listening on {port}").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Let the runtime settle before the first RSS reading.
        std::thread::sleep(Duration::from_millis(500));
        Ok(server)
    }

    /// The server's resident set, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Closes its stdin (the server exits) and waits briefly; kills it if it lingers.
    pub fn stop(mut self) {
        self.stdin.take();
        wait_or_kill(&mut self.child, Duration::from_secs(5));
    }
}

/// examples/bench, next to this binary, or the build `EMITTER_BENCH_SERVER` points at (to try a library change side
/// by side).
fn bench_server() -> Result<PathBuf, BoxError> {
    let server = std::env::var_os("EMITTER_BENCH_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::current_exe()
                .unwrap_or_default()
                .with_file_name("example-bench")
        });
    if !server.exists() {
        return Err(format!(
            "{} is missing: build it with `cargo build --release -p example-bench`",
            server.display()
        )
        .into());
    }
    Ok(server)
}

/// What a group runs against: one server, or the nodes of a cluster and their Redis.
pub struct Deployment {
    /// The server, or the cluster's nodes in order (`n1`, `n2`, …): worker `w` of a load connects to
    /// `servers[w % servers.len()]`.
    pub servers: Vec<Server>,
    pub redis: Option<Redis>,
    /// Where [`Deployment::save_commandstats`] writes Redis's `INFO commandstats` (what each command cost it).
    commandstats: Option<PathBuf>,
}

impl Deployment {
    /// Starts `target`; logs go to `log` (for a cluster, `<stem>-redis.log`, `<stem>-n1.log`, … beside it). A cluster gets a Redis
    /// of its own, empty, and [`NODES`] nodes with a lease of `lease_ms` (the default when `None`).
    pub fn start(
        target: Target,
        node_dir: &Path,
        core: Option<&str>,
        log: &Path,
        lease_ms: Option<u64>,
    ) -> Result<Deployment, BoxError> {
        if target != Target::Cluster {
            let server = Server::start(target, node_dir, core, log)?;
            return Ok(Deployment {
                servers: vec![server],
                redis: None,
                commandstats: None,
            });
        }
        let binary = crate::servers::redis::find_server().ok_or("redis-server is not on PATH")?;
        let sibling = |what: &str| {
            let stem = log.file_stem().unwrap_or_default().to_string_lossy();
            log.with_file_name(format!("{stem}-{what}"))
        };
        let redis = Redis::start(&binary, &sibling("redis.log"))?;
        let commandstats = Some(sibling("redis-commandstats.txt"));
        let mut servers = Vec::new();
        for n in 1..=NODES {
            let id = format!("n{n}");
            match Server::start_node(&redis, &id, lease_ms, &sibling(&format!("{id}.log"))) {
                Ok(server) => servers.push(server),
                Err(error) => {
                    Deployment {
                        servers,
                        redis: Some(redis),
                        commandstats,
                    }
                    .stop();
                    return Err(error);
                }
            }
        }
        Ok(Deployment {
            servers,
            redis: Some(redis),
            commandstats,
        })
    }

    /// The servers' processes (Redis is not one of them): the pids whose CPU counts as the server's.
    pub fn server_pids(&self) -> Vec<u32> {
        self.servers.iter().map(|server| server.child.id()).collect()
    }

    /// The servers' resident sets added up, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        self.servers.iter().map(Server::rss_kib).sum()
    }

    /// Saves Redis's `INFO commandstats` beside the logs, when there is a Redis: what each command cost it so far,
    /// followed by `INFO memory` (what the cluster's state takes in Redis: `used_memory` less `used_memory_startup`,
    /// over the users linked, is the capacity model's Redis memory per user). Called once the load is over and
    /// before its clients leave, so that the teardown's unlinks are not in it.
    pub fn save_commandstats(&self) {
        if let (Some(redis), Some(path)) = (&self.redis, &self.commandstats) {
            if let Ok(mut stats) = redis.command(&["INFO", "commandstats"]) {
                if let Ok(memory) = redis.command(&["INFO", "memory"]) {
                    stats.push_str(&memory);
                }
                let _ = std::fs::write(path, stats);
            }
        }
    }

    /// Stops the servers, then Redis.
    pub fn stop(self) {
        for server in self.servers {
            server.stop();
        }
        drop(self.redis);
    }
}

/// CPU time (user + system) a process has used so far, in seconds, from /proc (clock ticks of 1/100 s on Linux).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; the fields after it are space-separated.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

pub fn wait_or_kill(child: &mut Child, grace: Duration) {
    let started = Instant::now();
    while started.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
