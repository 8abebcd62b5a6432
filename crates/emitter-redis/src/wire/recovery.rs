//! Getting back the cross-node messages a subscription missed.
//!
//! Every node keeps its newest messages in Redis, in one capped stream per generation (its *window*, see
//! [`Options::message_window`]), each under its [`order`](NodeMessage::order): its place among everything that
//! generation published, broadcasts and sends to any node alike, with the node a send is for. A receiver keeps, per
//! origin generation, how far into that order it has heard, and the last [`number`](NodeMessage::number) on each of
//! the two channels that reach it (the broadcasts, and its own channel): an [`Inbox`].
//!
//! The subscription receives one origin's messages on both channels in the origin's order (one publishing
//! connection, one subscribing connection), so when it drops, what it missed is exactly what follows, in the order,
//! the last message it heard. After a resubscription the receiver reads each known origin's window from there on:
//! the messages for it (broadcasts, and sends to it), in the origin's order, are delivered before anything later from
//! that origin; those it had already (the order says) are dropped. A message whose channel number leaves a gap outside
//! a resubscription (a publish Redis did not relay, one the window missed) makes it read the window up to that
//! message first. A number missing from a channel once the window has been read (trimmed, never kept) is counted as
//! lost and logged.
//!
//! Which origins does a receiver know? Those it has heard from, and those whose windows it read when it first
//! subscribed (the *baseline*: every registered node's newest order, read *before* subscribing, so that whatever is
//! published between the read and the subscription is fetched right after it). An origin generation it never heard
//! of is one of two kinds: registered after the baseline (the generation counter says so): everything it published is
//! for this receiver (after a resubscription the receiver reads the registered nodes again, so as to fetch those whose
//! every message came while it was away); or older (a node that was not registered then): its first message starts
//! the count.
//!
//! [`Options::message_window`]: crate::Options::message_window

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::Value;

use crate::sentinel::Conn;
use crate::shared::{Counters, Shared};
use crate::wire::messages::NodeMessage;

/// How many messages one window read takes at most; a longer gap takes several.
const PAGE: usize = 500;

/// One origin generation: its node and generation.
pub(crate) type Origin = (String, u64);

/// What to do with a message that came through the subscription.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// Had it already (a publish sent twice, or fetched from the window): drop it.
    Repeat,
    /// The next one: deliver it.
    Next,
    /// Its channel's number leaves a gap: read the window up to it ([`Inbox::fill`] with `upto`: its order − 1),
    /// then [`Inbox::close_gap`], then deliver it.
    Gap,
}

/// How far a receiver has heard from one origin generation.
#[derive(Debug, Clone, Copy)]
struct Heard {
    /// Everything up to this order has been delivered, dropped as not for this receiver, or counted lost.
    order: u64,
    /// The last number delivered on the broadcast channel; `None` until one came (known from the baseline only).
    broadcast: Option<u64>,
    /// The same on this receiver's own channel.
    send: Option<u64>,
}

impl Heard {
    /// An origin generation registered after the baseline: nothing heard of it yet, all of it for this receiver.
    const NEW: Heard = Heard {
        order: 0,
        broadcast: Some(0),
        send: Some(0),
    };

    fn channel(&mut self, broadcast: bool) -> &mut Option<u64> {
        if broadcast {
            &mut self.broadcast
        } else {
            &mut self.send
        }
    }
}

/// What one window read returned.
pub(crate) struct Page {
    /// The messages to deliver, in the origin's order, each with its channel (`true`: broadcast).
    pub(crate) messages: Vec<(bool, NodeMessage)>,
    /// Whether the read reached the end of what was asked for (else read again).
    pub(crate) done: bool,
}

/// How far a receiver has heard from each origin generation (see the module docs).
pub(crate) struct Inbox {
    /// The receiving node.
    node: String,
    heard: HashMap<Origin, Heard>,
    /// The generation counter at the baseline: a higher generation registered after it. `None` before the baseline.
    baseline: Option<u64>,
    /// Redis's epoch (its cluster state's identity) that all of the above belongs to: see [`Inbox::observe_epoch`].
    epoch: Option<String>,
    /// When each origin generation last sent a message through the subscription (or, for one that has not, when
    /// [`Inbox::prune`] first saw it), so that a record is dropped only after it has been quiet a while.
    spoken: HashMap<Origin, Instant>,
}

