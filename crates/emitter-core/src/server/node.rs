//! A server as one node of a cluster: membership changes submitted to the cluster's [`Sequencer`], the entries it
//! orders applied in that order with the steps of `server/changes.rs`, and messages handed to and taken from the other
//! nodes.
//!
//! Listeners of an entry run only on the node that made it (`LogEntry::by`), so that an app behaves as on one process:
//! a welcome broadcast from a `link` listener is sent once. A change a server method or a listener causes is
//! submitted like any other: it is ordered after everything already ordered, and applied (its own listeners included)
//! before the call that caused it returns, so a listener still sees the state its call produced.
//!
//! A connection's own changes (its link, the unlink of a connection that closed, a closing node's unlinks) do not
//! wait: they are queued with [`Sequencer::submit_async`] and their answers applied on a task when they come. Nothing
//! holds the turn while the cluster decides, and no thread waits for it: a slow cluster holds up links, not the
//! messages of linked users. The one-process path never comes here.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::{Change, LinkAddr, LogEntry, LogEvent, Refused, Sequencer, UnlinkReason};
use crate::config::LinkPolicy;
use crate::error::{Error, Status};
use crate::membership::connections::{Connection, Role};
use crate::membership::registry::Link;
use crate::metrics::cluster::ClusterCounts;
use crate::metrics::Reason;
use crate::protocol::{Frame, ServerMessage};
use crate::server::changes::Membership;
use crate::server::link::send_rejected;
use crate::transport::close_reason::CloseReason;
use crate::transport::id::ConnectionId;
use crate::Server;

/// How long a change's answer waits for the entries before its own to be applied by the keeper's catch-up, before it
/// reads them itself.
const GAP_WAIT: Duration = Duration::from_millis(500);

/// Runs a call that waits on the network (a server method's round trip to the cluster's sequencer, a catch-up's read,
/// or a turn held by one) from the synchronous membership path. On a multi-threaded tokio runtime it tells the runtime first (`block_in_place`),
/// which hands this worker's other tasks to another thread: a slow Redis then holds up membership changes, not every
/// connection's messages. Elsewhere (a current-thread runtime, where that is not possible, a blocking thread, no
/// runtime) it just runs the call.
fn off_the_runtime<T>(call: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(call)
        }
        _ => call(),
    }
}

impl Server {
    /// The cluster's sequencer, when this server is a node of one.
    pub(crate) fn sequencer(&self) -> Option<&Arc<dyn Sequencer>> {
        self.inner.cluster.get()
    }

    /// The cluster's sequencer, to hand a message to the other nodes through, while this node's lease is valid. With
    /// a lease that is not, `None` and the message counted as fenced: the node must not speak for users it may no
    /// longer hold (they may be linked elsewhere already).
    pub(crate) fn publisher(&self) -> Option<&Arc<dyn Sequencer>> {
        let sequencer = self.sequencer()?;
        if sequencer.lease_valid() {
            return Some(sequencer);
        }
        self.inner.metrics.fenced_published();
        tracing::debug!("a message for the other nodes dropped: this node's lease is not valid");
        None
    }

    /// Whether this node is a node of a cluster whose lease is not valid now: then it takes no message from its
    /// connections (counted as fenced).
    pub(crate) fn fenced(&self) -> bool {
        let fenced = self.sequencer().is_some_and(|sequencer| !sequencer.lease_valid());
        if fenced {
            self.inner.metrics.fenced_received();
        }
        fenced
    }

    /// The last entry of the cluster's order this node applied (0 before any, and when not in a cluster).
    pub(crate) fn applied(&self) -> u64 {
        self.inner.applied.load(Ordering::SeqCst)
    }

