//! Getting back the cross-node messages a subscription missed.
//!
//! Every node keeps its newest messages in Redis, numbered, one capped stream per channel it publishes on (its
//! broadcasts; its messages for each other node): the *window* (see [`Options::message_window`]). A receiver tracks
//! the last number it delivered per origin, generation and channel (an [`Inbox`]). A message whose number leaves a
//! gap, or a subscription made again after a drop, sends it to the window for the numbers in between; it delivers
//! them in their number order before anything later from that origin, and drops what it has had already. What the
//! window no longer holds is counted as lost and logged.
//!
//! Which origins does a receiver know? Those it has heard from, and those whose windows it read when it first
//! subscribed (the *baseline*: every registered node's newest number, read *before* subscribing, so that whatever
//! is published between the read and the subscription is fetched right after it). An origin generation it never
//! heard of is one of two kinds: registered after the baseline (the generation counter says so): everything it
//! published is for this receiver, from number 1; or older (a node that was not registered then): its first message
//! starts the count, as it always did.
//!
//! [`Options::message_window`]: crate::Options::message_window

use std::collections::HashMap;

use redis::aio::ConnectionManager;
use redis::Value;

use crate::shared::{Counters, Shared};
use crate::wire::messages::NodeMessage;

/// How many messages one window read takes at most; a longer gap takes several.
const PAGE: usize = 500;

/// One channel of one origin generation: its node, generation, and whether it is the broadcast channel (else it is
/// the receiver's own channel).
pub(crate) type Origin = (String, u64, bool);

/// What to do with a message that came through the subscription.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// Had it already (a publish sent twice, or fetched from the window): drop it.
    Repeat,
    /// The next one: deliver it.
    Next,
    /// Numbers `from` up to the message's own are missing: fetch them first.
    Gap {
        /// The first missing number.
        from: u64,
    },
}

/// What one window read returned.
pub(crate) struct Page {
    /// The messages to deliver, in their number order.
    pub(crate) messages: Vec<NodeMessage>,
    /// Whether the read reached the end of what was asked for (else read again, from `next`).
    pub(crate) done: bool,
    /// The number to read on from.
    pub(crate) next: u64,
}

/// The last number delivered per origin channel (see the module docs).
pub(crate) struct Inbox {
    /// The receiving node: its own channel's windows are `…/n/<node>`.
    node: String,
    last: HashMap<Origin, u64>,
    /// The generation counter at the baseline: a higher generation registered after it. `None` before the baseline.
    baseline: Option<u64>,
}

impl Inbox {
    pub(crate) fn new(node: &str) -> Inbox {
        Inbox {
            node: node.to_owned(),
            last: HashMap::new(),
            baseline: None,
        }
    }

    /// Whether the baseline has been read (else read it before subscribing).
    pub(crate) fn has_baseline(&self) -> bool {
        self.baseline.is_some()
    }

    /// Reads the baseline: the generation counter, and the newest number in each registered node's windows for this
    /// receiver. Call it before the first subscription.
    pub(crate) async fn read_baseline(
        &mut self,
        shared: &Shared,
        conn: &mut ConnectionManager,
    ) -> redis::RedisResult<()> {
        let (generation, nodes) = registered(shared, conn).await?;
        let origins: Vec<Origin> = nodes
            .into_iter()
            .flat_map(|(node, generation)| self.channels(node, generation))
            .collect();
        let mut pipe = redis::pipe();
        for origin in &origins {
            pipe.cmd("XREVRANGE")
                .arg(self.window(shared, origin))
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
            let newest = entries(tail).first().map_or(0, |(number, _)| *number);
            self.last.insert(origin, newest);
        }
        self.baseline = Some(generation);
        Ok(())
    }

    /// After a resubscription, before [`Inbox::known`]: learns the node generations registered since the baseline
    /// that it has not heard from (all they sent is for this receiver, and may all have been sent while it was
    /// away). And checks that Redis still has the state the baseline was read from: a generation counter lower than
    /// the baseline's means Redis lost it (restarted without persistence, flushed), and with it every window; the
    /// generations it hands out from now on start again and must not be mistaken for the old ones.
    pub(crate) async fn refresh(&mut self, shared: &Shared, conn: &mut ConnectionManager) -> redis::RedisResult<()> {
        let (generation, nodes) = registered(shared, conn).await?;
        if self.baseline.is_some_and(|baseline| generation < baseline) {
            tracing::warn!(
                cluster = shared.name,
                node = self.node,
                "redis lost the cluster's state, and with it the messages other nodes kept: what this node had not \
                 received from them before is lost, uncounted"
            );
            self.last.clear();
            self.baseline = Some(0);
        }
        let baseline = self.baseline.unwrap_or(0);
        for (node, generation) in nodes {
            if generation > baseline {
                for origin in self.channels(node.clone(), generation) {
                    self.last.entry(origin).or_insert(0);
                }
            }
        }
        Ok(())
    }

