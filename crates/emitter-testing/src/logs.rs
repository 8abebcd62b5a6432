//! What a server logs through `tracing`, captured for a test to look at.

use std::sync::Arc;

use parking_lot::Mutex;
use tracing_subscriber::layer::SubscriberExt;

/// Every event logged on this thread while its guard lives, as a level and a line: the message, then ` name=value`
/// for each other field. Under a current-thread runtime (`#[tokio::test]`'s default) that is everything the server's
/// tasks log too.
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<(tracing::Level, String)>>>);

impl CapturedLogs {
    /// Starts capturing on this thread, until the returned guard is dropped.
    pub fn capture() -> (CapturedLogs, tracing::subscriber::DefaultGuard) {
        let logs = CapturedLogs::default();
        let guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(logs.clone()));
        (logs, guard)
    }

    /// Every line captured so far, with its level, in order.
    pub fn all(&self) -> Vec<(tracing::Level, String)> {
        self.0.lock().clone()
    }

    /// The lines logged at `level` that start with `prefix`.
    pub fn lines(&self, level: tracing::Level, prefix: &str) -> Vec<String> {
        let lines = self.0.lock();
        lines
            .iter()
            .filter(|(at, line)| *at == level && line.starts_with(prefix))
            .map(|(_, line)| line.clone())
            .collect()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CapturedLogs {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        struct Line(String);
        impl tracing::field::Visit for Line {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0.insert_str(0, &format!("{value:?}"));
                } else {
                    self.0.push_str(&format!(" {}={value:?}", field.name()));
                }
            }
        }
        let mut line = Line(String::new());
        event.record(&mut line);
        self.0.lock().push((*event.metadata().level(), line.0));
    }
}