    /// Takes the membership path's turn (it is re-entrant: listeners call back in). On a node of a cluster a turn
    /// can be held for a round trip to Redis, so waiting for one is announced to tokio like the round trip itself
    /// (see [`off_the_runtime`]).
    pub(crate) fn turn(&self) -> impl Sized + '_ {
        let turns = &self.inner.sequencer;
        if self.sequencer().is_none() {
            return turns.lock();
        }
        match turns.try_lock() {
            Some(turn) => turn,
            None => off_the_runtime(|| turns.lock()),
        }
    }

    /// Submits a change and applies what the cluster made of it. `before` runs between the decision and the entries
    /// (a link's `krmx/accepted` goes out there, before the newcomer's snapshot).
    pub(crate) fn submit(
        &self,
        sequencer: &Arc<dyn Sequencer>,
        change: Change,
        before: impl FnOnce(),
    ) -> Result<(), Refused> {
        let _turn = self.turn();
        let started = std::time::Instant::now();
        let submitted = off_the_runtime(|| sequencer.submit(change));
        self.inner.metrics.observe_submit(started.elapsed());
        let entries = submitted?;
        before();
        self.apply_entries(sequencer, entries);
        Ok(())
    }

    /// A server method's membership change on a cluster: refusals read as the method's errors.
    pub(crate) fn submit_method(&self, sequencer: &Arc<dyn Sequencer>, change: Change) -> Result<(), Error> {
        self.submit(sequencer, change, || {}).map_err(|refused| match refused {
            Refused::Failed(error) => error,
            Refused::Rejected(rejection) => Error::Unavailable(rejection.to_string()),
            Refused::Unavailable(why) => Error::Unavailable(why),
        })
    }

    /// Applies entries in order, reading the ones in between first when they do not follow the last one applied.
    pub(crate) fn apply_entries(&self, sequencer: &Arc<dyn Sequencer>, entries: Vec<LogEntry>) {
        let _turn = self.turn();
        for entry in entries {
            if entry.seq <= self.applied() {
                continue; // applied already, by a catch-up a listener's change made
            }
            if entry.seq > self.applied() + 1 {
                if let Err(error) = self.catch_up(sequencer) {
                    // These entries cannot be applied without the ones before: dropping them would leave a link
                    // answered nowhere and this replica off the cluster's. Only a snapshot puts the node back.
                    self.want_resync(&format!(
                        "could not read the cluster's order up to a new entry: {error}"
                    ));
                    return;
                }
            }
            if entry.seq == self.applied() + 1 {
                self.apply_entry(sequencer, &entry);
            }
        }
    }

    /// Asks the cluster layer to start this node over from a snapshot (see [`ClusterHost::resync_needed`]): its
    /// replica missed entries it could not read.
    fn want_resync(&self, why: &str) {
        tracing::error!(
            why,
            "this node's replica is behind the cluster's order: it must start over"
        );
        self.inner.resync_needed.store(true, Ordering::SeqCst);
        self.inner.resync_wanted.notify_waiters();
    }

    /// Applies every entry after the last one applied. Returns an error when they cannot be read (the node must then
    /// start over from a snapshot of the cluster's state). The entries are read without the membership path's turn
    /// (a round trip must not hold up the node's other changes) and applied with it; what was applied meanwhile is
    /// skipped.
    pub(crate) fn catch_up(&self, sequencer: &Arc<dyn Sequencer>) -> Result<(), String> {
        loop {
            let entries = off_the_runtime(|| sequencer.entries_after(self.applied()))?;
            let Some(last) = entries.last().map(|entry| entry.seq) else {
                return Ok(());
            };
            let _turn = self.turn();
            self.apply_entries(sequencer, entries);
            if self.applied() < last {
                return Err(format!("entries did not follow on from {}", self.applied()));
            }
        }
    }

    /// Queues changes with the sequencer without waiting, and applies each answer on a task as it comes, in the order
    /// queued. Nothing waits on the network while holding the turn, and no thread is parked: the runtime keeps
    /// serving linked users while Redis is slow or away. `close()` waits for the answers (they count as open work),
    /// so that a closing node's unlinks are applied before it closes. `then` runs once every answer is applied.
    /// Without a runtime, the changes are submitted one by one, blocking.
    pub(crate) fn submit_later(
        &self,
        sequencer: &Arc<dyn Sequencer>,
        changes: Vec<Change>,
        then: impl FnOnce() + Send + 'static,
    ) {
        let runtime = match tokio::runtime::Handle::try_current() {
            Ok(runtime) if !changes.is_empty() => runtime,
            _ => {
                for change in changes {
                    let user = change.user().to_owned();
                    if let Err(refused) = self.submit(sequencer, change, || {}) {
                        tracing::debug!(username = user, %refused, "a change was refused by the cluster");
                    }
                }
                return then();
            }
        };
        let users: Vec<String> = changes.iter().map(|change| change.user().to_owned()).collect();
        let answers = sequencer.submit_async(changes);
        self.transport_started();
        let server = self.clone();
        runtime.spawn(async move {
            for (user, answer) in users.into_iter().zip(answers) {
                match answer.await {
                    Ok(entries) => server.apply_answer(entries).await,
                    // Unlinked meanwhile by someone else (a kick, a relink elsewhere): nothing left to do.
                    Err(Refused::Failed(error)) => tracing::debug!(username = user, %error, "refused by the cluster"),
                    Err(refused) => tracing::warn!(username = user, %refused, "a change was refused by the cluster"),
                }
            }
            then();
            server.transport_stopped();
        });
    }

    /// Applies the entries a change queued with [`Sequencer::submit_async`] produced. When entries this node has not
    /// applied yet come before them (other nodes' changes), it waits for them: the keeper reads them anyway, as every
    /// new entry is notified to every node, so reading them here too would only cost Redis a second read. Past
    /// [`GAP_WAIT`], it reads them itself, on a blocking thread: a worker never waits on the network.
    pub(crate) async fn apply_answer(&self, entries: Vec<LogEntry>) {
        let Some(sequencer) = self.sequencer().cloned() else {
            return;
        };
        let (Some(first), Some(last)) = (entries.first().map(|e| e.seq), entries.last().map(|e| e.seq)) else {
            return;
        };
        let deadline = tokio::time::Instant::now() + GAP_WAIT;
        loop {
            let moved = self.inner.applied_moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            if self.applied() >= last {
                return; // applied by a catch-up already (its accepted and its listeners included)
            }
            if first <= self.applied() + 1 {
                let _turn = self.turn();
                // Applied only grows: still no gap, so applying reads nothing from the network.
                if first <= self.applied() + 1 {
                    self.apply_entries(&sequencer, entries);
                    return;
                }
            }
            if tokio::time::timeout_at(deadline, moved).await.is_err() {
                break;
            }
        }
        let server = self.clone();
        let filled = tokio::task::spawn_blocking(move || {
            if let Err(error) = server.catch_up(&sequencer) {
                // Not a silent drop: the node starts over (its connections closed, this one's link included).
                return server.want_resync(&format!(
                    "could not read the cluster's order up to a change's entries: {error}"
                ));
            }
            let _turn = server.turn();
            server.apply_entries(&sequencer, entries);
        })
        .await;
        if let Err(error) = filled {
            tracing::error!(%error, "applying a change's entries panicked");
        }
    }

    fn apply_entry(&self, sequencer: &Arc<dyn Sequencer>, entry: &LogEntry) {
        // Applied before its listeners run: a change they make continues from here.
        self.inner.applied.store(entry.seq, Ordering::SeqCst);
        self.inner.applied_moved.notify_waiters();
        let mine = entry.by == sequencer.node();
        let mut undo = false;
        let emitted = match &entry.event {
            LogEvent::Joined { user } => {
                self.apply_join(user);
                (Membership::Join, user)
            }
            LogEvent::Linked { user, link } => {
                self.inner.origins.lock().seen(&link.node, link.generation);
                undo = !self.apply_linked(sequencer, user, link);
                (Membership::Link, user)
            }
            LogEvent::Unlinked { user, reason, link } => {
                if matches!(
                    reason,
                    UnlinkReason::LeaseExpired | UnlinkReason::NodeRestarted | UnlinkReason::NodeReleased
                ) {
                    // That generation of its node is fenced: whatever it still publishes speaks for nobody.
                    self.inner.origins.lock().fenced(&link.node, link.generation);
                }
                if let Some(Link::Local(connection)) = self.apply_unlink(user) {
                    match reason {
                        UnlinkReason::Leaving => {
                            self.inner.leaving.lock().insert(user.clone(), connection);
                        }
                        UnlinkReason::Replaced => {
                            tracing::info!(connection = %connection.id, user, "replaced by a new connection: closing");
                            connection.close(CloseReason::Replaced);
                        }
                        _ => {}
                    }
                }
                (Membership::Unlink, user)
            }
            LogEvent::Left { user } => {
                if let Some(connection) = self.inner.leaving.lock().remove(user) {
                    // The leaving connection hears of its own leave, as in the reference.
                    let _ = connection.push(ServerMessage::Left(user).to_frame());
                }
                self.apply_leave(user);
                (Membership::Leave, user)
            }
        };
        if mine {
            self.emit_membership(emitted.0, emitted.1);
        }
        // A link to a connection of ours that nobody waits for (it closed, was told it was rejected, or links as
        // another user now): nobody can use it, so undo it.
        if let (true, LogEvent::Linked { user, link }) = (undo, &entry.event) {
            self.submit_later(
                sequencer,
                vec![Change::unlink_connection(user.as_str(), link.connection)],
                || {},
            );
        }
    }

    /// Applies a link entry: to the connection of this node that waits for it (told `krmx/accepted` first, whoever
    /// applies the entry: its waiter or a catch-up), or as a link on another node. Returns `false` when the link is
    /// this node's but no connection waits for it (closed, told `krmx/rejected` after an outcome the node could not
    /// learn, or linking as another user now): it is recorded as every node records it, and must be undone. Matching
    /// by connection and user, not only by connection, is what keeps a late entry from linking a connection that was
    /// told it was rejected.
    fn apply_linked(&self, sequencer: &Arc<dyn Sequencer>, user: &str, link: &LinkAddr) -> bool {
        let connection = sequencer
            .owns(link)
            .then(|| self.inner.connections.get(ConnectionId(link.connection)))
            .flatten();
        let waiting = connection.filter(|connection| {
            let mut state = connection.state.lock();
            let waited = matches!(&state.role, Role::Linking { deciding: Some(name), .. } if name == user);
            if waited {
                state.role = Role::Unlinked;
            }
            waited
        });
        let Some(connection) = waiting else {
            self.apply_link_remote(user, link.clone());
            return !sequencer.owns(link);
        };
        let _ = connection.push(ServerMessage::Accepted.to_frame());
        if self.apply_link(&connection, user) {
            return true;
        }
        // Told accepted, yet it cannot be linked here (closing meanwhile): closed, so that its client relinks, and
        // the link undone on the cluster.
        tracing::warn!(connection = %connection.id, user, "an accepted link could not be applied: closing");
        connection.close(CloseReason::Restart);
        self.apply_link_remote(user, link.clone());
        false
    }

    /// The unlink of `username` a linked connection of this node asks for (or causes, by closing or misbehaving).
    pub(crate) fn unlink_connection(&self, connection: &Arc<Connection>, username: &str) {
        match self.sequencer() {
            None => self.unlink_user(username),
            Some(sequencer) => {
                match self.submit(sequencer, Change::unlink_connection(username, connection.id.0), || {}) {
                    Ok(()) => {}
                    // Unlinked meanwhile by someone else (a kick, a relink elsewhere): nothing left to do.
                    Err(Refused::Failed(error)) => tracing::debug!(username, %error, "already unlinked on the cluster"),
                    Err(refused) => tracing::warn!(username, %refused, "could not unlink on the cluster"),
                }
            }
        }
    }

    /// Unlinks the users of connections that are gone or going (closed, or the node is closing), without waiting:
    /// the unlinks are queued together, so the sequencer sends them in as few round trips as it can. Their roles are
    /// unlinked now, so that a connection's close does not ask again; the registry follows when the entries apply,
    /// and then `then` runs.
    pub(crate) fn unlink_gone(
        &self,
        sequencer: &Arc<dyn Sequencer>,
        connections: &[Arc<Connection>],
        then: impl FnOnce() + Send + 'static,
    ) {
        let changes = connections
            .iter()
            .filter_map(|connection| {
                let mut state = connection.state.lock();
                let Role::Linked(member) = &state.role else {
                    return None;
                };
                let change = Change::unlink_connection(member.name.as_str(), connection.id.0);
                state.role = Role::Unlinked;
                Some(change)
            })
            .collect();
        self.submit_later(sequencer, changes, then);
    }

    /// A link on a cluster: the cluster's sequencer decides it against the cluster-wide state (this node's view of
    /// the users may be behind), and the entries it returns join and link the user here as on every node. The
    /// connection waits as `Linking` (its messages are answered as while it authenticates); nothing holds the turn
    /// while Redis decides. Without a runtime the link is decided on the spot.
    pub(crate) fn decide_link_on_cluster(
        &self,
        sequencer: &Arc<dyn Sequencer>,
        connection: &Arc<Connection>,
        username: &str,
        received: Instant,
    ) {
        let change = Change::Link {
            user: username.to_owned(),
            connection: connection.id.0,
            accept_new_users: self.inner.config.accept_new_users,
            replace: self.inner.config.link_policy == LinkPolicy::Replace,
        };
        let attempt = self.inner.next_attempt.fetch_add(1, Ordering::Relaxed);
        // The connection waits for this attempt's entry: only an entry for this user finds it waiting (and tells it
        // `krmx/accepted`), and only once.
        connection.state.lock().role = Role::Linking {
            attempt,
            task: None,
            deciding: Some(username.to_owned()),
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            let accepted = || {
                self.inner.metrics.accepted();
                self.inner.metrics.link.observe_duration(received.elapsed());
            };
            if let Err(refused) = self.submit(sequencer, change, accepted) {
                if self.stop_waiting(connection, attempt) {
                    self.link_refused(sequencer, connection, username, refused);
                }
            }
            return;
        };
        let Some(answer) = sequencer.submit_async(vec![change]).pop() else {
            return;
        };
        let server = self.clone();
        let sequencer = sequencer.clone();
        let connection = connection.clone();
        let username = username.to_owned();
        self.transport_started();
        runtime.spawn(async move {
            let started = std::time::Instant::now();
            let answer = answer.await;
            server.inner.metrics.observe_submit(started.elapsed());
            match answer {
                Ok(entries) => {
                    tracing::debug!(connection = %connection.id, username, "accepted");
                    server.inner.metrics.accepted();
                    server.inner.metrics.link.observe_duration(received.elapsed());
                    server.apply_answer(entries).await;
                }
                Err(refused) => {
                    let _turn = server.turn();
                    if server.stop_waiting(&connection, attempt) {
                        server.link_refused(&sequencer, &connection, &username, refused);
                    }
                }
            }
            server.transport_stopped();
        });
    }

    /// Ends a connection's wait for link `attempt`, if it still waits for it: `false` when the attempt was answered
    /// already (its entry applied) or the connection moved on.
    fn stop_waiting(&self, connection: &Connection, attempt: u64) -> bool {
        let mut state = connection.state.lock();
        let waiting = matches!(state.role, Role::Linking { attempt: now, .. } if now == attempt);
        if waiting {
            state.role = Role::Unlinked;
        }
        waiting
    }

    /// Tells a connection its link was refused by the cluster; undoes a link whose outcome is unknown.
    fn link_refused(
        &self,
        sequencer: &Arc<dyn Sequencer>,
        connection: &Arc<Connection>,
        username: &str,
        refused: Refused,
    ) {
        match refused {
            Refused::Rejected(rejection) => {
                self.inner.metrics.rejected(Reason::of(&rejection.to_string()));
                send_rejected(connection, &rejection.to_string());
            }
            refused => {
                tracing::warn!(connection = %connection.id, username, %refused, "link refused by the cluster");
                self.inner.metrics.rejected(Reason::ClusterUnavailable);
                send_rejected(connection, &refused.to_string());
                if let Refused::Unavailable(_) = refused {
                    // Its outcome is unknown: undo it in case it was made. A refusal means there is nothing to undo.
                    self.submit_later(
                        sequencer,
                        vec![Change::unlink_connection(username, connection.id.0)],
                        || {},
                    );
                }
            }
        }
    }

    /// The leave of `username` its linked connection of this node asks for.
    pub(crate) fn leave_connection(&self, connection: &Arc<Connection>, username: &str) {
        match self.sequencer() {
            None => self.leave_user(username),
            Some(sequencer) => {
                let change = Change::leave_connection(username, connection.id.0);
                if let Err(refused) = self.submit(sequencer, change, || {}) {
                    tracing::warn!(username, %refused, "could not leave on the cluster");
                }
            }
        }
    }

    /// Hands a send to the node `username` is linked on, when it is linked on another node. `None` when it is not.
    pub(crate) fn send_elsewhere(&self, username: &str, frame: &Frame) -> Option<()> {
        self.sequencer()?;
        let registry = self.inner.registry.lock();
        let Some(Link::Remote(link)) = registry.user(username)?.link.as_ref() else {
            return None;
        };
        // Not handed over without a valid lease: dropped (and counted) as a message lost on the way would be.
        if let Some(sequencer) = self.publisher() {
            sequencer.publish_send(link, username, self.applied(), frame);
        }
        Some(())
    }
}

