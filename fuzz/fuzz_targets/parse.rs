//! Incoming frame parsing never panics, and what it accepts is classified consistently.
//!
//! The first byte picks a nesting bound (1 to 64); the rest is the frame. It goes through `parse_bounded` (what the
//! server runs), `parse`, `ClientMessage::from` and `LinkRequest::from_payload` (also on JSON values that are not
//! link messages at all). The bound only ever refuses more: what `parse_bounded` accepts, `parse` accepts the same.
//! A message that parses is a JSON object with a string `type`, and re-encodes to a frame that parses back to the
//! same message (numbers included: serde_json's `float_roundtrip` is on). The two deviations this target found are
//! regression tests in `crates/emitter-core/tests/fuzz_regressions.rs`.
#![no_main]

use emitter_core::protocol::{parse, parse_bounded, ClientMessage, Frame, LinkRequest, RESERVED_PREFIX};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|input: &[u8]| {
    let Some((&depth, data)) = input.split_first() else {
        return;
    };
    let max_depth = usize::from(depth % 64) + 1;
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        let _ = LinkRequest::from_payload(value.get("payload").cloned());
        let _ = LinkRequest::from_payload(Some(value));
    }
    let bounded = parse_bounded(data, max_depth);
    let unbounded = parse(data);
    if let Ok(message) = &bounded {
        assert_eq!(
            Ok(message),
            unbounded.as_ref(),
            "parse_bounded accepted what parse refuses"
        );
    }
    let Ok(message) = unbounded else {
        return;
    };
    // A message is a JSON object with a string `type`. (Fields the message does not read are skipped unchecked:
    // invalid UTF-8 or a lone surrogate there is no error, as JavaScript's lenient decoding would make none. Such a
    // frame is no `Value`; the check is skipped.)
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        assert!(value.is_object() && value["type"].is_string(), "not an object with a string type: {value}");
    }
    // Relayed messages (`broadcast(message)`) are re-encoded: that must not change them.
    let frame = Frame::from(&message);
    assert!(std::str::from_utf8(frame.bytes()).is_ok());
    let again = parse(frame.bytes()).expect("a re-encoded message parses");
    assert_eq!(again, message, "re-encoding changed the message: {}", frame.as_str());

    let reserved = message.kind.starts_with(RESERVED_PREFIX);
    assert_eq!(message.is_reserved(), reserved);
    match ClientMessage::from(message.clone()) {
        ClientMessage::Link(request) => {
            assert_eq!(message.kind, "krmx/link");
            assert_eq!(request, LinkRequest::from_payload(message.payload.clone()));
            if let Some(request) = request {
                let payload = message.payload.as_ref().expect("a link request has a payload");
                assert_eq!(payload["username"].as_str(), Some(request.username.as_str()));
                assert_eq!(payload["version"].as_str(), Some(request.version.as_str()));
                assert_eq!(payload.get("auth").and_then(Value::as_str), request.auth.as_deref());
            }
        }
        ClientMessage::Unlink => assert_eq!(message.kind, "krmx/unlink"),
        ClientMessage::Leave => assert_eq!(message.kind, "krmx/leave"),
        ClientMessage::UnknownReserved(inner) => {
            assert!(reserved);
            assert!(!["krmx/link", "krmx/unlink", "krmx/leave"].contains(&inner.kind.as_str()));
            assert_eq!(inner, message);
        }
        ClientMessage::Custom(inner) => {
            assert!(!reserved);
            assert_eq!(inner, message);
        }
    }
});
