//! Throwaway `redis-server` processes for the cluster tests: each on a free loopback port, with no persistence and the
//! DEBUG command enabled, killed when dropped. A test never assumes a Redis is running.
//!
//! Without `redis-server` on PATH the tests skip, loudly, unless `EMITTER_REDIS=1` (as `.ci/steps/05-redis.sh` sets
//! it after installing Redis), where a missing server fails them.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process on a loopback port.
pub struct RedisServer {
    port: u16,
    child: Child,
    binary: PathBuf,
}

fn find_redis_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("its address").port()
}

impl RedisServer {
    /// A fresh, empty Redis; `None` (after a loud note) when `redis-server` is missing and that is allowed.
    pub fn start() -> Option<RedisServer> {
        let Some(binary) = find_redis_server() else {
            if std::env::var("EMITTER_REDIS").is_ok_and(|value| value == "1") {
                panic!("EMITTER_REDIS=1 but redis-server is not on PATH (apt-get install redis-server)");
            }
            static NOTE: std::sync::Once = std::sync::Once::new();
            NOTE.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED emitter-redis tests: redis-server is not on PATH, so the cluster scripts are NOT tested \
                     here. Install it (apt-get install redis-server) or run .ci/steps/05-redis.sh, which installs it \
                     and fails instead of skipping."
                );
            });
            return None;
        };
        // Another test may take the port between our probe and Redis's bind: then try another.
        for _ in 0..10 {
            let port = free_port();
            let child = spawn(&binary, port);
            let mut server = RedisServer {
                port,
                child,
                binary: binary.clone(),
            };
            if server.wait_ready() {
                return Some(server);
            }
        }
        panic!("redis-server did not start on any of 10 ports");
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A plain connection for the tests' own commands (DEBUG SLEEP, CLIENT KILL, inspection).
    pub fn admin(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).expect("url");
        client
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("admin connection")
    }

    /// Kills the server and starts an empty one on the same port: what a node sees when Redis restarts without
    /// persistence.
    pub fn restart_empty(&mut self) {
        self.kill();
        self.start_again();
    }

    /// Kills the server: Redis is unreachable until [`start_again`](Self::start_again).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts an empty server on the same port again, after [`kill`](Self::kill).
    pub fn start_again(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.child = spawn(&self.binary, self.port);
            if self.wait_ready() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills every pub/sub connection (`CLIENT KILL TYPE pubsub`); returns how many there were.
    pub fn kill_pubsub_clients(&self) -> u64 {
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query(&mut self.admin())
            .expect("CLIENT KILL TYPE pubsub")
    }

    /// Pauses Redis for `seconds` (`DEBUG SLEEP`), from a thread: the command blocks the connection that sends it.
    /// Join the handle to wait until Redis answers again.
    pub fn pause(&self, seconds: f64) -> std::thread::JoinHandle<()> {
        let mut admin = self.admin();
        std::thread::spawn(move || {
            let _: redis::RedisResult<()> = redis::cmd("DEBUG").arg("SLEEP").arg(seconds).query(&mut admin);
        })
    }

    /// Waits for PING; false if the process exited (its port was taken).
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let client = redis::Client::open(self.url()).expect("url");
            if let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200)) {
                if redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        false
    }
}

fn spawn(binary: &PathBuf, port: u16) -> Child {
    Command::new(binary)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args([
            "--enable-debug-command",
            "yes",
            "--daemonize",
            "no",
            "--dir",
            &std::env::temp_dir().to_string_lossy(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server")
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a Redis for this test, or returns from the test (skipped) when there is none to start.
#[macro_export]
macro_rules! redis_or_skip {
    () => {
        match $crate::redis::RedisServer::start() {
            Some(server) => server,
            None => return,
        }
    };
}