/// The cluster's side of a [`Server`]: installing a sequencer, applying the cluster's order, and delivering what the
/// other nodes send. `emitter-redis` uses it; applications do not need it.
///
/// Every method may block (it reads the cluster's order when this node is behind): call them from a blocking context
/// (`tokio::task::spawn_blocking`), never from an async task directly.
#[derive(Clone)]
pub struct ClusterHost {
    server: Server,
}

impl std::fmt::Debug for ClusterHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHost").finish_non_exhaustive()
    }
}

impl ClusterHost {
    /// The cluster's handle on `server`. Applications do not need it.
    pub fn of(server: &Server) -> ClusterHost {
        ClusterHost { server: server.clone() }
    }

    /// Makes the server a node of a cluster, starting from the cluster's state at `seq` (its users in join order, with
    /// their links). Only before the server starts listening; fails if it is listening or in a cluster already.
    pub fn install(
        &self,
        sequencer: Arc<dyn Sequencer>,
        seq: u64,
        users: Vec<(String, Option<LinkAddr>)>,
    ) -> Result<(), Error> {
        let server = &self.server;
        let _turn = server.turn();
        if server.status() != Status::Initializing {
            return Err(Error::WrongStatus {
                action: "join a cluster",
                status: server.status(),
            });
        }
        if server.inner.cluster.set(sequencer).is_err() {
            return Err(Error::Unavailable("the server is in a cluster already".to_owned()));
        }
        // The node registered just before: its lease is fresh.
        server.inner.metrics.lease_renewed();
        self.seed(seq, users);
        Ok(())
    }

