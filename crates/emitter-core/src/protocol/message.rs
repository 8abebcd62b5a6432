//! The Krmx wire format: messages, their JSON shape and the frames that carry them.
//!
//! Every Krmx message is a JSON object with a string `type` and an optional `payload`. Types that start with the exact,
//! lowercase prefix `krmx/` belong to the protocol itself; everything else is an application message.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

pub use crate::protocol::vocabulary::{
    Rejection, ACCEPTED, JOINED, LEAVE, LEFT, LINK, LINKED, REJECTED, UNLINK, UNLINKED,
};

/// The prefix reserved for the protocol's own message types. It is matched exactly and case-sensitively.
pub const RESERVED_PREFIX: &str = "krmx/";

/// A Krmx message: a `type` and an optional JSON `payload`.
///
/// ```
/// use emitter_core::Message;
/// use serde_json::json;
///
/// let message = Message::with_payload("chat/said", "hello");
/// assert_eq!(message.kind, "chat/said");
/// assert_eq!(message.payload_as::<String>().unwrap(), "hello");
/// let moved = Message::with_payload("game/move", json!({"x": 1, "y": 2}));
/// assert_eq!(serde_json::to_string(&moved).unwrap(), r#"{"type":"game/move","payload":{"x":1,"y":2}}"#);
/// ```
///
/// To send a value of your own type as the payload, see [`Server::send_payload`](crate::Server::send_payload).
///
/// Two messages are equal when their `kind` and `payload` are; the payload's text as received
/// ([`raw_payload`](Message::raw_payload)) is not compared, printed or serialized.
#[derive(Clone, Serialize)]
pub struct Message {
    /// The message type, such as `chat/said`. It is `type` on the wire.
    #[serde(rename = "type")]
    pub kind: String,
    /// The payload. `None` when the message has none; `Some(Value::Null)` when it was sent as `null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// The payload's JSON text as received; see [`Message::raw_payload`].
    #[serde(skip)]
    raw: Option<Box<RawValue>>,
}

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.payload == other.payload
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("kind", &self.kind)
            .field("payload", &self.payload)
            .finish()
    }
}

/// Reads a message the way JavaScript's `JSON.parse` sees an object: other keys are ignored, a repeated key's last
/// value wins (even for `type`), and an explicit `"payload": null` stays apart from an absent payload.
impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(Fields { raw_kinds: &[] })
    }
}

/// The message visitor. `raw_kinds`: the types whose payload text is kept (see [`Message::raw_payload`]); with none,
/// a payload is parsed straight into its `Value`, and the text is neither scanned twice nor copied.
struct Fields<'k> {
    raw_kinds: &'k [Box<str>],
}

impl Fields<'_> {
    fn keeps_raw(&self, kind: &str) -> bool {
        self.raw_kinds.iter().any(|kept| **kept == *kind)
    }
}

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = Message;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object with a string `type`")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
        let (mut kind, mut payload) = (None, None);
        // The payload's text, borrowed from the frame: copied at the end only if the message's type keeps it.
        let mut raw: Option<&'de RawValue> = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "type" => kind = Some(map.next_value::<Value>()?),
                "payload" => {
                    // Scanned once as text and then parsed from it only when the type (as read so far: `type` usually
                    // comes first) may keep it.
                    let maybe_kept = !self.raw_kinds.is_empty()
                        && match &kind {
                            Some(Value::String(kind)) => self.keeps_raw(kind),
                            _ => true,
                        };
                    if maybe_kept {
                        let text = map.next_value::<&'de RawValue>()?;
                        payload = Some(serde_json::from_str::<Value>(text.get()).map_err(de::Error::custom)?);
                        raw = Some(text);
                    } else {
                        payload = Some(map.next_value::<Value>()?);
                        raw = None;
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        match kind {
            Some(Value::String(kind)) => {
                let raw = raw.filter(|_| self.keeps_raw(&kind)).map(RawValue::to_owned);
                Ok(Message { kind, payload, raw })
            }
            _ => Err(de::Error::custom("`type` must be a string")),
        }
    }
}

impl Message {
    /// A message of the given type without a payload.
    ///
    /// ```
    /// let message = emitter_core::Message::new("game/started");
    /// assert!(message.payload.is_none());
    /// ```
    pub fn new(kind: impl Into<String>) -> Self {
        Message {
            kind: kind.into(),
            payload: None,
            raw: None,
        }
    }

