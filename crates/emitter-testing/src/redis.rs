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
    /// `--replicaof 127.0.0.1 <port>` for a replica.
    extra: Vec<String>,
}

fn find_redis_server() -> Option<PathBuf> {
    find_on_path("redis-server")
}

fn find_on_path(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("its address").port()
}

impl RedisServer {
    /// A fresh, empty Redis; `None` (after a loud note) when `redis-server` is missing and that is allowed.
    pub fn start() -> Option<RedisServer> {
        RedisServer::start_with(Vec::new())
    }

    /// A replica of `primary` (`--replicaof`), once it has synchronised with it.
    pub fn start_replica_of(primary: &RedisServer) -> RedisServer {
        let extra = vec![
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            primary.port.to_string(),
        ];
        let replica = RedisServer::start_with(extra).expect("a primary was started, so redis-server is there");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut replica.admin())
                .expect("INFO replication");
            if info.contains("master_link_status:up") {
                return replica;
            }
            assert!(Instant::now() < deadline, "the replica never synchronised: {info}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn start_with(extra: Vec<String>) -> Option<RedisServer> {
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
            let child = spawn(&binary, port, &extra);
            let mut server = RedisServer {
                port,
                child,
                binary: binary.clone(),
                extra: extra.clone(),
            };
            if server.wait_ready() {
                return Some(server);
            }
        }
        panic!("redis-server did not start on any of 10 ports");
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the process (SIGSTOP): it neither answers nor reads what was sent to it until
    /// [`resume`](Self::resume).
    pub fn suspend(&self) {
        signal(&self.child, "-STOP");
    }

    /// Lets a [`suspend`](Self::suspend)ed process run again (SIGCONT).
    pub fn resume(&self) {
        signal(&self.child, "-CONT");
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
            self.child = spawn(&self.binary, self.port, &self.extra);
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

/// Sends a signal with kill(1): the tests need no libc binding for it.
fn signal(child: &Child, which: &str) {
    let status = Command::new("kill")
        .arg(which)
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {which} {} failed", child.id());
    if which == "-STOP" {
        wait_until_stopped(child.id());
    }
}

/// Waits until process `pid` is stopped. `kill -STOP` returns once the signal is sent and the process stops a moment
/// later (on a loaded machine, long enough for it to answer a command or read a frame first): a test that counts on
/// the pause waits for it.
pub fn wait_until_stopped(pid: u32) {
    let stat = format!("/proc/{pid}/stat");
    let deadline = Instant::now() + crate::TIMEOUT;
    // The state is the first field after the command name, which is in parentheses.
    let stopped = || {
        std::fs::read_to_string(&stat).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
        })
    };
    while !stopped() {
        assert!(Instant::now() < deadline, "process {pid} did not stop");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn spawn(binary: &PathBuf, port: u16, extra: &[String]) -> Child {
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
            // `--save ""` stops saving, not loading: a `dump.rdb` another process left in the temporary directory
            // would be loaded. A name no one uses (a test's `extra` may name another; the last one counts).
            "--dbfilename",
            &format!("emitter-test-{port}-absent.rdb"),
        ])
        .args(extra)
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

/// A `redis-sentinel` child process on a loopback port, monitoring one primary as `master` with a quorum of 1 and a
/// short `down-after-milliseconds`, so that a test's failover takes about a second. Killed when dropped; its config
/// file (Sentinel rewrites it) is removed.
pub struct RedisSentinel {
    port: u16,
    child: Child,
    config: PathBuf,
    master: String,
}

impl RedisSentinel {
    /// A sentinel monitoring `primary` as `master`; `None` (after a loud note) when `redis-sentinel` is missing and
    /// that is allowed (as [`RedisServer::start`]).
    pub fn start(master: &str, primary: &RedisServer) -> Option<RedisSentinel> {
        let Some(binary) = find_on_path("redis-sentinel") else {
            if std::env::var("EMITTER_REDIS").is_ok_and(|value| value == "1") {
                panic!("EMITTER_REDIS=1 but redis-sentinel is not on PATH (apt-get install redis-sentinel)");
            }
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED a failover test: redis-sentinel is not on PATH (apt-get install redis-sentinel)"
            );
            return None;
        };
        for _ in 0..10 {
            let port = free_port();
            let config = std::env::temp_dir().join(format!("emitter-sentinel-{}-{port}.conf", std::process::id()));
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\nsentinel monitor {master} 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds {master} 300\nsentinel failover-timeout {master} 3000\n\
                 sentinel parallel-syncs {master} 1\n",
                primary = primary.port
            );
            std::fs::write(&config, text).expect("write the sentinel's config");
            let child = Command::new(&binary)
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-sentinel");
            let mut sentinel = RedisSentinel {
                port,
                child,
                config,
                master: master.to_owned(),
            };
            if sentinel.wait_ready() {
                return Some(sentinel);
            }
        }
        panic!("redis-sentinel did not start on any of 10 ports");
    }

    /// `redis+sentinel://127.0.0.1:<port>/<master>`: the URL a cluster handle follows the primary by.
    pub fn url(&self) -> String {
        format!("redis+sentinel://127.0.0.1:{}/{}", self.port, self.master)
    }

    /// The port of the server the sentinel names as the primary now.
    pub fn primary_port(&self) -> Option<u16> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).ok()?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(2)).ok()?;
        let address: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master)
            .query(&mut conn)
            .ok()?;
        address.map(|(_, port)| port)
    }

    /// Waits until the sentinel names the server on `port` as the primary (a failover to it finished).
    pub fn wait_for_primary(&self, port: u16, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.primary_port() != Some(port) {
            assert!(
                Instant::now() < deadline,
                "the sentinel did not promote 127.0.0.1:{port} within {limit:?} (it names {:?})",
                self.primary_port()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the sentinel answers and knows the primary and its replica.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if self.primary_port().is_some() && self.replicas() > 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        false
    }

    /// How many replicas the sentinel knows of the primary.
    fn replicas(&self) -> usize {
        let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)) else {
            return 0;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
            return 0;
        };
        redis::cmd("SENTINEL")
            .arg("replicas")
            .arg(&self.master)
            .query::<Vec<redis::Value>>(&mut conn)
            .map_or(0, |replicas| replicas.len())
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}
