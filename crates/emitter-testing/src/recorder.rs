//! A server on a free loopback port, and a [`Recorder`] of its events.

use std::sync::Arc;

use emitter_core::{Event, Server, ServerBuilder};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::TIMEOUT;

/// Starts `builder`'s server on a free loopback port, recording its events.
pub async fn start(builder: ServerBuilder) -> (Server, Recorder, u16) {
    let server = builder.build();
    let recorder = Recorder::attach(&server);
    let port = crate::listen(&server).await;
    (server, recorder, port)
}

/// Starts a default server, recording its events.
pub async fn start_default() -> (Server, Recorder, u16) {
    start(Server::builder()).await
}

/// Records every event as a short line such as `join simon` or `message simon custom`.
#[derive(Clone)]
pub struct Recorder {
    lines: Arc<Mutex<Vec<String>>>,
    changed: Arc<Notify>,
}

impl Recorder {
    /// Records `server`'s events from now on.
    pub fn attach(server: &Server) -> Recorder {
        let recorder = Recorder {
            lines: Arc::default(),
            changed: Arc::default(),
        };
        let r = recorder.clone();
        server.on_any(move |_, event| {
            let line = match event {
                Event::Listen { .. } => "listen".to_owned(),
                Event::Close => "close".to_owned(),
                Event::Authenticate { username, info } => {
                    format!("authenticate {username} new={} auth={:?}", info.is_new_user, info.auth)
                }
                Event::Join { username } => format!("join {username}"),
                Event::Link { username } => format!("link {username}"),
                Event::Unlink { username } => format!("unlink {username}"),
                Event::Leave { username } => format!("leave {username}"),
                Event::Message { username, message } => {
                    format!("message {username} {}", message.kind)
                }
                _ => format!("{event:?}"),
            };
            r.lines.lock().push(line);
            r.changed.notify_waiters();
        });
        recorder
    }

    /// Every line so far, in order.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().clone()
    }

    /// How many times `line` was recorded.
    pub fn count(&self, line: &str) -> usize {
        self.lines.lock().iter().filter(|l| *l == line).count()
    }

    /// Whether `line` was recorded.
    pub fn contains(&self, line: &str) -> bool {
        self.count(line) > 0
    }

    /// Waits until `line` has been recorded.
    pub async fn wait_for(&self, line: &str) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let notified = self.changed.notified();
            if self.contains(line) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for event `{line}`; recorded: {:?}", self.lines());
            }
        }
    }

    /// The recorded lines that start with one of `prefixes`, in order.
    pub fn filtered(&self, prefixes: &[&str]) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
            .collect()
    }
}
