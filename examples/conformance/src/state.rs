//! The state conformance app: Krmx State's three models on the main endpoint, with a fixed, documented behaviour (the
//! README's *State* section) so that any Krmx State client suite (`@krmx/state`'s models, emitter-state's) can drive
//! it over the wire.
//!
//! It uses emitter-state's public model API only, so that the same models run cluster-wide once they are registered
//! with a journal. It serves beside the conformance app's custom messages: each ignores the other's.
//!
//! - **Atoms**: strict key prefixes, never cleared, up to [`MAX_ATOMS`] keys.
//! - **Stream [`COUNTER`]**: `{count: 0}`; event `increment` with an integer `by` in 1..=100 adds it.
//! - **Projection [`TALLY`]**: `{total: 0, by: {}}`; action `add` with an integer `n` in 1..=100 adds it to the
//!   total and to the sender's part; user `u` sees `{total, mine: by[u] or 0, players: number of keys of by}`.
//!
//! Registered in this order, so that a linking user's catch-up (the models' `link` listeners, run in the order they
//! were registered) is the atoms, then the counter's history, then the tally's `projection/set`, last.

use std::collections::HashMap;
use std::sync::Arc;

use emitter_core::{Server, ServerBuilder};
use emitter_state::journal::{Journal, JournalError};
use emitter_state::{AtomModel, Atoms, Projection, ProjectionModel, Stream, StreamModel};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The stream's domain.
pub const COUNTER: &str = "counter";
/// The projection's domain.
pub const TALLY: &str = "tally";
/// How many atom keys there may be; a set of a new key beyond it is dropped.
pub const MAX_ATOMS: usize = 20_000;
/// How many events the counter's history holds; an event beyond it is refused (never is the history cut short).
pub const MAX_EVENTS: usize = 100_000;
/// How many bytes of events (serialized) the counter's history holds; an event beyond it is refused.
pub const MAX_HISTORY_BYTES: usize = 32 << 20;
/// The main endpoint's `outbound_queue`: a linking user's catch-up (one frame per atom and per event, and the
/// projection) is queued at once, and must fit, with room for what goes on meanwhile.
pub const OUTBOUND_QUEUE: usize = 2 * (MAX_ATOMS + MAX_EVENTS);
/// The main endpoint's `outbound_budget` in bytes: a full history's catch-up (each frame counted with 64 bytes of
/// overhead) fits it, with the atoms' beside it.
pub const OUTBOUND_BUDGET: usize = 128 << 20;
/// The least and the most a `by` or an `n` may be.
pub const AMOUNT: std::ops::RangeInclusive<u64> = 1..=100;

/// The counter's state.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// The sum of the accepted increments' `by`.
    pub count: u64,
}

/// The tally's state: held by the server only; each user sees a [`TallyView`]. Serde carries it through a journal.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// The sum of the accepted adds' `n`.
    pub total: u64,
    /// The sum per sender. A Rust map has no prototype: `constructor` and `__proto__` are usernames like any other.
    pub by: HashMap<String, u64>,
}

/// What user `u` sees of the tally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TallyView {
    /// The tally's total.
    pub total: u64,
    /// `by[u]`, or 0.
    pub mine: u64,
    /// How many users added anything.
    pub players: usize,
}

impl Tally {
    /// What `username` sees.
    pub fn view(&self, username: &str) -> TallyView {
        TallyView {
            total: self.total,
            mine: self.by.get(username).copied().unwrap_or(0),
            players: self.by.len(),
        }
    }
}

/// The state app's models, registered on a server; their handles read the state from the server side.
#[derive(Clone)]
pub struct StateApp {
    /// The atoms.
    pub atoms: Atoms,
    /// The stream [`COUNTER`].
    pub counter: Stream<Counter>,
    /// The projection [`TALLY`].
    pub tally: Projection<Tally>,
}

/// The main endpoint's settings for the state app: queues that a full catch-up fits in.
pub fn settings(builder: ServerBuilder) -> ServerBuilder {
    builder.outbound_queue(OUTBOUND_QUEUE).outbound_budget(OUTBOUND_BUDGET)
}

