//! The messages of Krmx State on the wire, as the reference (`@krmx/state` 0.0.1) defines them.
//!
//! | type                    | direction        | payload                                                      |
//! |-------------------------|------------------|--------------------------------------------------------------|
//! | `atom/set`              | both ways        | `{ key: string, atom: string \| number \| boolean }`         |
//! | `stream/append`         | both ways        | `{ domain, dispatcher: string, event: { type, payload? } }`  |
//! | `projection/action`     | client to server | `{ domain, action: { type, payload? }, optimisticId?: string }` |
//! | `projection/set`        | server to client | `{ domain, projection }`                                     |
//! | `projection/delta`      | server to client | `{ domain, delta, optimisticId?: string }`                   |
//! | `projection/invalidate` | server to client | `{ domain, optimisticId: string }`                           |
//!
//! The reading functions here tell a message that belongs to another domain (not ours to count) from one of ours that
//! lacks the shape above (counted as malformed).
//!
//! ```
//! use emitter_core::Message;
//! use emitter_state::wire::PROJECTION_ACTION;
//! use serde_json::json;
//!
//! // What a reference client sends to play a card, optimistically.
//! let action = Message::with_payload(
//!     PROJECTION_ACTION,
//!     json!({ "domain": "cards", "action": { "type": "play", "payload": "7H" }, "optimisticId": "opt0-1" }),
//! );
//! assert_eq!(action.kind, "projection/action");
//! ```

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::stats::Counters;
use crate::value::Atom;
use emitter_core::Message;

/// `atom/set`: a client sets an atom, and the server tells every linked user its new value.
pub const ATOM_SET: &str = "atom/set";
/// `stream/append`: a client appends an event to a stream, and the server tells every linked user of each event it
/// accepted (the history, one message per event, when a user links).
pub const STREAM_APPEND: &str = "stream/append";
/// `projection/action`: a client asks for an action on a projection's state.
pub const PROJECTION_ACTION: &str = "projection/action";
/// `projection/set`: a user's whole projection, sent when it links.
pub const PROJECTION_SET: &str = "projection/set";
/// `projection/delta`: the change of a user's projection after an action, in jsondiffpatch's format.
pub const PROJECTION_DELTA: &str = "projection/delta";
/// `projection/invalidate`: the dispatcher's optimistic action will not be confirmed by a delta.
pub const PROJECTION_INVALIDATE: &str = "projection/invalidate";

/// What a message is to one model.
pub(crate) enum Incoming<T> {
    /// Another type, or another domain: not this model's business.
    NotOurs,
    /// This model's type and domain, but not the shape the protocol gives it.
    Malformed(&'static str),
    /// One for this model.
    Ours(T),
}

impl<T> Incoming<T> {
    /// What a model's message listener goes on with: the message when it is [`Ours`](Incoming::Ours), `None` when it
    /// is not. A [`Malformed`](Incoming::Malformed) one, of type `kind` (in `domain`, for the models that have one),
    /// is logged as dropped and counted in `counters` first.
    pub(crate) fn ours(self, kind: &str, domain: Option<&str>, username: &str, counters: &Counters) -> Option<T> {
        match self {
            Incoming::NotOurs => None,
            Incoming::Malformed(problem) => {
                match domain {
                    Some(domain) => {
                        tracing::warn!(
                            domain,
                            username,
                            kind,
                            problem,
                            "a message without the protocol's shape was dropped"
                        )
                    }
                    None => tracing::warn!(
                        username,
                        kind,
                        problem,
                        "a message without the protocol's shape was dropped"
                    ),
                }
                counters.malformed();
                None
            }
            Incoming::Ours(value) => Some(value),
        }
    }
}

/// The payload's members, when `message` is of type `kind` and its payload is an object whose `domain` is `domain`.
fn in_domain<'a>(message: &'a Message, kind: &str, domain: &str) -> Option<&'a Map<String, Value>> {
    if message.kind != kind {
        return None;
    }
    let payload = message.payload.as_ref()?.as_object()?;
    (payload.get("domain")?.as_str()? == domain).then_some(payload)
}

/// An `atom/set` from a client.
pub(crate) struct AtomSet<'a> {
    pub(crate) key: &'a str,
    pub(crate) atom: Atom,
}