    /// The channels of `node` (in `generation`) that reach this receiver: its broadcasts (unless it is this node)
    /// and its messages for this node.
    fn channels(&self, node: String, generation: u64) -> Vec<Origin> {
        let mut channels = Vec::with_capacity(2);
        if node != self.node {
            channels.push((node.clone(), generation, true));
        }
        channels.push((node, generation, false));
        channels
    }

    /// The origin channels it knows, and the number after the last one delivered from each: after a
    /// resubscription, read each window from there on.
    pub(crate) fn known(&self) -> Vec<(Origin, u64)> {
        self.last
            .iter()
            .map(|(origin, last)| (origin.clone(), last + 1))
            .collect()
    }

    /// Checks a message that came through the subscription against the last one delivered from its origin channel.
    /// Records it as delivered when it is [`Check::Next`]; a [`Check::Gap`] is recorded once filled
    /// ([`Inbox::fill`], then [`Inbox::delivered`]).
    pub(crate) fn check(&mut self, message: &NodeMessage, broadcast: bool) -> Check {
        let origin = (message.origin.clone(), message.generation, broadcast);
        let last = match self.last.get(&origin) {
            Some(&last) => last,
            // Registered after the baseline: everything it sent is for this receiver.
            None if self.baseline.is_some_and(|baseline| message.generation > baseline) => 0,
            // An origin this receiver knows nothing of: its first message starts the count.
            None => message.number.saturating_sub(1),
        };
        if message.number <= last {
            return Check::Repeat;
        }
        if message.number == last + 1 {
            self.last.insert(origin, message.number);
            return Check::Next;
        }
        Check::Gap { from: last + 1 }
    }

    /// Records `number` as delivered from `origin`.
    pub(crate) fn delivered(&mut self, origin: &Origin, number: u64) {
        let last = self.last.entry(origin.clone()).or_default();
        *last = (*last).max(number);
    }

    /// Reads the next page of `origin`'s window from `from` on, up to `upto` (inclusive; `None`: its newest), and
    /// records what it returns as delivered. Numbers the window no longer holds are counted as lost and logged; so
    /// are those up to `upto` it never held, once the read reaches them.
    pub(crate) async fn fill(
        &mut self,
        shared: &Shared,
        conn: &mut ConnectionManager,
        origin: &Origin,
        from: u64,
        upto: Option<u64>,
    ) -> redis::RedisResult<Page> {
        let end = upto.map_or("+".to_owned(), |upto| format!("{upto}-0"));
        let reply: Value = redis::cmd("XRANGE")
            .arg(self.window(shared, origin))
            .arg(format!("{from}-0"))
            .arg(end)
            .arg("COUNT")
            .arg(PAGE)
            .query_async(conn)
            .await?;
        let read = entries(reply);
        let done = read.len() < PAGE;
        let mut next = from;
        let mut messages = Vec::with_capacity(read.len());
        for (number, frame) in read {
            let Some(message) = NodeMessage::decode(&frame) else {
                Counters::add(&shared.counters.malformed_messages, 1);
                continue;
            };
            if number < next
                || message.number != number
                || (&message.origin, message.generation) != (&origin.0, origin.1)
            {
                Counters::add(&shared.counters.malformed_messages, 1);
                continue;
            }
            self.lost(shared, origin, number - next);
            next = number + 1;
            messages.push(message);
        }
        let done = done || upto.is_some_and(|upto| next > upto);
        if done {
            if let Some(upto) = upto {
                self.lost(shared, origin, (upto + 1).saturating_sub(next));
            }
        }
        if next > from {
            self.delivered(origin, next - 1);
        }
        Counters::add(&shared.counters.messages_recovered, messages.len() as u64);
        Ok(Page { messages, done, next })
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
            broadcast = origin.2,
            lost = count,
            "messages from another node were lost: published while this node's subscription was away, and no longer \
             in their origin's window"
        );
    }

    fn window(&self, shared: &Shared, (node, generation, broadcast): &Origin) -> String {
        let to = (!broadcast).then_some(self.node.as_str());
        shared.keys.window(node, *generation, to)
    }
}

