//! A server as one node of a cluster: membership changes submitted to the cluster's [`Sequencer`], the entries it
//! orders applied in that order with the steps of `server/changes.rs`, and messages handed to and taken from the other
//! nodes.
//!
//! Listeners of an entry run only on the node that made it (`LogEntry::by`), so that an app behaves as on one process:
//! a welcome broadcast from a `link` listener is sent once. The `on_membership` listeners run on every node for every
//! entry it applies, with the entry's seq: for what a node does for its own users, or an owner once per cluster.
//!
//! Nothing waits for the cluster on a runtime. Every change (a connection's link, its `krmx/unlink` and `krmx/leave`,
//! the unlink of a connection that closed, a closing node's unlinks, and the server methods `join`, `unlink` and
//! `kick`) is queued with [`Sequencer::submit_async`], and its answer is applied on a task when it comes. A server
//! method checks what this node's view can tell (the status, the username rule, whether the user exists or is
//! linked), queues the change and returns: the change and its listeners are applied when its entry comes back, on
//! every node alike, after every change ordered before it. A listener or a caller that needs the effect waits for its
//! event. A refusal the cluster makes later (this node's view was behind) is logged. So a slow or paused cluster
//! holds up membership changes, never the messages of linked users, on a multi-threaded and a current-thread runtime
//! alike.
//!
//! The turn (the membership path's lock) is never held across a round trip. The only network call on the way to
//! applying entries is the read that fills a gap before them ([`Server::catch_up`]): it happens on a blocking thread
//! (the keeper's, or an answer's when the keeper is slow to fill the gap), never on a runtime's worker. Without a
//! runtime (no `Handle::try_current`), changes are decided on the spot with the blocking [`Sequencer::submit`], the
//! turn taken only to apply the entries. A node that fell behind the log rebuilds from a snapshot without closing
//! the connections whose links still hold ([`ClusterHost::rebuild`]). The one-process path never comes here.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::{Change, LinkAddr, LogEntry, LogEvent, Refused, Sequencer, Submission, UnlinkReason};
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

impl Server {
    /// The cluster's sequencer, when this server is a node of one.
    pub(crate) fn sequencer(&self) -> Option<&Arc<dyn Sequencer>> {
        self.inner.cluster.get()
    }

    /// Whether this server is a node of a cluster: a cluster layer (`emitter-redis`'s `Node`) installed its sequencer
    /// with [`ClusterHost::install`], so membership is the cluster's. It never changes back, and it cannot change once
    /// the server listens. What an application keeps in this process's memory is then this node's alone: a model
    /// that should be shared goes through the cluster (`emitter-state`'s `register_journaled`).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use emitter_core::cluster::{Change, ClusterHost, LinkAddr, LogEntry, Refused, Sequencer};
    /// use emitter_core::protocol::Frame;
    /// use emitter_core::Server;
    ///
    /// /// A sequencer that decides nothing: enough to make a server a node.
    /// struct Nowhere;
    ///
    /// impl Sequencer for Nowhere {
    ///     fn node(&self) -> &str { "nowhere" }
    ///     fn owns(&self, _: &LinkAddr) -> bool { false }
    ///     fn submit(&self, _: Change) -> Result<Vec<LogEntry>, Refused> {
    ///         Err(Refused::Unavailable("nowhere".to_owned()))
    ///     }
    ///     fn entries_after(&self, _: u64) -> Result<Vec<LogEntry>, String> { Ok(Vec::new()) }
    ///     fn publish_broadcast(&self, _: u64, _: Option<&str>, _: &Frame) {}
    ///     fn publish_send(&self, _: &LinkAddr, _: &str, _: u64, _: &Frame) {}
    ///     fn publish_kept(&self, _: &str, _: u64, _: &Frame) {}
    /// }
    ///
    /// let server = Server::new();
    /// assert!(!server.is_cluster_node());
    /// ClusterHost::of(&server).install(Arc::new(Nowhere), 0, Vec::new()).unwrap();
    /// assert!(server.is_cluster_node());
    /// ```
    pub fn is_cluster_node(&self) -> bool {
        self.sequencer().is_some()
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

    /// Takes the membership path's turn (it is re-entrant: listeners call back in). Nobody holds it across a round
    /// trip to the cluster on a runtime, so waiting for it is waiting for other changes' bookkeeping and listeners.
    pub(crate) fn turn(&self) -> impl Sized + '_ {
        self.inner.sequencer.lock()
    }