    /// A message of the given type with a JSON payload: anything that converts into a `serde_json::Value` (a string, a
    /// number, a bool, `json!({..})`, a `Value`). It cannot fail.
    ///
    /// ```
    /// let message = emitter_core::Message::with_payload("game/roll", 6);
    /// assert_eq!(message.payload, Some(serde_json::json!(6)));
    /// ```
    pub fn with_payload(kind: impl Into<String>, payload: impl Into<Value>) -> Self {
        Message {
            kind: kind.into(),
            payload: Some(payload.into()),
            raw: None,
        }
    }

    /// Reads the payload as a `T`. A missing payload reads as JSON `null`, and if `T` does not accept `null`, as an
    /// empty object: so `Option<T>`, `()` and a struct whose fields all have defaults accept a message without one.
    ///
    /// ```
    /// #[derive(serde::Deserialize, Debug, PartialEq)]
    /// struct Move { x: u8, y: u8 }
    /// let message: emitter_core::Message =
    ///     serde_json::from_str(r#"{"type":"game/move","payload":{"x":1,"y":2}}"#).unwrap();
    /// assert_eq!(message.payload_as::<Move>().unwrap(), Move { x: 1, y: 2 });
    /// assert!(message.payload_as::<String>().is_err());
    /// ```
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        match &self.payload {
            Some(value) => T::deserialize(value),
            None => T::deserialize(&Value::Null).or_else(|_| T::deserialize(&Value::Object(Default::default()))),
        }
    }

    /// The payload's JSON text exactly as the client sent it (members in the order sent, numbers as written), for a
    /// message the server received whose type it was asked to keep it for with
    /// [`Server::keep_raw_payload`](crate::Server::keep_raw_payload). `None` for any other message: one made with
    /// [`new`](Message::new) or [`with_payload`](Message::with_payload), parsed by [`parse`], or without a payload.
    ///
    /// It is the text that `payload` was parsed from, and only that: the server hands listeners a `&Message`, so
    /// nothing changes a received message's `payload` before they read both; code that owns a message and changes
    /// its `payload` must not rely on the text afterwards. Serializing the `&RawValue` (with serde_json) writes the
    /// text verbatim, so it can be spliced into an outgoing message.
    ///
    /// ```
    /// let made = emitter_core::Message::with_payload("stream/append", serde_json::json!({"z": 1, "a": 2}));
    /// assert!(made.raw_payload().is_none());
    /// ```
    pub fn raw_payload(&self) -> Option<&RawValue> {
        self.raw.as_deref()
    }

    /// Whether the type starts with the reserved `krmx/` prefix.
    pub fn is_reserved(&self) -> bool {
        self.kind.starts_with(RESERVED_PREFIX)
    }
}

/// Why an incoming frame is not a Krmx message: not JSON, not an object, or no string `type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidMessage;

impl std::fmt::Display for InvalidMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid message")
    }
}

impl std::error::Error for InvalidMessage {}

/// Parses the bytes of one incoming frame (text or binary alike) as a message.
///
/// ```
/// use emitter_core::protocol::parse;
///
/// assert_eq!(parse(br#"{"type":"a/b","extra":1}"#).unwrap().kind, "a/b");
/// assert!(parse(b"42").is_err());
/// assert!(parse(br#"{"type":3}"#).is_err());
/// assert!(parse(b"\xff").is_err());
/// ```
pub fn parse(bytes: &[u8]) -> Result<Message, InvalidMessage> {
    serde_json::from_slice(bytes).map_err(|_| InvalidMessage)
}

/// Why a frame is not a message, for the log line about it (never its content: that is the client's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Arrays and objects nest deeper than `max_json_depth`.
    TooDeep,
    /// Not JSON (or not UTF-8).
    NotJson,
    /// JSON, but not an object with a string `type`.
    NotAMessage,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Invalid::TooDeep => "nested deeper than max_json_depth",
            Invalid::NotJson => "not JSON",
            Invalid::NotAMessage => "not an object with a string type",
        })
    }
}