impl Inbox {
    pub(crate) fn new(node: &str) -> Inbox {
        Inbox {
            node: node.to_owned(),
            heard: HashMap::new(),
            baseline: None,
            epoch: None,
            spoken: HashMap::new(),
        }
    }

    /// Whether the baseline has been read (else read it before subscribing).
    pub(crate) fn has_baseline(&self) -> bool {
        self.baseline.is_some()
    }

    /// Reads the baseline: the generation counter, and the newest order in each other registered node's window.
    /// Call it before the first subscription.
    pub(crate) async fn read_baseline(&mut self, shared: &Shared, conn: &mut Conn) -> redis::RedisResult<()> {
        let (epoch, generation, nodes) = registered(shared, conn).await?;
        self.epoch = epoch;
        let origins: Vec<Origin> = nodes.into_iter().filter(|(node, _)| *node != self.node).collect();
        let mut pipe = redis::pipe();
        for (node, generation) in &origins {
            pipe.cmd("XREVRANGE")
                .arg(shared.keys.window(node, *generation))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
        }
        let tails: Vec<Value> = if origins.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(conn).await?
        };
        for (origin, tail) in origins.into_iter().zip(tails) {
            let order = entries(tail).first().map_or(0, |entry| entry.order);
            let heard = Heard {
                order,
                broadcast: None,
                send: None,
            };
            self.heard.insert(origin, heard);
        }
        self.baseline = Some(generation);
        Ok(())
    }

    /// After a resubscription, before [`Inbox::known`]: checks Redis's epoch ([`Inbox::observe_epoch`]), and learns
    /// the node generations registered since the baseline that it has not heard from (all they sent is for this
    /// receiver, and may all have been sent while it was away).
    pub(crate) async fn refresh(&mut self, shared: &Shared, conn: &mut Conn) -> redis::RedisResult<()> {
        let (epoch, _, nodes) = registered(shared, conn).await?;
        self.observe_epoch(shared, epoch.as_deref());
        let baseline = self.baseline.unwrap_or(0);
        for origin in nodes {
            if origin.1 > baseline && origin.0 != self.node {
                self.heard.entry(origin).or_insert(Heard::NEW);
            }
        }
        Ok(())
    }

    /// Redis's epoch as seen now (a seq notification, a poll, a resubscription). Another epoch than the one the
    /// inbox's numbers belong to means Redis lost its state (restarted without persistence, flushed), and with it
    /// every window; generations start again from 1 there, so the same node and generation may come back meaning
    /// another process. Everything heard is forgotten, and every generation from now on is new (read from its first
    /// message): what was sent before is lost, uncounted.
    pub(crate) fn observe_epoch(&mut self, shared: &Shared, epoch: Option<&str>) {
        if self.baseline.is_none() || self.epoch.as_deref() == epoch {
            return;
        }
        tracing::warn!(
            cluster = shared.name,
            node = self.node,
            "redis lost the cluster's state, and with it the messages other nodes kept: what this node had not \
             received from them before is lost, uncounted"
        );
        self.heard.clear();
        self.baseline = Some(0);
        self.epoch = epoch.map(str::to_owned);
    }

    /// The origin generations it knows: after a resubscription, read each one's window on from where it is.
    pub(crate) fn known(&self) -> Vec<Origin> {
        self.heard.keys().cloned().collect()
    }

    /// Checks a message that came through the subscription against what was heard from its origin. Records it as
    /// delivered when it is [`Check::Next`].
    pub(crate) fn check(&mut self, message: &NodeMessage, broadcast: bool) -> Check {
        self.spoken
            .insert((message.origin.clone(), message.generation), Instant::now());
        let baseline = self.baseline;
        let heard = self
            .heard
            .entry((message.origin.clone(), message.generation))
            .or_insert_with(|| {
                if baseline.is_some_and(|baseline| message.generation > baseline) {
                    Heard::NEW
                } else {
                    // An origin this receiver knows nothing of: this message starts the count.
                    Heard {
                        order: message.order.saturating_sub(1),
                        broadcast: None,
                        send: None,
                    }
                }
            });
        if message.order <= heard.order {
            return Check::Repeat;
        }
        let last = heard.channel(broadcast);
        match *last {
            Some(last) if message.number <= last => Check::Repeat,
            Some(last) if message.number > last + 1 => Check::Gap,
            _ => {
                *last = Some(message.number);
                heard.order = message.order;
                Check::Next
            }
        }
    }

    /// After [`Inbox::fill`] up to the message that showed a gap: counts what its channel is still missing as lost,
    /// and records the message as delivered.
    pub(crate) fn close_gap(&mut self, shared: &Shared, message: &NodeMessage, broadcast: bool) {
        let origin = (message.origin.clone(), message.generation);
        let heard = self.heard.entry(origin.clone()).or_insert(Heard::NEW);
        let last = heard.channel(broadcast);
        let missing = last.map_or(0, |last| message.number.saturating_sub(last + 1));
        *last = Some(message.number);
        heard.order = heard.order.max(message.order);
        self.lost(shared, &origin, missing);
    }

    /// Reads the next page of `origin`'s window after what was heard, up to order `upto` (inclusive; `None`: its
    /// newest): the messages for this receiver it has not had, in order. Numbers a channel skips are counted as lost
    /// and logged (trimmed from the window, or never kept).
    pub(crate) async fn fill(
        &mut self,
        shared: &Shared,
        conn: &mut Conn,
        origin: &Origin,
        upto: Option<u64>,
    ) -> redis::RedisResult<Page> {
        let Some(&heard) = self.heard.get(origin) else {
            return Ok(Page {
                messages: Vec::new(),
                done: true,
            });
        };
        if upto.is_some_and(|upto| upto <= heard.order) {
            return Ok(Page {
                messages: Vec::new(),
                done: true,
            });
        }
        let end = upto.map_or("+".to_owned(), |upto| format!("{upto}-0"));
        let reply: Value = redis::cmd("XRANGE")
            .arg(shared.keys.window(&origin.0, origin.1))
            .arg(format!("{}-0", heard.order + 1))
            .arg(end)
            .arg("COUNT")
            .arg(PAGE)
            .query_async(conn)
            .await?;
        let read = entries(reply);
        let mut done = read.len() < PAGE;
        let mut heard = heard;
        let mut lost = 0;
        let mut messages = Vec::with_capacity(read.len());
        for entry in read {
            if entry.order <= heard.order {
                continue;
            }
            heard.order = entry.order;
            // Another node's send.
            if entry.to.as_ref().is_some_and(|to| *to != self.node) {
                continue;
            }
            let broadcast = entry.to.is_none();
            let Some(message) = NodeMessage::decode(&entry.frame) else {
                Counters::add(&shared.counters.malformed_messages, 1);
                continue;
            };
            if message.order != entry.order || (&message.origin, message.generation) != (&origin.0, origin.1) {
                Counters::add(&shared.counters.malformed_messages, 1);
                continue;
            }
            let last = heard.channel(broadcast);
            match *last {
                Some(last) if message.number <= last => continue,
                Some(last) => lost += message.number - last - 1,
                None => {}
            }
            *last = Some(message.number);
            messages.push((broadcast, message));
        }
        if upto.is_some_and(|upto| heard.order >= upto) {
            done = true;
        }
        if done {
            // Nothing more is in the window up to `upto`: the rest of the way is heard.
            if let Some(upto) = upto {
                heard.order = heard.order.max(upto);
            }
        }
        self.heard.insert(origin.clone(), heard);
        self.lost(shared, origin, lost);
        Counters::add(&shared.counters.messages_recovered, messages.len() as u64);
        Ok(Page { messages, done })
    }

    /// Drops the records of origin generations that are over and have been quiet for `quiet`: one whose node holds
    /// no lease in that generation any more (`leases`: node id to the generation of its live lease; generations only
    /// grow, so it never comes back), or one a newer generation of its node has followed. Without this the records
    /// would grow with every restart of a node and every new node id (a pod name). The quiet time keeps a record
    /// while that generation's last messages may still be on their way: dropped too soon, a late one would look like
    /// a new origin's and be fetched again from its window.
    pub(crate) fn prune(&mut self, leases: &HashMap<String, u64>, quiet: Duration) {
        let now = Instant::now();
        let mut newest: HashMap<String, u64> = HashMap::new();
        for (node, generation) in self.heard.keys() {
            let top = newest.entry(node.clone()).or_insert(*generation);
            *top = (*top).max(*generation);
        }
        for origin in self.heard.keys() {
            self.spoken.entry(origin.clone()).or_insert(now);
        }
        let spoken = &self.spoken;
        self.heard.retain(|origin, _| {
            let current = leases.get(&origin.0) == Some(&origin.1) && newest.get(&origin.0) == Some(&origin.1);
            current || spoken.get(origin).is_some_and(|at| now.duration_since(*at) < quiet)
        });
        let heard = &self.heard;
        self.spoken.retain(|origin, _| heard.contains_key(origin));
    }

    /// [`Inbox::prune`] against the leases registered in Redis now, with a quiet time of two leases. Best effort: a
    /// failed read leaves the records for the next call.
    pub(crate) async fn prune_gone(&mut self, shared: &Shared, conn: &mut Conn) -> redis::RedisResult<()> {
        if self.heard.is_empty() {
            return Ok(());
        }
        let (_, _, nodes) = registered(shared, conn).await?;
        self.prune(&nodes.into_iter().collect(), shared.options.lease * 2);
        Ok(())
    }

    /// Counts `count` messages of `origin` as lost (when there are any) and says so.
    pub(crate) fn lost(&self, shared: &Shared, origin: &Origin, count: u64) {
        if count == 0 {
            return;
        }
        Counters::add(&shared.counters.messages_lost, count);
        tracing::warn!(
            cluster = shared.name,
            node = self.node,
            origin = origin.0,
            generation = origin.1,
            lost = count,
            "messages from another node were lost: published while this node's subscription was away, and no longer \
             in their origin's window"
        );
    }
}