    /// Submits a change and applies what the cluster made of it, blocking the calling thread for the round trip: only
    /// without a tokio runtime (with one, changes go through [`Server::submit_later`]). The turn is not held for the
    /// round trip (unless a caller up the stack holds it: a listener's change): it is taken to apply the entries.
    pub(crate) fn submit(&self, sequencer: &Arc<dyn Sequencer>, change: Change) -> Result<(), Refused> {
        let started = Instant::now();
        let submitted = sequencer.submit(change);
        self.inner.metrics.observe_submit(started.elapsed());
        self.apply_entries(sequencer, submitted?);
        Ok(())
    }

    /// A server method's membership change on a cluster, once the method has checked what this node can (its status,
    /// the username rule, the user as far as this node's view tells).
    ///
    /// With a tokio runtime the change is queued ([`Server::submit_later`]) and the method returns at once: the change
    /// and its listeners are applied when its entry comes back, on every node alike. A change the sequencer refuses on
    /// the spot (its queue is full, its backend is away) is the method's error; a refusal the cluster makes later
    /// (this node's view was behind) is logged. Without a runtime the change is decided on the spot, blocking, and a
    /// refusal is the method's error.
    pub(crate) fn submit_method(&self, sequencer: &Arc<dyn Sequencer>, change: Change) -> Result<(), Error> {
        let method_error = |refused| match refused {
            Refused::Failed(error) => error,
            Refused::Rejected(rejection) => Error::Unavailable(rejection.to_string()),
            Refused::Unavailable(why) => Error::Unavailable(why),
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self.submit(sequencer, change).map_err(method_error);
        };
        let user = change.user().to_owned();
        let Some(mut answer) = sequencer.submit_async(vec![change]).pop() else {
            return Ok(());
        };
        // Refused at once (a full queue, a backend in back-off): the caller hears it now. A sequencer's future never
        // blocks when polled, so one poll here costs nothing.
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        let answer = match answer.as_mut().poll(&mut context) {
            std::task::Poll::Ready(Err(refused)) => return Err(method_error(refused)),
            // Decided already (an in-memory sequencer): a finished future is not polled again.
            std::task::Poll::Ready(Ok(entries)) => Box::pin(std::future::ready(Ok(entries))) as Submission,
            std::task::Poll::Pending => answer,
        };
        self.spawn_answers(&runtime, vec![(user, answer)], || {});
        Ok(())
    }

    /// Applies entries in order, skipping what is applied already (a catch-up got there first). When they do not
    /// follow the last one applied, the ones in between are read first ([`Server::catch_up`]), without the turn:
    /// that is the only network call here, so a caller on a runtime's worker passes entries that follow on (see
    /// [`Server::apply_answer`]) and a gap is only ever filled on a blocking thread, or without a runtime.
    pub(crate) fn apply_entries(&self, sequencer: &Arc<dyn Sequencer>, entries: Vec<LogEntry>) {
        if entries.first().is_some_and(|entry| entry.seq > self.applied() + 1) {
            if let Err(error) = self.catch_up(sequencer) {
                // These entries cannot be applied without the ones before: dropping them would leave a link
                // answered nowhere and this replica off the cluster's. Only a snapshot puts the node back.
                self.want_resync(&format!(
                    "could not read the cluster's order up to a new entry: {error}"
                ));
                return;
            }
        }
        if let Some(gap) = self.apply_following(sequencer, entries) {
            // The keeper reads them on its next notice (or rebuilds from a snapshot when they are gone).
            tracing::warn!(
                after = self.applied(),
                next = gap,
                "entries left for the keeper: a gap before them"
            );
        }
    }