    /// The last entry of the cluster's order this node applied.
    pub fn applied(&self) -> u64 {
        self.server.applied()
    }

    /// Applies every entry of the cluster's order this node has not applied yet. An error means the node is too far
    /// behind (or the order is gone): [`restart`](ClusterHost::restart) it from a snapshot.
    pub fn catch_up(&self) -> Result<(), String> {
        match self.server.sequencer() {
            Some(sequencer) => self.server.catch_up(sequencer),
            None => Ok(()),
        }
    }

    /// Whether a message from generation `generation` of node `origin` may be delivered here: not when this node
    /// knows that generation fenced (the log unlinked its users for a lost lease, a new registration, or a release)
    /// or has seen a newer generation of that node (in the log or in a message). Such a message comes from a node
    /// that spoke past its lease; it is dropped and counted (`krmx_cluster_fenced_messages_total{at="delivered"}`).
    /// Call it before [`deliver_broadcast`](ClusterHost::deliver_broadcast) and its kind. Never blocks for long.
    ///
    /// ```
    /// use emitter_core::cluster::ClusterHost;
    ///
    /// let host = ClusterHost::of(&emitter_core::Server::new());
    /// assert!(host.admits("a", 2));
    /// // Generation 3 of node a was seen: generation 2 is over.
    /// assert!(host.admits("a", 3));
    /// assert!(!host.admits("a", 2));
    /// ```
    pub fn admits(&self, origin: &str, generation: u64) -> bool {
        let server = &self.server;
        let admitted = server.inner.origins.lock().admits(origin, generation);
        if !admitted {
            server.inner.metrics.fenced_delivered();
            tracing::debug!(
                origin,
                generation,
                "a message from a fenced generation of another node: dropped"
            );
        }
        admitted
    }

