//! The synchronous handle, for the reads and changes a node makes off the runtime.
//!
//! A node reads the log to fill a gap on a blocking thread (`spawn_blocking`), and a caller outside any tokio runtime
//! decides its changes on the spot. Waiting there for an async call would need a runtime to drive it, so this handle
//! does not use the runtime at all: it owns a plain blocking connection (the `redis` crate's sync `Connection`) and
//! talks to Redis on the calling thread, bounded by [`Options::command_timeout`](crate::Options::command_timeout). It
//! cannot deadlock on the runtime because it never waits for a task; the cost is that the calling thread is blocked
//! for one round trip, which is why a node never calls it from a runtime's worker thread.

use std::sync::Arc;

use parking_lot::Mutex;
use redis::Value;

use crate::shared::{Call, Catchup, Shared};
use crate::types::{Change, ClusterSnapshot, Epoch, LogEntry, NodeLease, Result};

/// A synchronous handle on the cluster, from [`Cluster::blocking`](crate::Cluster::blocking): the same calls, with
/// the same meaning, as the async ones, on one blocking connection of its own. Calls from several threads take turns
/// on that connection. A connection that failed or timed out is dropped and made again on the next call, so a late
/// reply can never be taken for the next one's.
///
/// On the membership path, a change goes: `submit`; if the first entry it returns is not the next one the node has
/// to apply (another node's change came in between and its notification has not been handled yet), fill the gap with
/// `entries_after(applied)`, which returns everything up to and including the submitted entries; apply in order,
/// skipping what is applied already (as [`Replica::apply`](crate::wire::Replica::apply) does). A refusal changed nothing;
/// an [`Error::Redis`](crate::Error::Redis) left the outcome unknown, and the same catch-up tells it.
///
/// ```no_run
/// use emitter_redis::{Cluster, Options};
/// use emitter_redis::wire::Change;
///
/// # async fn run() -> Result<(), emitter_redis::Error> {
/// let cluster = Cluster::connect("redis://127.0.0.1/", "chat", Options::default()).await?;
/// let lease = cluster.register_node("node-a").await?;
/// let blocking = cluster.blocking();
/// // From synchronous code (it works anywhere, and blocks the calling thread for the round trip):
/// let entries = blocking.submit(&lease, Change::join("bob"))?;
/// assert_eq!(entries[0].event.user(), "bob");
/// # Ok(())
/// # }
/// ```
pub struct Blocking {
    shared: Arc<Shared>,
    /// The connection, and the endpoint's version (which primary) it was made for.
    conn: Mutex<Option<(u64, redis::Connection)>>,
}

impl std::fmt::Debug for Blocking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blocking")
            .field("cluster", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl Blocking {
    pub(crate) fn new(shared: Arc<Shared>) -> Blocking {
        Blocking {
            shared,
            conn: Mutex::new(None),
        }
    }

    fn with_connection<T>(&self, f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>) -> Result<T> {
        let mut slot = self.conn.lock();
        let primary = self.shared.endpoint.version();
        if slot.as_ref().is_some_and(|(made_for, _)| *made_for != primary) {
            *slot = None; // the primary changed (a Sentinel failover): connect to the new one
        }
        let conn = match &mut *slot {
            Some((_, conn)) => conn,
            empty => {
                let options = &self.shared.options;
                let conn = self
                    .shared
                    .endpoint
                    .client()
                    .get_connection_with_timeout(options.connect_timeout)?;
                conn.set_read_timeout(Some(options.command_timeout))?;
                conn.set_write_timeout(Some(options.command_timeout))?;
                &mut empty.insert((primary, conn)).1
            }
        };
        let result = f(conn);
        if let Err(error) = &result {
            if error.is_io_error()
                || error.is_timeout()
                || error.is_unrecoverable_error()
                || error.is_connection_dropped()
            {
                tracing::warn!(cluster = self.shared.name, %error, "blocking connection dropped");
                *slot = None;
            }
        }
        Ok(result?)
    }

    fn invoke(&self, call: &Call) -> Result<Value> {
        let invocation = call.invocation(&self.shared.keys);
        self.with_connection(|conn| invocation.invoke(conn))
    }

    /// The epoch the cluster handle works in.
    pub fn epoch(&self) -> Epoch {
        self.shared.epoch()
    }

    /// Drops the connection, so that the next call makes a new one: after Redis restarted, the old one is dead
    /// but only says so when used. Never waits: while a call is using the connection, that call finds out for itself
    /// (a failed connection is dropped), so the caller (an async task) is not held up by a round trip.
    pub fn reset(&self) {
        if let Some(mut conn) = self.conn.try_lock() {
            *conn = None;
        }
    }

    /// [`Cluster::submit`](crate::Cluster::submit), blocking.
    pub fn submit(&self, lease: &NodeLease, change: Change) -> Result<Vec<LogEntry>> {
        let call = self.shared.submit_call(lease, &change);
        let value = self.invoke(&call)?;
        self.shared.entries_result(&call, value)
    }

    /// [`Cluster::entries_after`](crate::Cluster::entries_after), blocking.
    pub fn entries_after(&self, seq: u64) -> Result<Vec<LogEntry>> {
        let epoch = self.shared.epoch();
        let mut catchup = Catchup::new(seq);
        while let Some(from) = catchup.next_from() {
            let pipe = self.shared.read_pipe(from);
            let value: Value = self.with_connection(|conn| pipe.query(conn))?;
            self.shared.read_into(&mut catchup, &epoch, value)?;
        }
        Ok(catchup.entries)
    }

    /// [`Cluster::snapshot`](crate::Cluster::snapshot), blocking.
    pub fn snapshot(&self) -> Result<ClusterSnapshot> {
        let epoch = self.shared.epoch();
        let value = self.invoke(&self.shared.snapshot_call(&epoch))?;
        self.shared.snapshot_result(epoch, value)
    }

    /// [`Cluster::head`](crate::Cluster::head), blocking.
    pub fn head(&self) -> Result<(Option<Epoch>, u64)> {
        let cmd = self.shared.head_cmd();
        let value: Value = self.with_connection(|conn| cmd.query(conn))?;
        Shared::head_result(value)
    }
}
