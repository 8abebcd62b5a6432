//! Typed handlers, by type: the events of a stream and the actions of a projection.
//!
//! A handler is registered for one `type` with the Rust type of its payload. The payload arrives as JSON and is read
//! into that type with serde before the handler runs, the way the reference checks it against a zod schema; one that
//! does not fit never reaches the handler.

use std::collections::HashMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Error;

/// What a handler returns: `()` for a handler that always applies, or `Result<(), E>` for one that may refuse, with
/// any `E` that displays (a `&str`, a `String`, your own error type).
///
/// A handler that returns `Err` must leave the state as it found it: check first, then change. The models rely on it
/// (see [`StreamModel::when`](crate::StreamModel::when) and [`ProjectionModel::when`](crate::ProjectionModel::when)).
///
/// ```
/// use emitter_state::Outcome;
///
/// assert_eq!(().into_result(), Ok(()));
/// assert_eq!(Err::<(), _>("not your turn").into_result(), Err("not your turn".to_owned()));
/// ```
pub trait Outcome {
    /// `Ok(())` when the handler applied the change; the reason as text when it refused.
    fn into_result(self) -> Result<(), String>;
}

impl Outcome for () {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: fmt::Display> Outcome for Result<(), E> {
    fn into_result(self) -> Result<(), String> {
        self.map_err(|error| error.to_string())
    }
}

/// A handler with its payload type erased: it reads the payload and applies it.
type Erased<S> = Box<dyn Fn(&mut S, &str, &Value) -> Result<(), Failure> + Send + Sync>;

/// Why an erased handler did not apply: before it ran (the payload), or when it ran.
enum Failure {
    Invalid(String),
    Rejected(String),
}

/// The handlers of one model, by type.
pub(crate) struct Handlers<S> {
    by_kind: HashMap<String, Erased<S>>,
}

impl<S> Default for Handlers<S> {
    fn default() -> Self {
        Handlers {
            by_kind: HashMap::new(),
        }
    }
}

impl<S> Handlers<S> {
    /// Adds the handler of `kind`.
    ///
    /// # Panics
    ///
    /// If `kind` has a handler already: that is a mistake in the model's definition, found when it is built.
    pub(crate) fn add<T, O, F>(&mut self, kind: &str, handler: F)
    where
        T: DeserializeOwned,
        O: Outcome,
        F: Fn(&mut S, &str, T) -> O + Send + Sync + 'static,
    {
        let erased: Erased<S> = Box::new(move |state, dispatcher, payload| {
            let payload = T::deserialize(payload).map_err(|error| Failure::Invalid(error.to_string()))?;
            handler(state, dispatcher, payload)
                .into_result()
                .map_err(Failure::Rejected)
        });
        assert!(
            self.by_kind.insert(kind.to_owned(), erased).is_none(),
            "type {kind} already has a handler"
        );
    }

    /// Whether `kind` has a handler.
    pub(crate) fn has(&self, kind: &str) -> bool {
        self.by_kind.contains_key(kind)
    }

    /// Applies the payload (JSON `null` when there is none) of a `kind` to `state` on behalf of `dispatcher`. A
    /// panicking handler is caught and reported as [`Error::Panicked`]; the state may then be half changed.
    pub(crate) fn apply(
        &self,
        state: &mut S,
        dispatcher: &str,
        kind: &str,
        payload: Option<&Value>,
    ) -> Result<(), Error> {
        let Some(handler) = self.by_kind.get(kind) else {
            return Err(Error::Unknown { kind: kind.to_owned() });
        };
        let payload = payload.unwrap_or(&Value::Null);
        match catch_unwind(AssertUnwindSafe(|| handler(state, dispatcher, payload))) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Failure::Invalid(reason))) => Err(Error::Invalid {
                kind: kind.to_owned(),
                reason,
            }),
            Ok(Err(Failure::Rejected(reason))) => Err(Error::Rejected {
                kind: kind.to_owned(),
                reason,
            }),
            Err(_) => Err(Error::Panicked { kind: kind.to_owned() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(serde::Deserialize)]
    struct Add {
        by: i64,
    }

    fn counter() -> Handlers<i64> {
        let mut handlers = Handlers::default();
        handlers.add("add", |count: &mut i64, _: &str, Add { by }| *count += by);
        handlers.add("reset", |count: &mut i64, who: &str, (): ()| {
            if who != "admin" {
                return Err("only the admin resets");
            }
            *count = 0;
            Ok(())
        });
        handlers.add("boom", |_: &mut i64, _: &str, (): ()| -> () { panic!("boom") });
        handlers
    }

    #[test]
    fn reads_the_payload_then_applies_or_says_why_not() {
        let handlers = counter();
        let mut count = 0;
        assert_eq!(handlers.apply(&mut count, "a", "add", Some(&json!({"by": 3}))), Ok(()));
        assert_eq!(count, 3);
        assert!(matches!(
            handlers.apply(&mut count, "a", "add", Some(&json!({"by": "3"}))),
            Err(Error::Invalid { kind, .. }) if kind == "add"
        ));
        assert!(matches!(
            handlers.apply(&mut count, "a", "add", None),
            Err(Error::Invalid { .. })
        ));
        assert_eq!(
            handlers.apply(&mut count, "a", "reset", None),
            Err(Error::Rejected {
                kind: "reset".into(),
                reason: "only the admin resets".into()
            })
        );
        assert_eq!(handlers.apply(&mut count, "admin", "reset", None), Ok(()));
        assert_eq!(count, 0);
        assert_eq!(
            handlers.apply(&mut count, "a", "nope", None),
            Err(Error::Unknown { kind: "nope".into() })
        );
        assert_eq!(
            handlers.apply(&mut count, "a", "boom", None),
            Err(Error::Panicked { kind: "boom".into() })
        );
    }

    #[test]
    #[should_panic(expected = "type add already has a handler")]
    fn a_type_has_one_handler() {
        let mut handlers = counter();
        handlers.add("add", |_: &mut i64, _: &str, (): ()| {});
    }
}