    /// Resolves when this node's replica missed entries it could not read (a gap it failed to fill while applying a
    /// change's answer): the cluster layer must then start the node over from a snapshot
    /// ([`restart`](ClusterHost::restart)), as for a lost place in the log. Resolves at once if that happened before
    /// the call and no restart followed.
    pub async fn resync_needed(&self) {
        let inner = &self.server.inner;
        loop {
            let wanted = inner.resync_wanted.notified();
            tokio::pin!(wanted);
            wanted.as_mut().enable();
            if inner.resync_needed.load(Ordering::SeqCst) {
                return;
            }
            wanted.await;
        }
    }

    /// Delivers another node's broadcast to this node's linked users but `skip`, once this node has applied `after`.
    /// Cheap when this node has applied `after` already (the usual case): then it only queues the frame.
    pub fn deliver_broadcast(&self, after: u64, skip: Option<&str>, frame: Frame) {
        if self.server.applied() < after {
            let _ = self.catch_up();
        }
        let _ = self.server.fan_out(|registry| {
            // Kept for the users unlinked everywhere, as the origin kept it for them: whichever node a user
            // relinks on then has it.
            registry.keep_for_unlinked(&frame, skip);
            registry.push_to_linked(&frame, skip)
        });
    }

    /// Keeps another node's send to `username`, who was unlinked everywhere when it was sent, until it links again
    /// (see [`Sequencer::publish_kept`]); pushes it to its connection if it has linked on this node since.
    pub fn deliver_kept(&self, after: u64, username: &str, frame: Frame) {
        if self.server.applied() < after {
            let _ = self.catch_up();
        }
        let kept = self.server.fan_out(|registry| registry.keep(username, frame.clone()));
        match kept {
            Ok(_) => {}
            Err(Link::Local(connection)) => {
                if connection.push(frame).is_err() {
                    tracing::debug!(
                        username,
                        "a kept message from another node found its connection closing"
                    );
                }
            }
            // Linked on another node since: that node delivers its own copy.
            Err(Link::Remote(_)) => {}
        }
    }