pub(crate) fn atom_set(message: &Message) -> Incoming<AtomSet<'_>> {
    if message.kind != ATOM_SET {
        return Incoming::NotOurs;
    }
    let Some(payload) = message.payload.as_ref().and_then(Value::as_object) else {
        return Incoming::Malformed("the payload is not an object");
    };
    let Some(key) = payload.get("key").and_then(Value::as_str) else {
        return Incoming::Malformed("the key is not a string");
    };
    match payload.get("atom").and_then(Atom::from_value) {
        Some(atom) => Incoming::Ours(AtomSet { key, atom }),
        None => Incoming::Malformed("the atom is not a string, number or boolean"),
    }
}

/// An event or an action: `{ type, payload? }`, kept whole as well, to echo it exactly as it came.
pub(crate) struct Typed<'a> {
    pub(crate) whole: &'a Value,
    /// The text it was parsed from, when the server kept it (see [`stream_append`]).
    pub(crate) text: Option<&'a RawValue>,
    pub(crate) kind: &'a str,
    pub(crate) payload: Option<&'a Value>,
}

fn typed(value: Option<&Value>) -> Option<Typed<'_>> {
    let whole = value?;
    let object = whole.as_object()?;
    Some(Typed {
        whole,
        text: None,
        kind: object.get("type")?.as_str()?,
        payload: object.get("payload"),
    })
}

/// The text of the `event` member of a payload's text: the last one, as its value in the parsed payload is. `None`
/// when there is none (the payload was then refused already).
pub(crate) fn event_text(payload: &RawValue) -> Option<&RawValue> {
    struct Event;
    impl<'de> Visitor<'de> for Event {
        type Value = Option<&'de RawValue>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut event = None;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == "event" {
                    event = Some(map.next_value::<&'de RawValue>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(event)
        }
    }
    let mut deserializer = serde_json::Deserializer::from_str(payload.get());
    deserializer.deserialize_map(Event).ok()?
}

/// A `stream/append` from a client. Its `dispatcher` must be a string, as the reference's `isStreamAppendMessage`
/// checks, but its value is not read: the dispatcher is whoever sent it.
pub(crate) fn stream_append<'a>(message: &'a Message, domain: &str) -> Incoming<Typed<'a>> {
    let Some(payload) = in_domain(message, STREAM_APPEND, domain) else {
        return Incoming::NotOurs;
    };
    if !payload.get("dispatcher").is_some_and(Value::is_string) {
        return Incoming::Malformed("the dispatcher is not a string");
    }
    match typed(payload.get("event")) {
        Some(event) => Incoming::Ours(Typed {
            // Kept by the server for this type (see `Stream::register`), to echo the members in the order sent: the
            // reference client recognizes its own event by hashing the echo's text.
            text: message.raw_payload().and_then(event_text),
            ..event
        }),
        None => Incoming::Malformed("the event is not an object with a string type"),
    }
}

/// An event to echo: its text as the client sent it when the server kept it, else its value.
#[derive(Serialize, Clone, Copy)]
#[serde(untagged)]
pub(crate) enum Echo<'a> {
    /// Written verbatim.
    Text(&'a RawValue),
    /// Serialized (its members then come in `serde_json::Map`'s order).
    Value(&'a Value),
}

/// A `projection/action` from a client.
pub(crate) struct Action<'a> {
    pub(crate) action: Typed<'a>,
    pub(crate) optimistic_id: Option<&'a str>,
}

pub(crate) fn projection_action<'a>(message: &'a Message, domain: &str) -> Incoming<Action<'a>> {
    let Some(payload) = in_domain(message, PROJECTION_ACTION, domain) else {
        return Incoming::NotOurs;
    };
    let optimistic_id = match payload.get("optimisticId") {
        None => None,
        Some(Value::String(id)) => Some(id.as_str()),
        // The reference drops the whole message then, too (its type check fails).
        Some(_) => return Incoming::Malformed("the optimisticId is not a string"),
    };
    match typed(payload.get("action")) {
        Some(action) => Incoming::Ours(Action { action, optimistic_id }),
        None => Incoming::Malformed("the action is not an object with a string type"),
    }
}

/// The payload of `atom/set`.
#[derive(Serialize)]
pub(crate) struct AtomSetOut<'a> {
    pub(crate) key: &'a str,
    pub(crate) atom: &'a Atom,
}

/// The payload of `stream/append`.
#[derive(Serialize)]
pub(crate) struct StreamAppendOut<'a> {
    pub(crate) domain: &'a str,
    pub(crate) dispatcher: &'a str,
    pub(crate) event: Echo<'a>,
}

