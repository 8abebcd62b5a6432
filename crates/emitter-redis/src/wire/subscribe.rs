//! A node's subscription: the seq notifications, the broadcast channel and its own channel, on one pub/sub connection
//! that comes back by itself.
//!
//! Why a loop of our own around `aio::PubSub` instead of the `redis` crate's RESP3 push messages with automatic
//! resubscription (`ConnectionManagerConfig::set_automatic_resubscription`): with the latter the caller learns that
//! the connection dropped, but not *when the new subscription is in place*, and a failed resubscription is ignored
//! (its pipeline's result is discarded). Filling the gap needs exactly that moment: subscribe first, *then* read the
//! log, and nothing published in between can be missed. Here the subscription is confirmed by Redis before
//! [`Notification::Subscribed`] goes out, so reading the log on it closes every gap.

use std::collections::HashMap;
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

/// What a [`Notifications`] stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// The subscription is in place: first after [`Cluster::subscribe`](crate::Cluster::subscribe), and again after
    /// every reconnection (`resubscribed: true`). Read the log now: notifications published while it was away are
    /// lost, their entries are not.
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
/// Cross-node messages are at most once: those published while the subscription is away are lost (unlike log
/// entries, which the log keeps).
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
                numbers: Numbers::default(),
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
    /// The last message number seen per origin, generation and channel (broadcast or this node's), to tell gaps and
    /// repeats.
    numbers: Numbers,
}

/// The last message number per origin, generation and channel (`true`: broadcast). Bounded: an origin's older
/// generations are dropped when a newer one speaks, and [`Numbers::retain_leased`] drops the origins whose lease is
/// gone, so neither restarts nor new node ids (pods) make it grow without end.
#[derive(Debug, Default)]
pub(crate) struct Numbers(HashMap<(String, u64, bool), u64>);

/// What a message's number says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Order {
    /// The next one, or the first from its origin's generation.
    Next,
    /// Seen already (or older): drop it.
    Repeat,
    /// After a gap of this many lost messages.
    After(u64),
}

impl Numbers {
    pub(crate) fn check(&mut self, origin: &str, generation: u64, broadcast: bool, number: u64) -> Order {
        let key = (origin.to_owned(), generation, broadcast);
        match self.0.get(&key).copied() {
            Some(last) if number <= last => return Order::Repeat,
            Some(_) => {}
            // A generation not seen before: the origin registered again, and its older generations say no more.
            None => self
                .0
                .retain(|(other, older, _), _| other != origin || *older >= generation),
        }
        let last = self.0.insert(key, number);
        match last {
            Some(last) if number > last + 1 => Order::After(number - last - 1),
            _ => Order::Next,
        }
    }

