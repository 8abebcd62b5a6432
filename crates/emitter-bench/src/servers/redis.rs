//! The throwaway `redis-server` of a cluster run, and the little of RESP the runner needs to talk to it: `PING` to see
//! that it is up, `INFO cpu` to read the CPU it has used.
//!
//! Each cluster run starts its own Redis on a free loopback port, with no persistence (`--save '' --appendonly no`),
//! and kills it afterwards: a run never touches a Redis it did not start.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error>;

/// `redis-server` on PATH, if there is one.
pub fn find_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
}

/// Whether a missing `redis-server` must fail the run rather than skip the cluster groups: `EMITTER_REDIS=1`, as CI
/// sets it (the same switch as emitter-redis's tests).
pub fn required() -> bool {
    std::env::var("EMITTER_REDIS").is_ok_and(|value| value == "1")
}

/// A `redis-server` process of our own, killed when dropped.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    /// Starts an empty Redis on a free loopback port; its output goes to `log`.
    pub fn start(binary: &Path, log: &Path) -> Result<Redis, BoxError> {
        let mut last_error = String::new();
        // Another process may take the port between our probe and Redis's bind: then try another.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let log = std::fs::File::create(log)?;
            let child = Command::new(binary)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(std::env::temp_dir())
                // A file name no one else uses: `--save ""` stops saving, not loading, and a `dump.rdb` another
                // process left in the temporary directory would be loaded (and make Redis keep a replication backlog).
                .args(["--dbfilename", &format!("emitter-bench-{port}-absent.rdb")])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?;
            let mut redis = Redis { child, port };
            match redis.wait_ready() {
                Ok(()) => return Ok(redis),
                Err(error) => last_error = error,
            }
        }
        Err(format!("redis-server did not start: {last_error}").into())
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("it exited ({status})"));
            }
            if self.command(&["PING"]).is_ok_and(|reply| reply == "PONG") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("no PONG within 10 s".to_owned())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Runs one command on a fresh connection and returns its reply as text (a status, a bulk string or an integer).
    pub fn command(&self, args: &[&str]) -> Result<String, BoxError> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request += &format!("${}\r\n{arg}\r\n", arg.len());
        }
        stream.write_all(request.as_bytes())?;
        read_reply(&mut BufReader::new(stream))
    }

    /// CPU time Redis has used so far (`used_cpu_sys` + `used_cpu_user` of `INFO cpu`), in seconds.
    pub fn cpu_seconds(&self) -> Result<f64, BoxError> {
        used_cpu(&self.command(&["INFO", "cpu"])?).ok_or_else(|| "INFO cpu has no used_cpu_sys/user".into())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One RESP reply: `+status`, `-error`, `:integer` or `$bulk` (all this runner asks for).
fn read_reply(reader: &mut impl BufRead) -> Result<String, BoxError> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at_checked(1).ok_or("empty reply")?;
    match kind {
        "+" | ":" => Ok(rest.to_owned()),
        "-" => Err(format!("Redis replied {rest}").into()),
        "$" => {
            let len: usize = rest.parse().map_err(|_| format!("bad bulk length {rest:?}"))?;
            let mut body = vec![0; len + 2];
            reader.read_exact(&mut body)?;
            body.truncate(len);
            Ok(String::from_utf8(body)?)
        }
        _ => Err(format!("unexpected reply {line:?}").into()),
    }
}

/// `used_cpu_sys` + `used_cpu_user` from the text of `INFO cpu`.
fn used_cpu(info: &str) -> Option<f64> {
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':')?.trim().parse::<f64>().ok())
    };
    Some(field("used_cpu_sys")? + field("used_cpu_user")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_replies_and_cpu() {
        let reply = |bytes: &[u8]| read_reply(&mut BufReader::new(bytes)).map_err(|error| error.to_string());
        assert_eq!(reply(b"+PONG\r\n"), Ok("PONG".to_owned()));
        assert_eq!(reply(b":42\r\n"), Ok("42".to_owned()));
        assert_eq!(reply(b"$5\r\nhe\r\nl\r\n"), Ok("he\r\nl".to_owned()));
        assert!(reply(b"-ERR nope\r\n").is_err());
        let info = "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:0.250000\r\nused_cpu_sys_children:9.0\r\n";
        assert_eq!(used_cpu(info), Some(1.75));
        assert_eq!(used_cpu("# CPU\r\n"), None);
    }
}