    /// Delivers another node's send to `username`, if it is linked on this node, once this node has applied `after`.
    pub fn deliver_send(&self, after: u64, username: &str, frame: Frame) {
        if self.server.applied() < after {
            let _ = self.catch_up();
        }
        let pushed = self
            .server
            .inner
            .links
            .with(username, |link| link.map(|link| link.push(frame)));
        if !matches!(pushed, Some(Ok(()))) {
            tracing::debug!(username, "a send from another node found nobody linked here");
        }
    }

    /// Closes every connection of this node: a node that lost its lease (or its cluster's state) stops serving
    /// rather than risk a link the cluster no longer backs. Its clients reconnect (to another node, or to this one
    /// once it is back: until then their links are refused). The users stay as they were until
    /// [`restart`](ClusterHost::restart).
    pub fn close_connections(&self) {
        let server = &self.server;
        let connections = server.inner.connections.all();
        if !connections.is_empty() {
            tracing::warn!(
                count = connections.len(),
                "this node stops serving: closing its connections"
            );
        }
        for connection in connections {
            connection.close(CloseReason::Restart);
        }
    }

    /// Starts over from the cluster's state at `seq`: every connection of this node is closed (its clients relink and
    /// get a fresh snapshot), and the users are the snapshot's. For a node that lost its place: its lease, or the
    /// cluster's state, or the part of the order it had not applied.
    pub fn restart(&self, seq: u64, users: Vec<(String, Option<LinkAddr>)>) {
        let server = &self.server;
        let _turn = server.turn();
        tracing::warn!(
            seq,
            "starting over from the cluster's state: closing this node's connections"
        );
        for connection in server.inner.connections.all() {
            connection.close(crate::transport::close_reason::CloseReason::Restart);
        }
        let names: Vec<String> = server.users().into_iter().map(|user| user.username).collect();
        for name in names {
            let _ = server.apply_unlink(&name);
            server.apply_leave(&name);
        }
        server.inner.leaving.lock().clear();
        self.seed(seq, users);
        // The node registered again just before: it holds a fresh lease.
        server.inner.metrics.resynced();
        server.inner.metrics.lease_renewed();
    }