/// [`parse_bounded`], saying why a frame is not a message, and keeping the payload's text for the types in
/// `raw_kinds` (see [`Message::raw_payload`]).
pub(crate) fn read(bytes: &[u8], max_depth: usize, raw_kinds: &[Box<str>]) -> Result<Message, Invalid> {
    // Every level takes at least one byte, so a short message cannot be too deep.
    if bytes.len() > max_depth && nests_deeper_than(bytes, max_depth) {
        return Err(Invalid::TooDeep);
    }
    // What `serde_json::from_slice` does, with the visitor told which payloads to keep.
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let message = serde::Deserializer::deserialize_map(&mut deserializer, Fields { raw_kinds })
        .and_then(|message| deserializer.end().map(|()| message));
    message.map_err(|error| match error.classify() {
        serde_json::error::Category::Data => Invalid::NotAMessage,
        _ => Invalid::NotJson,
    })
}

/// Parses a frame like [`parse`], after checking that arrays and objects nest at most `max_depth` deep (the message
/// object itself is depth 1). The check scans the bytes once and allocates nothing.
///
/// ```
/// use emitter_core::protocol::parse_bounded;
///
/// assert!(parse_bounded(br#"{"type":"a","payload":[[1]]}"#, 3).is_ok());
/// assert!(parse_bounded(br#"{"type":"a","payload":[[1]]}"#, 2).is_err());
/// assert!(parse_bounded(br#"{"type":"a","payload":"[[[[[[["}"#, 1).is_ok());
/// ```
pub fn parse_bounded(bytes: &[u8], max_depth: usize) -> Result<Message, InvalidMessage> {
    read(bytes, max_depth, &[]).map_err(|_| InvalidMessage)
}

fn nests_deeper_than(bytes: &[u8], max_depth: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in bytes {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// A well-formed `krmx/link` request. Its `Debug` never prints the credential.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkRequest {
    /// The user the connection wants to link to.
    pub username: String,
    /// The protocol version the client speaks, such as `0.6.2`.
    pub version: String,
    /// An optional credential, such as a token, for the `authenticate` listeners.
    pub auth: Option<String>,
}

impl std::fmt::Debug for LinkRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkRequest")
            .field("username", &self.username)
            .field("version", &self.version)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl LinkRequest {
    /// Reads a link request from a `krmx/link` payload: `username` and `version` must be strings and `auth`, when
    /// present, a string. `None` means the request is malformed (`invalid link request` on the wire). The strings are
    /// moved out of the payload, not copied.
    pub fn from_payload(payload: Option<Value>) -> Option<LinkRequest> {
        let Value::Object(mut object) = payload? else {
            return None;
        };
        let mut take_string = |key: &str| match object.remove(key) {
            Some(Value::String(text)) => Some(Some(text)),
            None => Some(None),
            Some(_) => None,
        };
        let username = take_string("username")??;
        let version = take_string("version")??;
        let auth = take_string("auth")?;
        Some(LinkRequest {
            username,
            version,
            auth,
        })
    }
}

/// A message that a client sends, as the protocol sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// `krmx/link`: link this connection to a user. `None` when the payload is malformed.
    Link(Option<LinkRequest>),
    /// `krmx/unlink`: unlink this connection from its user.
    Unlink,
    /// `krmx/leave`: the linked user leaves the server.
    Leave,
    /// Any other `krmx/` type: not allowed from clients.
    UnknownReserved(Message),
    /// An application message.
    Custom(Message),
}

impl From<Message> for ClientMessage {
    fn from(message: Message) -> Self {
        match message.kind.as_str() {
            "krmx/link" => ClientMessage::Link(LinkRequest::from_payload(message.payload)),
            "krmx/unlink" => ClientMessage::Unlink,
            "krmx/leave" => ClientMessage::Leave,
            _ if message.is_reserved() => ClientMessage::UnknownReserved(message),
            _ => ClientMessage::Custom(message),
        }
    }
}

