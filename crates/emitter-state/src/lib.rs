//! Krmx State for emitter: shared state on top of a Krmx server, wire-compatible with the reference TypeScript
//! packages (`@krmx/state`).
//!
//! For now this crate holds the groundwork that the Projection model needs: [`delta`], which computes and applies
//! JSON deltas in the format of [jsondiffpatch](https://github.com/benjamine/jsondiffpatch) 0.5.0. The reference
//! server sends such a delta in every `projection/delta` message, and the reference client applies it with
//! `jsondiffpatch.patch`, so the deltas [`delta::diff`] makes are ones that function applies.
//!
//! ```
//! use emitter_state::delta;
//! use serde_json::json;
//!
//! let before = json!({ "turn": "alice", "log": ["alice drew a card", "bob drew a card"] });
//! let after = json!({ "turn": "bob", "log": ["alice drew a card", "bob drew a card", "alice played a card"] });
//! let change = delta::diff(&before, &after).unwrap();
//! assert_eq!(change, json!({ "turn": ["alice", "bob"], "log": { "_t": "a", "2": ["alice played a card"] } }));
//!
//! let mut patched = before.clone();
//! delta::patch(&mut patched, &change).unwrap();
//! assert_eq!(patched, after);
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod delta;