/// The payload of `projection/set`.
#[derive(Serialize)]
pub(crate) struct ProjectionSetOut<'a> {
    pub(crate) domain: &'a str,
    pub(crate) projection: &'a Value,
}

/// The payload of `projection/delta`. Without an id the key is left out: the reference client drops a delta whose
/// `optimisticId` is `null` (its type check wants a string or nothing).
#[derive(Serialize)]
pub(crate) struct ProjectionDeltaOut<'a> {
    pub(crate) domain: &'a str,
    pub(crate) delta: &'a Value,
    #[serde(rename = "optimisticId", skip_serializing_if = "Option::is_none")]
    pub(crate) optimistic_id: Option<&'a str>,
}

/// The payload of `projection/invalidate`.
#[derive(Serialize)]
pub(crate) struct ProjectionInvalidateOut<'a> {
    pub(crate) domain: &'a str,
    #[serde(rename = "optimisticId")]
    pub(crate) optimistic_id: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(kind: &str, payload: Value) -> Message {
        Message::with_payload(kind, payload)
    }

    #[test]
    fn an_action_of_another_domain_is_not_ours_and_a_bad_one_of_ours_is_malformed() {
        let ok = message(
            PROJECTION_ACTION,
            json!({"domain": "d", "action": {"type": "t"}, "optimisticId": "opt0-1"}),
        );
        assert!(matches!(
            projection_action(&ok, "d"),
            Incoming::Ours(Action {
                optimistic_id: Some("opt0-1"),
                ..
            })
        ));
        assert!(matches!(projection_action(&ok, "e"), Incoming::NotOurs));
        let null_id = message(
            PROJECTION_ACTION,
            json!({"domain": "d", "action": {"type": "t"}, "optimisticId": null}),
        );
        assert!(matches!(projection_action(&null_id, "d"), Incoming::Malformed(_)));
        let untyped = message(PROJECTION_ACTION, json!({"domain": "d", "action": {"type": 1}}));
        assert!(matches!(projection_action(&untyped, "d"), Incoming::Malformed(_)));
        let no_domain = message(PROJECTION_ACTION, json!({"action": {"type": "t"}}));
        assert!(matches!(projection_action(&no_domain, "d"), Incoming::NotOurs));
    }

    #[test]
    fn an_append_needs_an_event_with_a_string_type_and_any_dispatcher_claim_will_do() {
        let ok = message(
            STREAM_APPEND,
            json!({"domain": "d", "dispatcher": "someone else", "event": {"type": "t", "payload": 1}}),
        );
        assert!(matches!(
            stream_append(&ok, "d"),
            Incoming::Ours(Typed { kind: "t", .. })
        ));
        let bad = message(STREAM_APPEND, json!({"domain": "d", "dispatcher": "x", "event": "t"}));
        assert!(matches!(stream_append(&bad, "d"), Incoming::Malformed(_)));
        // The reference's isStreamAppendMessage wants a string dispatcher, whose value the server then ignores.
        for dispatcher in [None, Some(json!(null)), Some(json!(7))] {
            let mut payload = json!({"domain": "d", "event": {"type": "t"}});
            if let Some(dispatcher) = dispatcher {
                payload["dispatcher"] = dispatcher;
            }
            let unclaimed = message(STREAM_APPEND, payload);
            assert!(matches!(stream_append(&unclaimed, "d"), Incoming::Malformed(_)));
        }
    }

    #[test]
    fn an_atom_is_a_string_number_or_boolean() {
        for atom in [json!("a"), json!(1.5), json!(false)] {
            let set = message(ATOM_SET, json!({"key": "k", "atom": atom}));
            assert!(matches!(atom_set(&set), Incoming::Ours(_)), "{atom}");
        }
        for atom in [json!(null), json!([1]), json!({})] {
            let set = message(ATOM_SET, json!({"key": "k", "atom": atom}));
            assert!(matches!(atom_set(&set), Incoming::Malformed(_)), "{atom}");
        }
        assert!(matches!(atom_set(&message("atom/get", json!({}))), Incoming::NotOurs));
    }

    #[test]
    fn a_delta_without_an_id_has_no_optimistic_id_key() {
        let delta = json!([1, 2]);
        let out = ProjectionDeltaOut {
            domain: "d",
            delta: &delta,
            optimistic_id: None,
        };
        assert_eq!(
            serde_json::to_value(&out).unwrap(),
            json!({"domain": "d", "delta": [1, 2]})
        );
    }
}