/// The atoms' domain in a journal.
pub const ATOMS: &str = "atoms";

/// Registers the state app's models on `server`, in the order of the catch-up: atoms, counter, tally. With a
/// `journal` (a cluster's, or a store's on one process) the models are journaled: one owner decides each change
/// and every node serves its own users from the committed changes; without one they live in this process.
///
/// Fails only when the journal does not take a domain (attached already).
pub fn register(server: &Server, journal: Option<Arc<dyn Journal>>) -> Result<StateApp, JournalError> {
    let atoms = AtomModel::new()
        .strict_key_prefixes(true)
        .clear_when_empty(false)
        .max_atoms(MAX_ATOMS);
    let counter = StreamModel::new(Counter::default())
        .when(
            "increment",
            |counter: &mut Counter, _: &str, payload: Map<String, Value>| {
                let by = amount(&payload, "by")?;
                counter.count += by;
                Ok::<(), String>(())
            },
        )
        .max_events(MAX_EVENTS)
        .max_history_bytes(MAX_HISTORY_BYTES);
    let tally = ProjectionModel::new(Tally::default(), |tally: &Tally, username: &str| tally.view(username)).when(
        "add",
        |tally: &mut Tally, dispatcher: &str, payload: Map<String, Value>| {
            let n = amount(&payload, "n")?;
            tally.total += n;
            *tally.by.entry(dispatcher.to_owned()).or_default() += n;
            Ok::<(), String>(())
        },
    );
    Ok(match journal {
        None => StateApp {
            atoms: atoms.register(server),
            counter: counter.register(server, COUNTER),
            tally: tally.register(server, TALLY),
        },
        Some(journal) => StateApp {
            atoms: atoms.register_journaled(server, ATOMS, journal.clone())?,
            counter: counter.register_journaled(server, COUNTER, journal.clone())?,
            tally: tally.register_journaled(server, TALLY, journal)?,
        },
    })
}

/// The payload's `member`, when it is an integer in [`AMOUNT`]. A JSON number with a zero fraction (`3.0`, `1e2`) is
/// an integer, as it is to JavaScript (and to a zod `z.number().int()`); the payload's other members are ignored. The
/// payload is a `Map`, not a struct, since serde would read a struct from an array too (`[5]`).
fn amount(payload: &Map<String, Value>, member: &str) -> Result<u64, String> {
    let number = payload.get(member).and_then(Value::as_f64);
    match number {
        Some(n) if n.fract() == 0.0 && n >= *AMOUNT.start() as f64 && n <= *AMOUNT.end() as f64 => Ok(n as u64),
        _ => Err(format!("{member} must be an integer from 1 to 100")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn an_amount_is_an_integer_from_1_to_100() {
        for ok in [json!(1), json!(100), json!(3.0), json!(1e2)] {
            assert!(amount(&payload(json!({ "by": ok })), "by").is_ok(), "{ok}");
        }
        for bad in [
            json!(0),
            json!(101),
            json!(-1),
            json!(2.5),
            json!("3"),
            json!(null),
            json!(true),
        ] {
            assert!(amount(&payload(json!({ "by": bad })), "by").is_err(), "{bad}");
        }
        assert!(amount(&payload(json!({ "n": 3 })), "by").is_err());
        assert_eq!(amount(&payload(json!({ "by": 7, "other": [1] })), "by"), Ok(7));
    }

    #[test]
    fn a_user_sees_the_total_their_part_and_how_many_played() {
        let tally = Tally {
            total: 9,
            by: HashMap::from([("constructor".to_owned(), 4), ("bob".to_owned(), 5)]),
        };
        let view = serde_json::to_value(tally.view("constructor")).unwrap();
        assert_eq!(view, json!({ "total": 9, "mine": 4, "players": 2 }));
        let view = serde_json::to_value(tally.view("__proto__")).unwrap();
        assert_eq!(view, json!({ "total": 9, "mine": 0, "players": 2 }));
    }
}