/// Redis's epoch, the generation counter, and each registered node with its lease's generation.
async fn registered(shared: &Shared, conn: &mut Conn) -> redis::RedisResult<(Option<String>, u64, Vec<Origin>)> {
    let (epoch, generation, nodes): (Option<String>, Option<u64>, HashMap<String, String>) = redis::pipe()
        .get(shared.keys.epoch())
        .get(shared.keys.generation())
        .hgetall(shared.keys.nodes())
        .query_async(conn)
        .await?;
    let nodes = nodes
        .into_iter()
        .filter_map(|(node, lease)| Some((node, lease.split(' ').next()?.parse().ok()?)))
        .collect();
    Ok((epoch, generation.unwrap_or(0), nodes))
}

/// One entry of a window.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    /// Its ID is `<order>-0`.
    order: u64,
    /// Field `m`: the frame as published.
    frame: Vec<u8>,
    /// Field `t`, for a send: the node it is for.
    to: Option<String>,
}

/// The entries of an `XRANGE`/`XREVRANGE` reply. Anything else is skipped.
fn entries(reply: Value) -> Vec<Entry> {
    let Value::Array(items) = reply else {
        return Vec::new();
    };
    items.into_iter().filter_map(entry).collect()
}

fn entry(item: Value) -> Option<Entry> {
    let Value::Array(mut parts) = item else {
        return None;
    };
    if parts.len() != 2 {
        return None;
    }
    let fields = parts.pop()?;
    let id = parts.pop()?;
    let order = match id {
        Value::BulkString(id) => std::str::from_utf8(&id).ok()?.strip_suffix("-0")?.parse().ok()?,
        Value::SimpleString(id) => id.strip_suffix("-0")?.parse().ok()?,
        _ => return None,
    };
    let Value::Array(fields) = fields else {
        return None;
    };
    let mut fields = fields.into_iter();
    let (mut frame, mut to) = (None, None);
    while let (Some(Value::BulkString(name)), Some(Value::BulkString(value))) = (fields.next(), fields.next()) {
        match name.as_slice() {
            b"m" => frame = Some(value),
            b"t" => to = Some(String::from_utf8(value).ok()?),
            _ => {}
        }
    }
    Some(Entry {
        order,
        frame: frame?,
        to,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(origin: &str, generation: u64, number: u64, order: u64) -> NodeMessage {
        NodeMessage {
            origin: origin.into(),
            generation,
            number,
            order,
            after: 0,
            user: None,
            keep: false,
            body: "{}".into(),
        }
    }

    #[test]
    fn records_of_generations_that_are_over_are_dropped_once_quiet() {
        let mut inbox = Inbox::new("me");
        inbox.baseline = Some(0);
        // Every restart of a node is a new generation; a new node id for every pod.
        for generation in 1..=50 {
            inbox.check(&message("a", generation, 1, 1), true);
        }
        for pod in 0..50 {
            inbox.check(&message(&format!("pod-{pod}"), 1, 1, 1), true);
        }
        assert_eq!(inbox.known().len(), 100);
        let leases = HashMap::from([("a".to_owned(), 50), ("pod-7".to_owned(), 1), ("pod-8".to_owned(), 2)]);
        // Just heard from: kept, whatever the leases say (their last messages may still be on the way).
        inbox.prune(&leases, Duration::from_secs(60));
        assert_eq!(inbox.known().len(), 100);
        // Quiet long enough: only the generations that hold a lease, and are their node's newest, stay.
        inbox.prune(&leases, Duration::ZERO);
        let mut kept = inbox.known();
        kept.sort();
        assert_eq!(kept, vec![("a".to_owned(), 50), ("pod-7".to_owned(), 1)]);
        assert_eq!(inbox.spoken.len(), 2, "the times go with the records");
    }

    #[test]
    fn numbers_tell_next_repeat_and_gap() {
        let mut inbox = Inbox::new("me");
        inbox.baseline = Some(5);
        // An origin older than the baseline, never heard of: its first message starts the count.
        assert_eq!(inbox.check(&message("a", 3, 40, 90), true), Check::Next);
        assert_eq!(inbox.check(&message("a", 3, 41, 95), true), Check::Next);
        assert_eq!(inbox.check(&message("a", 3, 41, 95), true), Check::Repeat);
        // Its other channel: the first message starts that channel's count; the order goes on.
        assert_eq!(inbox.check(&message("a", 3, 7, 96), false), Check::Next);
        assert_eq!(inbox.check(&message("a", 3, 44, 99), true), Check::Gap);
        // Registered after the baseline: from number 1 on each channel.
        assert_eq!(inbox.check(&message("b", 6, 1, 1), true), Check::Next);
        assert_eq!(inbox.check(&message("b", 6, 1, 3), false), Check::Next);
        assert_eq!(inbox.check(&message("c", 7, 3, 3), true), Check::Gap);
    }

    #[test]
    fn window_entries_are_read_by_order() {
        let entry = |id: &str, fields: &[(&[u8], &[u8])]| {
            let fields = fields
                .iter()
                .flat_map(|(name, value)| [Value::BulkString(name.to_vec()), Value::BulkString(value.to_vec())])
                .collect();
            Value::Array(vec![Value::BulkString(id.as_bytes().to_vec()), Value::Array(fields)])
        };
        let reply = Value::Array(vec![
            entry("7-0", &[(b"m", b"seven")]),
            entry("8-1", &[(b"m", b"not ours")]),
            entry("9-0", &[(b"x", b"no frame")]),
            Value::Nil,
            entry("10-0", &[(b"m", b"ten"), (b"t", b"node-b")]),
        ]);
        assert_eq!(
            entries(reply),
            vec![
                Entry {
                    order: 7,
                    frame: b"seven".to_vec(),
                    to: None
                },
                Entry {
                    order: 10,
                    frame: b"ten".to_vec(),
                    to: Some("node-b".into())
                },
            ]
        );
        assert_eq!(entries(Value::Nil), vec![]);
    }
}