/// The generation counter, and each registered node with its lease's generation.
async fn registered(shared: &Shared, conn: &mut ConnectionManager) -> redis::RedisResult<(u64, Vec<(String, u64)>)> {
    let (generation, nodes): (Option<u64>, HashMap<String, String>) = redis::pipe()
        .get(shared.keys.generation())
        .hgetall(shared.keys.nodes())
        .query_async(conn)
        .await?;
    let nodes = nodes
        .into_iter()
        .filter_map(|(node, lease)| Some((node, lease.split(' ').next()?.parse().ok()?)))
        .collect();
    Ok((generation.unwrap_or(0), nodes))
}

/// The entries of an `XRANGE`/`XREVRANGE` reply: each one's number (its ID is `<number>-0`) and its frame (field
/// `m`). Anything else is skipped.
fn entries(reply: Value) -> Vec<(u64, Vec<u8>)> {
    let Value::Array(items) = reply else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let Value::Array(mut parts) = item else {
                return None;
            };
            if parts.len() != 2 {
                return None;
            }
            let fields = parts.pop()?;
            let id = parts.pop()?;
            let number = match id {
                Value::BulkString(id) => std::str::from_utf8(&id).ok()?.strip_suffix("-0")?.parse().ok()?,
                Value::SimpleString(id) => id.strip_suffix("-0")?.parse().ok()?,
                _ => return None,
            };
            let Value::Array(fields) = fields else {
                return None;
            };
            let mut fields = fields.into_iter();
            match (fields.next(), fields.next()) {
                (Some(Value::BulkString(name)), Some(Value::BulkString(frame))) if name == b"m" => {
                    Some((number, frame))
                }
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(origin: &str, generation: u64, number: u64) -> NodeMessage {
        NodeMessage {
            origin: origin.into(),
            generation,
            number,
            after: 0,
            user: None,
            keep: false,
            body: "{}".into(),
        }
    }

    #[test]
    fn numbers_tell_next_repeat_and_gap() {
        let mut inbox = Inbox::new("me");
        inbox.baseline = Some(5);
        // An origin older than the baseline, never heard of: its first message starts the count.
        assert_eq!(inbox.check(&message("a", 3, 40), true), Check::Next);
        assert_eq!(inbox.check(&message("a", 3, 41), true), Check::Next);
        assert_eq!(inbox.check(&message("a", 3, 41), true), Check::Repeat);
        assert_eq!(inbox.check(&message("a", 3, 44), true), Check::Gap { from: 42 });
        // The same origin's other channel is counted apart.
        assert_eq!(inbox.check(&message("a", 3, 7), false), Check::Next);
        // Registered after the baseline: from number 1.
        assert_eq!(inbox.check(&message("b", 6, 1), true), Check::Next);
        assert_eq!(inbox.check(&message("c", 7, 3), true), Check::Gap { from: 1 });
        inbox.delivered(&("c".into(), 7, true), 3);
        assert_eq!(inbox.check(&message("c", 7, 3), true), Check::Repeat);
        assert_eq!(inbox.check(&message("c", 7, 4), true), Check::Next);
    }

    #[test]
    fn window_entries_are_read_by_number() {
        let entry = |id: &str, field: &[u8], frame: &[u8]| {
            Value::Array(vec![
                Value::BulkString(id.as_bytes().to_vec()),
                Value::Array(vec![
                    Value::BulkString(field.to_vec()),
                    Value::BulkString(frame.to_vec()),
                ]),
            ])
        };
        let reply = Value::Array(vec![
            entry("7-0", b"m", b"seven"),
            entry("8-1", b"m", b"not ours"),
            entry("9-0", b"x", b"not ours"),
            Value::Nil,
            entry("10-0", b"m", b"ten"),
        ]);
        assert_eq!(entries(reply), vec![(7, b"seven".to_vec()), (10, b"ten".to_vec())]);
        assert_eq!(entries(Value::Nil), vec![]);
    }
}
