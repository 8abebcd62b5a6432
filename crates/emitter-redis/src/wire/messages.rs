//! Application messages between nodes: the frames on the broadcast channel and on each node's own channel.
//!
//! A frame is a one-line header, then the origin node's id, then the username (the one to skip for a broadcast, the
//! recipient for a send), then the body exactly as the origin serialized it (the JSON frame its clients get):
//!
//! ```text
//! e3 <node bytes> <generation> <number> <order> <after seq> <user bytes, or - for none>[ keep]\n<node><user><body>
//! ```
//!
//! `keep` marks a message for a user who was unlinked everywhere when it was sent, on the broadcast channel: every
//! node keeps it for the user's next link.
//!
//! Lengths instead of separators, so that neither a username nor a body needs escaping, and the body is copied once.

use bytes::Bytes;

/// A message one node publishes for the users linked on other nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMessage {
    /// The node that published it.
    pub origin: String,
    /// The origin's generation when it published it.
    pub generation: u64,
    /// Its place among what the origin (this generation) published on the same channel: 1, 2, 3, … with no gaps,
    /// so that a receiver can tell a message lost on the way (a gap) or sent twice (a repeat). The publisher sets it.
    pub number: u64,
    /// Its place among everything the origin (this generation) published, on any channel: 1, 2, 3, …, so that a
    /// receiver fetching what it missed from the origin's window (see
    /// [`Options::message_window`](crate::Options::message_window)) gets its broadcasts and the sends for its users
    /// back in the one order the origin sent them in. The publisher sets it.
    pub order: u64,
    /// The last membership seq the origin had applied when it published: a receiver that has not applied it yet
    /// should catch up first, so that a message never reaches users before the membership change it followed.
    pub after: u64,
    /// For a broadcast, the user not to deliver it to (`skip`); for a send, the recipient.
    pub user: Option<String>,
    /// A send to `user` while it was unlinked everywhere, published on the broadcast channel: every node keeps it
    /// for the user's next link (`ServerBuilder::keep_unlinked`).
    pub keep: bool,
    /// The frame to deliver, as the origin serialized it.
    pub body: Bytes,
}

/// `e3`: `e2` plus `order`. A node reads only its own version, so nodes of both versions do not understand each
/// other's messages (they count them as malformed): upgrade all nodes of a cluster together.
const VERSION: &str = "e3";

impl NodeMessage {
    /// The frame published to Redis.
    ///
    /// ```
    /// use emitter_redis::wire::NodeMessage;
    ///
    /// let message = NodeMessage {
    ///     origin: "node-a".into(),
    ///     generation: 3,
    ///     number: 7,
    ///     order: 9,
    ///     after: 41,
    ///     user: Some("alice".into()),
    ///     keep: false,
    ///     body: r#"{"type":"chat/message"}"#.into(),
    /// };
    /// let frame = message.encode();
    /// assert_eq!(NodeMessage::decode(&frame), Some(message));
    /// assert_eq!(NodeMessage::decode(b"nonsense"), None);
    /// ```
    pub fn encode(&self) -> Vec<u8> {
        let user_len = self.user.as_ref().map_or("-".to_owned(), |user| user.len().to_string());
        let keep = if self.keep { " keep" } else { "" };
        let header = format!(
            "{VERSION} {} {} {} {} {} {user_len}{keep}\n",
            self.origin.len(),
            self.generation,
            self.number,
            self.order,
            self.after
        );
        let user = self.user.as_deref().unwrap_or_default();
        let mut frame = Vec::with_capacity(header.len() + self.origin.len() + user.len() + self.body.len());
        frame.extend_from_slice(header.as_bytes());
        frame.extend_from_slice(self.origin.as_bytes());
        frame.extend_from_slice(user.as_bytes());
        frame.extend_from_slice(&self.body);
        frame
    }

    /// Reads a frame back; `None` for anything [`NodeMessage::encode`] did not write.
    pub fn decode(frame: &[u8]) -> Option<NodeMessage> {
        let newline = frame.iter().position(|&b| b == b'\n')?;
        let header = std::str::from_utf8(&frame[..newline]).ok()?;
        let mut fields = header.split(' ');
        if fields.next()? != VERSION {
            return None;
        }
        let origin_len: usize = fields.next()?.parse().ok()?;
        let generation: u64 = fields.next()?.parse().ok()?;
        let number: u64 = fields.next()?.parse().ok()?;
        let order: u64 = fields.next()?.parse().ok()?;
        let after: u64 = fields.next()?.parse().ok()?;
        let user_len = match fields.next()? {
            "-" => None,
            len => Some(len.parse::<usize>().ok()?),
        };
        let keep = match fields.next() {
            None => false,
            Some("keep") => true,
            Some(_) => return None,
        };
        if fields.next().is_some() {
            return None;
        }
        let rest = &frame[newline + 1..];
        let origin = rest.get(..origin_len)?;
        let rest = &rest[origin_len..];
        let (user, body) = match user_len {
            None => (None, rest),
            Some(len) => (
                Some(std::str::from_utf8(rest.get(..len)?).ok()?.to_owned()),
                &rest[len..],
            ),
        };
        Some(NodeMessage {
            origin: std::str::from_utf8(origin).ok()?.to_owned(),
            generation,
            number,
            order,
            after,
            user,
            keep,
            body: Bytes::copy_from_slice(body),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::NodeMessage;

    #[test]
    fn frames_round_trip_whatever_the_user_and_body_hold() {
        for user in [None, Some(""), Some("a b\nc"), Some("ünïcode")] {
            for body in ["", "{}", "line\nbreaks\n and spaces", "e3 3 1 1 1 1 -\n"] {
                let message = NodeMessage {
                    origin: "n-1".into(),
                    generation: u64::MAX,
                    number: 1,
                    order: 1,
                    after: 0,
                    user: user.map(str::to_owned),
                    keep: user.is_some(),
                    body: body.to_owned().into(),
                };
                assert_eq!(NodeMessage::decode(&message.encode()), Some(message));
            }
        }
    }

    #[test]
    fn truncated_or_foreign_frames_are_refused() {
        let frame = NodeMessage {
            origin: "node".into(),
            generation: 1,
            number: 5,
            order: 5,
            after: 2,
            user: Some("alice".into()),
            keep: false,
            body: "body".into(),
        }
        .encode();
        // Cut inside the origin or the username: refused. (Cut inside the body: a shorter body, which is all one can
        // tell without a body length; Redis never truncates a published message.)
        let body_starts = frame.len() - 4;
        for cut in 0..body_starts {
            assert_eq!(NodeMessage::decode(&frame[..cut]), None, "cut at {cut}");
        }
        assert_eq!(NodeMessage::decode(b"e2 1 1 1 1 -\nab"), None);
        assert_eq!(NodeMessage::decode(b"e3 1 1 1 1 1 - extra\nab"), None);
        assert_eq!(NodeMessage::decode(b"e3 x 1 1 1 1 -\nab"), None);
    }
}