    // ---- health and metrics: what only the cluster layer sees ---------------------------------------------------

    /// Reports that the node renewed its lease, in a call that took `round_trip`: it holds the lease,
    /// `krmx_cluster_lease_age_seconds` starts again from zero, and `krmx_cluster_renew_duration_seconds` observes the
    /// round trip. [`install`](ClusterHost::install) and [`restart`](ClusterHost::restart) count as renewals (the node
    /// has just registered). Never blocks.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// use emitter_core::cluster::ClusterHost;
    ///
    /// let server = emitter_core::Server::new();
    /// // Only a node (a server with a sequencer installed) exposes its cluster metrics; this one is not.
    /// ClusterHost::of(&server).lease_renewed(Duration::from_millis(2));
    /// assert!(!server.metrics_text().contains("krmx_cluster_renew_duration_seconds"));
    /// ```
    pub fn lease_renewed(&self, round_trip: Duration) {
        let metrics = &self.server.inner.metrics;
        metrics.observe_renewal(round_trip);
        metrics.lease_renewed();
    }

    /// Reports that the node lost its lease: [`Server::health`] says so (and `GET /health` answers 503) until the
    /// node registers again and [`restart`](ClusterHost::restart)s. Never blocks.
    ///
    /// ```
    /// use emitter_core::cluster::ClusterHost;
    /// use emitter_core::{Health, Server, Status};
    ///
    /// let server = Server::new();
    /// ClusterHost::of(&server).lease_lost();
    /// // Not a node, and not listening: the lease does not count.
    /// assert_eq!(server.health(), Health::NotListening(Status::Initializing));
    /// ```
    pub fn lease_lost(&self) {
        self.server.inner.metrics.lease_lost();
    }

