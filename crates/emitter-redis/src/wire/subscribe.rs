//! A node's subscription: the seq notifications, the broadcast channel and its own channel, on one pub/sub connection
//! that comes back by itself.
//!
//! Why a loop of our own around `aio::PubSub` instead of the `redis` crate's RESP3 push messages with automatic
//! resubscription (`ConnectionManagerConfig::set_automatic_resubscription`): with the latter the caller learns that
//! the connection dropped, but not *when the new subscription is in place*, and a failed resubscription is ignored
//! (its pipeline's result is discarded). Filling the gap needs exactly that moment: subscribe first, *then* read the
//! log, and nothing published in between can be missed. Here the subscription is confirmed by Redis before
//! [`Notification::Subscribed`] goes out, so reading the log on it closes every gap.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use redis::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout, MissedTickBehavior};

use crate::sentinel::Conn;
use crate::shared::{Counters, Shared};
use crate::types::Epoch;
use crate::wire::messages::NodeMessage;
use crate::wire::recovery::{Check, Inbox, Origin};

/// What a [`Notifications`] stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// The subscription is in place: first after [`Cluster::subscribe`](crate::Cluster::subscribe), and again after
    /// every reconnection (`resubscribed: true`). Read the log now: notifications published while it was away are
    /// lost, their entries are not. The other nodes' messages published meanwhile follow it, fetched from their
    /// windows.
    Subscribed {
        /// Whether this is a reconnection.
        resubscribed: bool,
    },
    /// The log has reached at least this seq (a script's notification, or the periodic poll). Read up to it.
    Seq(u64),
    /// Redis's epoch is not this handle's: the cluster state was lost (`current: None`) or recreated.
    EpochChanged {
        /// The epoch Redis has now, if any.
        current: Option<Epoch>,
    },
    /// A broadcast from another node; `user` is the one to skip.
    Broadcast(NodeMessage),
    /// A message for `user`, linked on this node.
    Send(NodeMessage),
}

/// The notifications of one node: a [`Stream`] of [`Notification`]s that survives dropped connections. After a
/// reconnection it yields [`Notification::Subscribed`] again (the drop is logged and counted in
/// [`ClusterStats`](crate::ClusterStats)); every [`Options::poll_interval`](crate::Options::poll_interval) it also polls the
/// newest seq, so that a notification lost for any reason only delays. Broadcasts this node published itself are not
/// yielded (it delivered them locally). Dropping it ends the subscription.
///
/// Cross-node messages come once each, in each origin's order, even across a dropped subscription: what was published
/// while it was away is fetched from the origins' windows when it is back (or when a message's number shows a gap),
/// and yielded before anything later from the same origin. What the windows no longer hold is lost, counted in
/// [`ClusterStats::messages_lost`](crate::ClusterStats::messages_lost) and logged (see
/// [`Options::message_window`](crate::Options::message_window)).
#[derive(Debug)]
pub struct Notifications {
    notifications: mpsc::Receiver<Notification>,
    task: JoinHandle<()>,
}

impl Drop for Notifications {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Notifications {
    pub(crate) fn start(shared: Arc<Shared>, conn: Conn, node: &str) -> Notifications {
        let (sender, notifications) = mpsc::channel(shared.options.notification_queue.max(1));
        let channels = vec![
            shared.keys.seq_channel.clone(),
            shared.keys.broadcast_channel.clone(),
            shared.keys.node_channel(node),
        ];
        let task = tokio::spawn(
            Subscriber {
                shared,
                conn,
                node: node.to_owned(),
                channels,
                sender,
                seen: (Epoch(String::new()), 0),
                inbox: Inbox::new(node),
            }
            .run(),
        );
        Notifications { notifications, task }
    }

    /// The next notification; `None` only if the subscription's task is gone (its runtime shut down).
    pub async fn next(&mut self) -> Option<Notification> {
        self.notifications.recv().await
    }
}

impl Stream for Notifications {
    type Item = Notification;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Notification>> {
        self.notifications.poll_recv(cx)
    }
}

struct Subscriber {
    shared: Arc<Shared>,
    conn: Conn,
    node: String,
    channels: Vec<String>,
    sender: mpsc::Sender<Notification>,
    /// The newest seq announced, and in which epoch (seqs start again in a new one), so that the poll only speaks
    /// when it learned something.
    seen: (Epoch, u64),
    /// The last message number delivered per origin, generation and channel (broadcast or this node's), to tell gaps
    /// (fetched from the origin's window) and repeats (dropped).
    inbox: Inbox,
}

/// The subscriber is gone: stop.
struct Gone;

impl Subscriber {
    async fn run(mut self) {
        let mut resubscribed = false;
        let mut backoff = Duration::from_millis(20);
        loop {
            let primary = self.shared.endpoint.version();
            match self.subscribe().await {
                Ok((sink, stream)) => {
                    backoff = Duration::from_millis(20);
                    if resubscribed {
                        Counters::add(&self.shared.counters.resubscriptions, 1);
                        tracing::info!(cluster = self.shared.name, node = self.node, "resubscribed");
                    }
                    if self.send(Notification::Subscribed { resubscribed }).await.is_err() {
                        return;
                    }
                    if self.catch_up(resubscribed).await.is_err() {
                        return;
                    }
                    let reason = match self.listen(sink, stream, primary).await {
                        Ok(reason) => reason,
                        Err(Gone) => return,
                    };
                    Counters::add(&self.shared.counters.subscription_drops, 1);
                    tracing::warn!(
                        cluster = self.shared.name,
                        node = self.node,
                        reason,
                        "subscription dropped"
                    );
                }
                Err(error) => {
                    tracing::warn!(cluster = self.shared.name, node = self.node, %error, "subscribing failed");
                }
            }
            resubscribed = true;
            if self.sender.is_closed() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.shared.options.connect_timeout);
        }
    }

