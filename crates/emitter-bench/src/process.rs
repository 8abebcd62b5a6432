//! The processes of a run: servers under test, pinned to cores when asked, and what /proc says about them.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::target::Target;

type BoxError = Box<dyn std::error::Error>;

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
        let mut command = match target {
            Target::Emitter => {
                // EMITTER_BENCH_SERVER points at another build of examples/bench, to try a library change side by side.
                let server = std::env::var_os("EMITTER_BENCH_SERVER")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| exe.with_file_name("example-bench"));
                if !server.exists() {
                    return Err(format!(
                        "{} is missing: build it with `cargo build --release -p example-bench`",
                        server.display()
                    )
                    .into());
                }
                pinned(&server, core)
            }
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
        };
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
                return Err(format!("{} did not start listening on {port}", target.name()).into());
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