    /// Where the server's metrics read what the cluster layer counts (`krmx_cluster_messages_lost_total`,
    /// `krmx_cluster_repeats_dropped_total`, `krmx_cluster_resyncs_total{kind="catch_up"}`): `source` is called on
    /// every scrape, so keep it to a few atomic loads.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    ///
    /// use emitter_core::cluster::ClusterHost;
    ///
    /// let server = emitter_core::Server::new();
    /// let lost = Arc::new(AtomicU64::new(0));
    /// let counted = lost.clone();
    /// ClusterHost::of(&server)
    ///     .set_counts(move || emitter_core::cluster::ClusterCounts::new(counted.load(Ordering::Relaxed), 0));
    /// ```
    pub fn set_counts(&self, source: impl Fn() -> ClusterCounts + Send + Sync + 'static) {
        self.server.inner.metrics.set_counts(Box::new(source));
    }

    fn seed(&self, seq: u64, users: Vec<(String, Option<LinkAddr>)>) {
        let server = &self.server;
        // A new start: the replica is whole again, and generations may start over (a new epoch reuses them).
        server.inner.resync_needed.store(false, Ordering::SeqCst);
        server.inner.origins.lock().clear();
        for (name, link) in users {
            server.apply_join(&name);
            if let Some(link) = link {
                server.inner.origins.lock().seen(&link.node, link.generation);
                server.apply_link_remote(&name, link);
            }
        }
        server.inner.applied.store(seq, Ordering::SeqCst);
        server.inner.applied_moved.notify_waiters();
    }
}