    async fn subscribe(&mut self) -> Result<(redis::aio::PubSubSink, redis::aio::PubSubStream), redis::RedisError> {
        let limit = self.shared.options.connect_timeout + self.shared.options.command_timeout;
        if !self.inbox.has_baseline() {
            // Before the subscription, so that nothing published in between is taken for a repeat.
            let mut conn = self.conn.clone();
            match timeout(limit, self.inbox.read_baseline(&self.shared, &mut conn)).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "reading the windows timed out",
                    )))
                }
            }
        }
        let attempt = async {
            let mut pubsub = self.shared.endpoint.client().get_async_pubsub().await?;
            pubsub.subscribe(&self.channels).await?;
            Ok(pubsub.split())
        };
        match timeout(limit, attempt).await {
            Ok(result) => result,
            Err(_) => Err(redis::RedisError::from((redis::ErrorKind::Io, "subscribing timed out"))),
        }
    }

    /// Forwards messages until the connection drops (returns why), the primary it was made for is replaced (a
    /// Sentinel failover: `primary` is the endpoint's version then), or the subscriber is gone.
    async fn listen(
        &mut self,
        mut sink: redis::aio::PubSubSink,
        mut stream: redis::aio::PubSubStream,
        primary: u64,
    ) -> Result<&'static str, Gone> {
        let mut poll = tokio::time::interval(self.shared.options.poll_interval);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        poll.tick().await;
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => self.forward(&message).await?,
                    None => return Ok("connection closed"),
                },
                _ = poll.tick() => {
                    if self.shared.endpoint.version() != primary {
                        return Ok("redis failed over to another primary");
                    }
                    // A PING through the pub/sub connection proves it is alive; a dead one is replaced. A late
                    // answer is Redis pausing (a slow fork, DEBUG SLEEP), not a dead connection: wait as long as a
                    // lease lasts, since replacing the connection loses what is published meanwhile.
                    let patience = self.shared.options.command_timeout.max(self.shared.options.lease);
                    let ping = timeout(patience, sink.ping::<Value>()).await;
                    if !matches!(ping, Ok(Ok(_))) {
                        return Ok("ping failed");
                    }
                    self.poll().await?;
                    self.prune_inbox().await;
                }
                _ = self.sender.closed() => return Err(Gone),
            }
        }
    }

    async fn forward(&mut self, message: &redis::Msg) -> Result<(), Gone> {
        let channel = message.get_channel_name();
        let payload = message.get_payload_bytes();
        let notification = if channel == self.shared.keys.seq_channel {
            self.seq_notification(payload)
        } else if let Some(decoded) = NodeMessage::decode(payload) {
            let broadcast = channel == self.shared.keys.broadcast_channel;
            // Its own broadcasts were delivered locally already.
            if broadcast && decoded.origin == self.node {
                None
            } else {
                match self.inbox.check(&decoded, broadcast) {
                    Check::Repeat => {
                        Counters::add(&self.shared.counters.repeats_dropped, 1);
                        None
                    }
                    Check::Next => Some(notification(broadcast, decoded)),
                    Check::Gap => {
                        let origin = (decoded.origin.clone(), decoded.generation);
                        self.recover(&origin, Some(decoded.order - 1)).await?;
                        self.inbox.close_gap(&self.shared, &decoded, broadcast);
                        Some(notification(broadcast, decoded))
                    }
                }
            }
        } else {
            Counters::add(&self.shared.counters.malformed_messages, 1);
            tracing::debug!(cluster = self.shared.name, channel, "ignored a frame that is not ours");
            None
        };
        match notification {
            Some(notification) => self.send(notification).await,
            None => Ok(()),
        }
    }

    /// After a subscription is in place: fetches from every known origin's window what was published since the
    /// last message delivered from it (while the subscription was away, or, the first time, since the baseline).
    async fn catch_up(&mut self, resubscribed: bool) -> Result<(), Gone> {
        if resubscribed {
            let mut conn = self.conn.clone();
            if let Err(error) = self.inbox.refresh(&self.shared, &mut conn).await {
                tracing::warn!(cluster = self.shared.name, node = self.node, %error, "could not read the registered nodes");
            }
        }
        for origin in self.inbox.known() {
            self.recover(&origin, None).await?;
        }
        Ok(())
    }

    /// Fetches from `origin`'s window what this node has not had from it, up to order `upto` (`None`: its newest),
    /// and yields it in the origin's order. A window that cannot be read (Redis away) is not retried here: the gap
    /// that sent the subscriber to it is then counted as lost; a resubscription's read is made again after the next
    /// resubscription.
    async fn recover(&mut self, origin: &Origin, upto: Option<u64>) -> Result<(), Gone> {
        let mut conn = self.conn.clone();
        loop {
            match self.inbox.fill(&self.shared, &mut conn, origin, upto).await {
                Ok(page) => {
                    for (broadcast, message) in page.messages {
                        self.send(notification(broadcast, message)).await?;
                    }
                    if page.done {
                        return Ok(());
                    }
                }
                Err(error) => {
                    tracing::warn!(
                        cluster = self.shared.name,
                        node = self.node,
                        origin = origin.0,
                        %error,
                        "could not read another node's message window"
                    );
                    return Ok(());
                }
            }
        }
    }

    /// `<seq> <epoch> <hash>` from a script's PUBLISH (the hash of the entry at seq: checked against the chain this
    /// handle read, see [`crate::chain`]; a fork found is reported there, for the node to rebuild), then, on a line of
    /// their own, the entries the script appended, kept for the node to apply without a read (see
    /// [`crate::notified`]).
    fn seq_notification(&mut self, payload: &[u8]) -> Option<Notification> {
        let (header, entries) = match payload.iter().position(|&byte| byte == b'\n') {
            Some(end) => (&payload[..end], Some(&payload[end + 1..])),
            None => (payload, None),
        };
        let text = std::str::from_utf8(header).ok();
        let Some((seq, rest)) = text.and_then(|text| text.split_once(' ')) else {
            Counters::add(&self.shared.counters.malformed_messages, 1);
            return None;
        };
        let Ok(seq) = seq.parse::<u64>() else {
            Counters::add(&self.shared.counters.malformed_messages, 1);
            return None;
        };
        let (epoch, hash) = match rest.split_once(' ') {
            Some((epoch, hash)) => (epoch, crate::chain::parse_hash(hash)),
            None => (rest, None),
        };
        self.inbox.observe_epoch(&self.shared, Some(epoch));
        if epoch != self.shared.epoch().as_str() {
            return Some(Notification::EpochChanged {
                current: Some(Epoch(epoch.to_owned())),
            });
        }
        if let Some(hash) = hash {
            let _ = self.shared.chain.check_head(epoch, seq, hash);
        }
        // Kept before the notice goes out: the node's catch-up on it finds them.
        if let Some(entries) = entries.and_then(|entries| std::str::from_utf8(entries).ok()) {
            self.shared.take_notified(epoch, entries);
        }
        self.announce(seq);
        Some(Notification::Seq(seq))
    }

    /// Reads the epoch and newest seq: announces a seq it had not announced, or a changed epoch.
    /// Drops the inbox's records of origin generations that are over (see [`Inbox::prune`]).
    async fn prune_inbox(&mut self) {
        let mut conn = self.conn.clone();
        if let Err(error) = self.inbox.prune_gone(&self.shared, &mut conn).await {
            tracing::debug!(cluster = self.shared.name, %error, "reading the leases failed");
        }
    }

    async fn poll(&mut self) -> Result<(), Gone> {
        let mut conn = self.conn.clone();
        let value = match self.shared.head_cmd().query_async::<Value>(&mut conn).await {
            Ok(value) => value,
            Err(error) => {
                tracing::debug!(cluster = self.shared.name, %error, "polling the head failed");
                return Ok(());
            }
        };
        let hash = Shared::head_hash(&value);
        let Ok((epoch, seq)) = Shared::head_result(value) else {
            return Ok(());
        };
        self.inbox
            .observe_epoch(&self.shared, epoch.as_ref().map(Epoch::as_str));
        if epoch.as_ref() != Some(&self.shared.epoch()) {
            return self.send(Notification::EpochChanged { current: epoch }).await;
        }
        if let (Some(epoch), Some(hash)) = (&epoch, hash) {
            let _ = self.shared.chain.check_head(epoch.as_str(), seq, hash);
        }
        if self.announce(seq) {
            return self.send(Notification::Seq(seq)).await;
        }
        Ok(())
    }

    /// Records `seq` as announced in the handle's current epoch; whether it is newer than any announced before.
    fn announce(&mut self, seq: u64) -> bool {
        let epoch = self.shared.epoch();
        if self.seen.0 != epoch {
            self.seen = (epoch, 0);
        }
        let newer = seq > self.seen.1;
        self.seen.1 = self.seen.1.max(seq);
        newer
    }

    async fn send(&self, notification: Notification) -> Result<(), Gone> {
        self.sender.send(notification).await.map_err(|_| Gone)
    }
}

/// A message from another node as the subscriber yields it.
fn notification(broadcast: bool, message: NodeMessage) -> Notification {
    if broadcast {
        Notification::Broadcast(message)
    } else {
        Notification::Send(message)
    }
}