    /// Keeps only the origins holding a lease, of the generation they hold it in (`leases`: node id → generation).
    pub(crate) fn retain_leased(&mut self, leases: &HashMap<String, u64>) {
        self.0
            .retain(|(origin, generation, _), _| leases.get(origin) == Some(generation));
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
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

    async fn subscribe(&self) -> Result<(redis::aio::PubSubSink, redis::aio::PubSubStream), redis::RedisError> {
        let limit = self.shared.options.connect_timeout + self.shared.options.command_timeout;
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
                    self.prune_numbers().await;
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
            // Its own broadcasts were delivered locally already; repeats are dropped.
            let skip = (broadcast && decoded.origin == self.node) || !self.in_sequence(&decoded, broadcast);
            if skip {
                None
            } else if broadcast {
                Some(Notification::Broadcast(decoded))
            } else {
                Some(Notification::Send(decoded))
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

    /// Checks a message's number against the last one from its origin on its channel: a repeat (a publish sent again
    /// after its connection dropped) is dropped; a gap (messages published while this subscription was away, or lost
    /// on the way) is counted and logged, since the messages themselves are gone.
    fn in_sequence(&mut self, message: &NodeMessage, broadcast: bool) -> bool {
        match self
            .numbers
            .check(&message.origin, message.generation, broadcast, message.number)
        {
            Order::Repeat => {
                Counters::add(&self.shared.counters.repeats_dropped, 1);
                false
            }
            Order::After(lost) => {
                Counters::add(&self.shared.counters.messages_lost, lost);
                tracing::warn!(
                    cluster = self.shared.name,
                    node = self.node,
                    origin = message.origin,
                    lost,
                    "messages from another node were lost on the way (published while this node's subscription was away)"
                );
                true
            }
            Order::Next => true,
        }
    }

    /// Drops the message numbers of origins whose lease is gone (or was taken by a newer generation). Best effort:
    /// a failed read leaves them for the next poll.
    async fn prune_numbers(&mut self) {
        if self.numbers.len() == 0 {
            return;
        }
        let mut conn = self.conn.clone();
        let leases: HashMap<String, String> = match redis::cmd("HGETALL")
            .arg(self.shared.keys.nodes())
            .query_async(&mut conn)
            .await
        {
            Ok(leases) => leases,
            Err(error) => {
                tracing::debug!(cluster = self.shared.name, %error, "reading the leases failed");
                return;
            }
        };
        // `<generation> <deadline> <instance>`: the generation is the first word.
        let leases = leases
            .into_iter()
            .filter_map(|(node, lease)| Some((node, lease.split(' ').next()?.parse().ok()?)))
            .collect();
        self.numbers.retain_leased(&leases);
    }

    /// `<seq> <epoch> <hash>` from a script's PUBLISH (the hash of the entry at seq: checked against the chain this
    /// handle read, see [`crate::chain`]; a fork found is reported there, for the node to rebuild).
    fn seq_notification(&mut self, payload: &[u8]) -> Option<Notification> {
        let text = std::str::from_utf8(payload).ok();
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
        if epoch != self.shared.epoch().as_str() {
            return Some(Notification::EpochChanged {
                current: Some(Epoch(epoch.to_owned())),
            });
        }
        if let Some(hash) = hash {
            let _ = self.shared.chain.check_head(epoch, seq, hash);
        }
        self.announce(seq);
        Some(Notification::Seq(seq))
    }

    /// Reads the epoch and newest seq: announces a seq it had not announced, or a changed epoch.
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::{Numbers, Order};

    #[test]
    fn numbers_tell_repeats_and_gaps() {
        let mut numbers = Numbers::default();
        assert_eq!(numbers.check("a", 1, true, 1), Order::Next);
        assert_eq!(numbers.check("a", 1, true, 2), Order::Next);
        assert_eq!(numbers.check("a", 1, true, 2), Order::Repeat);
        assert_eq!(numbers.check("a", 1, true, 5), Order::After(2));
        assert_eq!(
            numbers.check("a", 1, false, 1),
            Order::Next,
            "each channel counts on its own"
        );
    }

    #[test]
    fn numbers_of_older_generations_and_gone_leases_are_dropped() {
        let mut numbers = Numbers::default();
        // Every restart of an origin is a new generation; only the newest is kept, whatever the number of restarts.
        for generation in 1..=100 {
            numbers.check("a", generation, true, 1);
            numbers.check("a", generation, false, 1);
        }
        assert_eq!(numbers.len(), 2);
        // A new node id for every pod: bounded by the leases held.
        for pod in 0..100 {
            numbers.check(&format!("pod-{pod}"), 1, true, 1);
        }
        assert_eq!(numbers.len(), 102);
        let leases = HashMap::from([("a".to_owned(), 100), ("pod-7".to_owned(), 1), ("pod-8".to_owned(), 2)]);
        numbers.retain_leased(&leases);
        assert_eq!(
            numbers.len(),
            3,
            "a's two channels and pod-7; pod-8 holds a newer generation's lease"
        );
        // A dropped origin speaking again starts afresh, not as a gap.
        assert_eq!(numbers.check("pod-9", 1, true, 4), Order::Next);
    }
}