/// A protocol message that the server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage<'a> {
    /// `krmx/accepted`: the link request was accepted.
    Accepted,
    /// `krmx/rejected {reason}`: the request was refused.
    Rejected(&'a str),
    /// `krmx/joined {username}`: a user joined.
    Joined(&'a str),
    /// `krmx/linked {username}`: a user was linked to a connection.
    Linked(&'a str),
    /// `krmx/unlinked {username}`: a user was unlinked from its connection.
    Unlinked(&'a str),
    /// `krmx/left {username}`: a user left.
    Left(&'a str),
}

impl ServerMessage<'_> {
    /// The message as a frame, ready to be queued for any number of connections.
    pub fn to_frame(&self) -> Frame {
        // Built by hand rather than by serde: a string's JSON form (quoted and escaped, by `Value`'s `Display`) cannot
        // fail, so neither can these.
        let quoted = |text: &str| Value::from(text).to_string();
        let text = match *self {
            ServerMessage::Accepted => format!(r#"{{"type":"{ACCEPTED}"}}"#),
            ServerMessage::Rejected(reason) => {
                format!(r#"{{"type":"{REJECTED}","payload":{{"reason":{}}}}}"#, quoted(reason))
            }
            ServerMessage::Joined(username) => user_frame(JOINED, &quoted(username)),
            ServerMessage::Linked(username) => user_frame(LINKED, &quoted(username)),
            ServerMessage::Unlinked(username) => user_frame(UNLINKED, &quoted(username)),
            ServerMessage::Left(username) => user_frame(LEFT, &quoted(username)),
        };
        Frame(Bytes::from(text))
    }
}

fn user_frame(kind: &str, quoted_username: &str) -> String {
    format!(r#"{{"type":"{kind}","payload":{{"username":{quoted_username}}}}}"#)
}

/// One serialized outgoing message: JSON text in shared bytes.
///
/// A broadcast serializes its message once and hands clones of the same frame to every recipient; cloning is a
/// reference-count increment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// Serializes any value to a frame. Fails when the value's `Serialize` implementation does (a map with non-string
    /// keys, say).
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Frame, serde_json::Error> {
        serde_json::to_vec(value).map(|bytes| Frame(Bytes::from(bytes)))
    }

    /// A frame another node of a cluster made (its [`bytes`](Frame::bytes)), to deliver here. `None` when the bytes
    /// are not UTF-8, so not something a node made.
    pub fn from_node(bytes: Bytes) -> Option<Frame> {
        std::str::from_utf8(&bytes).is_ok().then_some(Frame(bytes))
    }

    /// The JSON text, as bytes. They are always valid UTF-8.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The JSON text as bytes, without a copy or a reference-count change: for a transport that hands the frame on.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        // Frames are only made from serde_json output or `Value`'s `Display`, which are UTF-8.
        std::str::from_utf8(&self.0).unwrap_or("null")
    }
}

impl From<&Message> for Frame {
    /// A message's frame. It cannot fail: a message is a string and a `Value`, whose JSON forms (by `Display`) cannot.
    fn from(message: &Message) -> Self {
        // Written straight into one buffer: the same text `format!` with `Value`'s `Display` gave (serde_json's
        // compact form), without the formatting machinery or a `Value` made of the type. Writing to a `Vec` cannot
        // fail, and a string or a `Value` always serializes.
        let mut text = Vec::with_capacity(32 + message.kind.len());
        text.extend_from_slice(br#"{"type":"#);
        let _ = serde_json::to_writer(&mut text, message.kind.as_str());
        if let Some(payload) = &message.payload {
            text.extend_from_slice(br#","payload":"#);
            let _ = serde_json::to_writer(&mut text, payload);
        }
        text.push(b'}');
        Frame(Bytes::from(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_link_requests_debug_never_prints_the_credential() {
        let request = LinkRequest {
            username: "simon".into(),
            version: "0.6.0".into(),
            auth: Some("s3cret".into()),
        };
        let printed = format!("{:?}", ClientMessage::Link(Some(request)));
        assert!(!printed.contains("s3cret") && printed.contains("simon"), "{printed}");
    }

    #[test]
    fn the_cause_of_an_invalid_message() {
        assert_eq!(read(b"nope", 32, &[]), Err(Invalid::NotJson));
        assert_eq!(read(b"\xff", 32, &[]), Err(Invalid::NotJson));
        assert_eq!(read(b"{}", 32, &[]), Err(Invalid::NotAMessage));
        assert_eq!(read(br#"{"type":3}"#, 32, &[]), Err(Invalid::NotAMessage));
        assert_eq!(read(b"[1]", 32, &[]), Err(Invalid::NotAMessage));
        assert_eq!(read(br#"{"type":"a","payload":[[1]]}"#, 2, &[]), Err(Invalid::TooDeep));
    }

    #[test]
    fn a_kept_payload_is_the_text_as_received_for_the_kept_types_only() {
        let kept: &[Box<str>] = &["stream/append".into()];
        let text = br#"{"type":"stream/append","payload":{"event":{"z":1,"a":[2.50, {"y":0,"b":1}]}, "domain":"d"}}"#;
        let message = read(text, 32, kept).unwrap();
        assert_eq!(
            message.raw_payload().map(RawValue::get),
            Some(r#"{"event":{"z":1,"a":[2.50, {"y":0,"b":1}]}, "domain":"d"}"#)
        );
        // The parsed payload is what it always was; the text neither shows in equality, `Debug` nor the frame.
        assert_eq!(message, parse(text).unwrap());
        assert_eq!(format!("{message:?}"), format!("{:?}", parse(text).unwrap()));
        assert_eq!(Frame::from(&message), Frame::from(&parse(text).unwrap()));
        // `payload` before `type`, a repeated `payload` (the last wins, as its value does) and a repeated `type`.
        let first = read(br#"{"payload":{"b":1,"a":2},"type":"stream/append"}"#, 32, kept).unwrap();
        assert_eq!(first.raw_payload().unwrap().get(), r#"{"b":1,"a":2}"#);
        let again = read(
            br#"{"type":"stream/append","payload":{"b":1},"payload":[3 ,4]}"#,
            32,
            kept,
        )
        .unwrap();
        assert_eq!(
            (again.raw_payload().unwrap().get(), &again.payload),
            ("[3 ,4]", &Some(json!([3, 4])))
        );
        let retyped = read(
            br#"{"type":"stream/append","payload":{"b":1},"type":"other"}"#,
            32,
            kept,
        )
        .unwrap();
        assert!(retyped.raw_payload().is_none());
        // Other types, no kept types, no payload, and messages made here keep none.
        assert!(read(br#"{"type":"other","payload":{"b":1}}"#, 32, kept)
            .unwrap()
            .raw_payload()
            .is_none());
        assert!(read(text, 32, &[]).unwrap().raw_payload().is_none());
        assert!(read(br#"{"type":"stream/append"}"#, 32, kept)
            .unwrap()
            .raw_payload()
            .is_none());
        assert!(parse(text).unwrap().raw_payload().is_none());
        // Bad input is refused alike, kept or not.
        for bad in [
            &br#"{"type":"stream/append","payload":{"a":}}"#[..],
            br#"{"payload":[1],"type":3}"#,
        ] {
            assert_eq!(read(bad, 32, kept).map_err(|_| ()), read(bad, 32, &[]).map_err(|_| ()));
            assert!(read(bad, 32, kept).is_err());
        }
        // A clone keeps the text.
        assert_eq!(
            message.clone().raw_payload().map(RawValue::get),
            message.raw_payload().map(RawValue::get)
        );
    }

    #[test]
    fn invalid_messages_as_the_reference_defines_them() {
        for raw in [
            "",
            "true",
            "\"hello\"",
            "42",
            "null",
            "this-is-not-a-json-message",
            "{}",
            "{\"type\":3}",
            "{\"type\":{\"key\":\"value\"}}",
            "[]",
        ] {
            assert_eq!(parse(raw.as_bytes()), Err(InvalidMessage), "{raw}");
            assert!(read(raw.as_bytes(), 32, &[]).is_err(), "{raw}");
        }
    }

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        let deep = format!("{{\"type\":\"a\",\"payload\":{}1{}}}", "[".repeat(40), "]".repeat(40));
        assert!(parse_bounded(deep.as_bytes(), 41).is_ok());
        assert!(parse_bounded(deep.as_bytes(), 40).is_err());
        let tricky = br#"{"type":"a\"[[[[","payload":"\\"}"#;
        assert!(parse_bounded(tricky, 1).is_ok());
        // Far deeper than serde_json's own recursion limit: refused by the scan, before any parsing.
        let bomb = "[".repeat(100_000);
        assert!(parse_bounded(bomb.as_bytes(), 32).is_err());
    }

    #[test]
    fn a_repeated_key_takes_its_last_value_as_in_javascript() {
        let message = parse(br#"{"type":"a","payload":1,"type":"b","payload":2}"#).unwrap();
        assert_eq!((message.kind.as_str(), message.payload), ("b", Some(json!(2))));
        assert!(parse(br#"{"type":"a","type":3}"#).is_err());
        assert_eq!(parse(br#"{"type":3,"type":"a"}"#).unwrap().kind, "a");
    }

    #[test]
    fn payload_null_is_kept_apart_from_no_payload() {
        let with_null = parse(br#"{"type":"a","payload":null}"#).unwrap();
        assert_eq!(with_null.payload, Some(Value::Null));
        assert_eq!(Frame::from(&with_null).as_str(), r#"{"type":"a","payload":null}"#);
        let without = parse(br#"{"type":"a"}"#).unwrap();
        assert_eq!(without.payload, None);
        assert_eq!(Frame::from(&without).as_str(), r#"{"type":"a"}"#);
    }

    #[test]
    fn link_requests_follow_the_reference_checks() {
        let ok = |payload: Value| LinkRequest::from_payload(Some(payload));
        assert!(ok(json!({"username": "simon", "version": "0.6.1"})).is_some());
        assert_eq!(
            ok(json!({"username": "simon", "version": "0.6.1", "auth": "t"}))
                .unwrap()
                .auth
                .as_deref(),
            Some("t")
        );
        for bad in [
            json!({"version": "abc", "username": 11}),
            json!({"version": "def", "missing": "incorrect"}),
            json!({"version": 11, "username": "simon"}),
            json!({"missing": "incorrect", "username": "simon"}),
            json!({"version": "abc", "username": "simon", "auth": 11}),
            json!({"version": "abc", "username": "simon", "auth": null}),
            json!(3),
        ] {
            assert!(ok(bad.clone()).is_none(), "{bad}");
        }
        assert!(LinkRequest::from_payload(None).is_none());
    }

    #[test]
    fn only_the_exact_lowercase_prefix_is_reserved() {
        assert!(matches!(
            ClientMessage::from(Message::new("krmx/")),
            ClientMessage::UnknownReserved(_)
        ));
        assert!(matches!(
            ClientMessage::from(Message::new("KRMX/x")),
            ClientMessage::Custom(_)
        ));
        assert!(matches!(
            ClientMessage::from(Message::new("krmx")),
            ClientMessage::Custom(_)
        ));
        assert_eq!(ClientMessage::from(Message::new("krmx/leave")), ClientMessage::Leave);
    }

    #[test]
    fn server_messages_have_the_reference_shape() {
        assert_eq!(
            ServerMessage::Accepted.to_frame().as_str(),
            r#"{"type":"krmx/accepted"}"#
        );
        assert_eq!(
            ServerMessage::Rejected("no").to_frame().as_str(),
            r#"{"type":"krmx/rejected","payload":{"reason":"no"}}"#
        );
        assert_eq!(
            ServerMessage::Left("a\"b").to_frame().as_str(),
            r#"{"type":"krmx/left","payload":{"username":"a\"b"}}"#
        );
    }

    #[test]
    fn a_message_frame_is_the_compact_json_of_its_type_and_payload() {
        // What the frame was before it was written into one buffer: `format!` over `Value`'s `Display`.
        let by_display = |message: &Message| {
            let kind = Value::from(message.kind.as_str());
            match &message.payload {
                Some(payload) => format!(r#"{{"type":{kind},"payload":{payload}}}"#),
                None => format!(r#"{{"type":{kind}}}"#),
            }
        };
        let payloads = [
            None,
            Some(json!(null)),
            Some(json!("quote \" backslash \\ newline \n tab \t nul \u{0} é 😀")),
            Some(json!(-12.5e-7)),
            Some(json!(18446744073709551615u64)),
            Some(json!({"b": [1, 2.0, true, {"c": null}], "a": "x"})),
        ];
        for kind in ["bench/echo", "", "ünï\"cødé\u{7f}"] {
            for payload in &payloads {
                let message = Message {
                    kind: kind.to_owned(),
                    payload: payload.clone(),
                    raw: None,
                };
                let frame = Frame::from(&message);
                assert_eq!(frame.as_str(), by_display(&message));
                assert_eq!(parse(frame.bytes()).unwrap(), message);
            }
        }
    }
}