    /// Applies, under the turn, the entries that follow on from the last one applied; skips those applied already.
    /// Returns the seq of the first entry after a gap, where it stopped, if any.
    pub(crate) fn apply_following(&self, sequencer: &Arc<dyn Sequencer>, entries: Vec<LogEntry>) -> Option<u64> {
        let _turn = self.turn();
        for entry in entries {
            if entry.seq <= self.applied() {
                continue; // applied already, by a catch-up or a change a listener made
            }
            if entry.seq > self.applied() + 1 {
                return Some(entry.seq);
            }
            self.apply_entry(sequencer, &entry);
        }
        None
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
    /// rebuild from a snapshot of the cluster's state). Reads the network: never on a runtime's worker thread. The
    /// entries are read without the membership path's turn (a round trip must not hold up the node's other changes)
    /// and applied with it; what was applied meanwhile is skipped.
    pub(crate) fn catch_up(&self, sequencer: &Arc<dyn Sequencer>) -> Result<(), String> {
        self.catch_up_to(sequencer, u64::MAX)
    }

    /// [`Server::catch_up`], done once `seq` is applied: no read past it to find that nothing newer is there yet
    /// (what is newer is notified in its turn).
    pub(crate) fn catch_up_to(&self, sequencer: &Arc<dyn Sequencer>, seq: u64) -> Result<(), String> {
        while self.applied() < seq {
            let entries = sequencer.entries_after(self.applied())?;
            let Some(last) = entries.last().map(|entry| entry.seq) else {
                return Ok(());
            };
            self.apply_following(sequencer, entries);
            if self.applied() < last {
                return Err(format!("entries did not follow on from {}", self.applied()));
            }
        }
        Ok(())
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
                    if let Err(refused) = self.submit(sequencer, change) {
                        tracing::debug!(username = user, %refused, "a change was refused by the cluster");
                    }
                }
                return then();
            }
        };
        let users: Vec<String> = changes.iter().map(|change| change.user().to_owned()).collect();
        let answers = sequencer.submit_async(changes);
        self.spawn_answers(&runtime, users.into_iter().zip(answers).collect(), then);
    }

    /// Applies queued changes' answers on a task, in order, then runs `then`. The task counts as open work for
    /// `close()`.
    fn spawn_answers(
        &self,
        runtime: &tokio::runtime::Handle,
        answers: Vec<(String, Submission)>,
        then: impl FnOnce() + Send + 'static,
    ) {
        self.transport_started();
        let server = self.clone();
        let started = Instant::now();
        runtime.spawn(async move {
            for (user, answer) in answers {
                let answer = answer.await;
                server.inner.metrics.observe_submit(started.elapsed());
                match answer {
                    Ok(entries) => server.apply_answer(entries).await,
                    // Decided against a newer state than this node's view when it was queued (unlinked meanwhile by
                    // someone else, joined elsewhere, …): nothing to apply.
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
                // Applied only grows: no gap, so applying reads nothing from the network (a worker never does).
                self.apply_following(&sequencer, entries);
                return;
            }
            if tokio::time::timeout_at(deadline, moved).await.is_err() {
                break;
            }
        }
        let server = self.clone();
        // Fills the gap first (a read, on this blocking thread), then applies.
        let filled = tokio::task::spawn_blocking(move || server.apply_entries(&sequencer, entries)).await;
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
        // Every node's: what a node does for its own users, or an owner once per cluster.
        self.emit_applied(emitted.0, emitted.1, entry.seq);
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

    /// The unlink of `username` a linked connection of this node asks for (or causes, by misbehaving). On a cluster it
    /// is queued, not waited for: the connection stays linked until its entry comes back (its messages meanwhile are
    /// its user's, as they were ordered before the unlink).
    pub(crate) fn unlink_connection(&self, connection: &Arc<Connection>, username: &str) {
        match self.sequencer() {
            None => self.unlink_user(username),
            Some(sequencer) => {
                let change = Change::unlink_connection(username, connection.id.0);
                self.submit_later(sequencer, vec![change], || {});
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
        // Waiting as `Linking`: whoever applies the link's entry (the answer, or a catch-up) sends its acceptance.
        // Only an entry for this user finds it waiting (and tells it `krmx/accepted`), and only once.
        connection.state.lock().role = Role::Linking {
            attempt,
            task: None,
            deciding: Some(username.to_owned()),
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime: decided on the spot, blocking this thread (not holding the turn) for the round trip.
            let started = Instant::now();
            let answer = sequencer.submit(change);
            self.inner.metrics.observe_submit(started.elapsed());
            match answer {
                Ok(entries) => {
                    self.inner.metrics.accepted();
                    self.inner.metrics.link.observe_duration(received.elapsed());
                    self.apply_entries(sequencer, entries);
                }
                Err(refused) => self.link_answered_no(sequencer, connection, username, attempt, refused),
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
                    let last = entries.last().map_or(0, |entry| entry.seq);
                    server.apply_answer(entries).await;
                    // Under the turn: an entry counts as applied (`applied`) just before it is, so a catch-up on
                    // another thread may be applying this very link; the turn waits for it to finish.
                    let _turn = server.turn();
                    if server.applied() >= last && server.stop_waiting(&connection, attempt) {
                        // Its entry was passed over by a rebuild from a snapshot (the node had fallen behind the
                        // log): whether the link still holds is unknown here, so the client starts afresh.
                        tracing::info!(connection = %connection.id, username, "a link passed over by a rebuild");
                        connection.close(CloseReason::Restart);
                    }
                }
                Err(refused) => server.link_answered_no(&sequencer, &connection, &username, attempt, refused),
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

    /// The cluster refused the link attempt `attempt`: tells the connection, if it still waits for it.
    fn link_answered_no(
        &self,
        sequencer: &Arc<dyn Sequencer>,
        connection: &Arc<Connection>,
        username: &str,
        attempt: u64,
        refused: Refused,
    ) {
        let _turn = self.turn();
        if self.stop_waiting(connection, attempt) {
            self.link_refused(sequencer, connection, username, refused);
        }
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

    /// The leave of `username` its linked connection of this node asks for. On a cluster it is queued, like
    /// [`Server::unlink_connection`].
    pub(crate) fn leave_connection(&self, connection: &Arc<Connection>, username: &str) {
        match self.sequencer() {
            None => self.leave_user(username),
            Some(sequencer) => {
                let change = Change::leave_connection(username, connection.id.0);
                self.submit_later(sequencer, vec![change], || {});
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
/// [`catch_up`](ClusterHost::catch_up) reads the cluster's order, and so do the `deliver_*` methods when this node has
/// not applied what the message follows: call them from a blocking context (`tokio::task::spawn_blocking`), never from
/// an async task directly, unless the node has applied `after` already. The others take the membership path's turn
/// (held for bookkeeping and listeners, never for a round trip) and do not touch the network.
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
    /// behind ([`rebuild`](ClusterHost::rebuild) it from a snapshot) or the order is gone
    /// ([`restart`](ClusterHost::restart) it).
    pub fn catch_up(&self) -> Result<(), String> {
        self.catch_up_to(u64::MAX)
    }

    /// [`catch_up`](ClusterHost::catch_up) until the entry at `seq` is applied (one a notification named): it
    /// stops there rather than read the order once more to find nothing newer. Errors as `catch_up`.
    pub fn catch_up_to(&self, seq: u64) -> Result<(), String> {
        match self.server.sequencer() {
            Some(sequencer) => self.server.catch_up_to(sequencer, seq),
            None => Ok(()),
        }
    }

    /// Applies `entries` when they follow on from the last entry applied (those applied already are skipped), and
    /// never reads the order: it stops at a gap. Returns whether every entry is applied now. For entries in hand (a
    /// notification carried them), so that applying them needs no thread that may block.
    pub fn apply_in_step(&self, entries: Vec<LogEntry>) -> bool {
        let Some(sequencer) = self.server.sequencer() else {
            return false;
        };
        let last = entries.last().map_or(0, |entry| entry.seq);
        if entries.first().is_some_and(|entry| entry.seq > self.applied() + 1) {
            return false;
        }
        self.server.apply_following(sequencer, entries);
        self.applied() >= last
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
    /// get a fresh snapshot), and the users are the snapshot's. For a node whose links are gone: it lost its lease
    /// (it registers again, a new generation), or the cluster lost its state. A node that only fell behind the log
    /// [`rebuild`](ClusterHost::rebuild)s instead.
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

    /// Catches up from the cluster's state at `seq` (its users in join order, with their links) when the entries
    /// this node has not applied are gone (trimmed from the log), keeping the connections whose links still hold.
    ///
    /// The difference between this node's users and the snapshot's is applied as changes: users gone leave (unlinked
    /// first), users new join, links that changed are unlinked and linked again. The clients linked here hear of
    /// each, as of any change, so their view ends equal to the snapshot's; the order of the users is kept by leaving
    /// and joining again a user whose place changed (it left and joined again meanwhile). A connection of this node
    /// whose link is not in the snapshot any more is closed ([`CloseReason::Restart`]): its client relinks. A link of
    /// this node's connection that was made meanwhile is applied as its entry would have been (its acceptance, then
    /// its snapshot, and its `link` listeners). The other listeners of the changes passed over ran on the nodes
    /// that made them, or not at all (this node's own changes among them: a join its link caused, say).
    ///
    /// For a node that still holds its lease: one that lost it [`restart`](ClusterHost::restart)s, as its links are
    /// gone with it. A snapshot older than what the node applied changes nothing.
    pub fn rebuild(&self, seq: u64, users: Vec<(String, Option<LinkAddr>)>) {
        let server = &self.server;
        let Some(sequencer) = server.sequencer().cloned() else {
            return;
        };
        let _turn = server.turn();
        if seq <= server.applied() {
            tracing::debug!(
                seq,
                applied = server.applied(),
                "a snapshot no newer than this node: nothing to rebuild"
            );
            return;
        }
        tracing::warn!(
            seq,
            applied = server.applied(),
            "rebuilding from the cluster's state: the log moved on"
        );
        let current: Vec<(String, Option<Link>)> = server
            .inner
            .registry
            .lock()
            .slots()
            .map(|slot| (slot.member.name.clone(), slot.link.clone()))
            .collect();
        // The users that keep their place: the snapshot's first users, as long as they come in this node's order.
        let place: std::collections::HashMap<&str, usize> = current
            .iter()
            .enumerate()
            .map(|(at, (name, _))| (name.as_str(), at))
            .collect();
        let mut kept = 0;
        let mut last = None;
        for (name, _) in &users {
            match place.get(name.as_str()) {
                Some(&at) if last.is_none_or(|last| at > last) => {
                    last = Some(at);
                    kept += 1;
                }
                _ => break,
            }
        }
        let wanted: std::collections::HashMap<&str, Option<&LinkAddr>> = users[..kept]
            .iter()
            .map(|(name, link)| (name.as_str(), link.as_ref()))
            .collect();
        // Leaving connections whose leave was passed over hear of it, as they would have.
        let leaving: Vec<(String, Arc<Connection>)> = server.inner.leaving.lock().drain().collect();
        for (user, connection) in leaving {
            let _ = connection.push(ServerMessage::Left(&user).to_frame());
        }
        // Unlinks first (a connection may have moved from one user to another), then leaves, links and joins.
        let mut relink = Vec::new();
        for (name, link) in &current {
            let keep = wanted.get(name.as_str());
            let still = match (link, keep) {
                (None, Some(None)) => true,
                (Some(Link::Local(connection)), Some(Some(addr))) => {
                    sequencer.owns(addr) && addr.connection == connection.id.0
                }
                (Some(Link::Remote(had)), Some(Some(addr))) => had == *addr,
                _ => false,
            };
            if still {
                continue;
            }
            if let Some(Link::Local(connection)) = link {
                tracing::info!(connection = %connection.id, user = name, "its link is gone from the cluster: closing");
                connection.close(CloseReason::Restart);
            }
            if link.is_some() && server.apply_unlink(name).is_some() {
                server.emit_applied(Membership::Unlink, name, seq);
            }
            match keep {
                None => {
                    if server.apply_leave(name) {
                        server.emit_applied(Membership::Leave, name, seq);
                    }
                }
                Some(Some(addr)) => relink.push((name.clone(), (*addr).clone())),
                Some(None) => {}
            }
        }
        for (name, addr) in relink {
            self.link_from_snapshot(&sequencer, &name, &addr, seq);
        }
        for (name, link) in &users[kept..] {
            server.apply_join(name);
            server.emit_applied(Membership::Join, name, seq);
            if let Some(addr) = link {
                self.link_from_snapshot(&sequencer, name, addr, seq);
            }
        }
        {
            // The generations the snapshot's links speak for are current (see `ClusterHost::admits`).
            let mut origins = server.inner.origins.lock();
            for addr in users.iter().filter_map(|(_, link)| link.as_ref()) {
                origins.seen(&addr.node, addr.generation);
            }
        }
        // The replica is whole again: a resync asked for by a gap it could not fill is met by this rebuild.
        server.inner.resync_needed.store(false, Ordering::SeqCst);
        server.inner.applied.store(seq, Ordering::SeqCst);
        server.inner.applied_moved.notify_waiters();
        server.inner.metrics.rebuilt();
    }

    /// Links `user` as the snapshot says, in a [`rebuild`](ClusterHost::rebuild) from the snapshot at `seq`.
    fn link_from_snapshot(&self, sequencer: &Arc<dyn Sequencer>, user: &str, addr: &LinkAddr, seq: u64) {
        let server = &self.server;
        let here = sequencer
            .owns(addr)
            .then(|| server.inner.connections.get(ConnectionId(addr.connection)))
            .flatten();
        if let Some(connection) = here {
            // This node's connection, waiting for this user's link (see `apply_linked`): the link was made while the
            // node fell behind.
            let waited = {
                let mut state = connection.state.lock();
                let waited =
                    matches!(&state.role, Role::Linking { deciding: Some(name), .. } if name == user) && !state.closing;
                if waited {
                    state.role = Role::Unlinked;
                }
                waited
            };
            if waited {
                let _ = connection.push(ServerMessage::Accepted.to_frame());
                if server.apply_link(&connection, user) {
                    server.emit_applied(Membership::Link, user, seq);
                    server.emit_membership(Membership::Link, user);
                }
                return;
            }
        }
        if server.apply_link_remote(user, addr.clone()) {
            server.emit_applied(Membership::Link, user, seq);
        }
        if sequencer.owns(addr) {
            // This node made the link (its entry's listeners are this node's), for a connection that is gone, was
            // told it was rejected, or moved on: its listeners run as for any link entry of ours, and it is undone,
            // as `apply_entry` does.
            server.emit_membership(Membership::Link, user);
            server.submit_later(sequencer, vec![Change::unlink_connection(user, addr.connection)], || {});
        }
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
