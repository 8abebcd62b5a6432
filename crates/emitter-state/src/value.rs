//! The value an atom holds: a string, a number or a boolean.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

/// The value of an atom: a string, a number or a boolean, as in the reference.
///
/// ```
/// use emitter_state::Atom;
/// use serde_json::json;
///
/// assert_eq!(Atom::from("blue"), Atom::String("blue".into()));
/// assert_eq!(Atom::from_value(&json!(3)), Some(Atom::from(3)));
/// assert_eq!(Atom::from_value(&json!(null)), None);
/// assert_eq!(Atom::number(f64::NAN), None); // not a JSON number
/// assert_eq!(serde_json::to_value(Atom::from(true)).unwrap(), json!(true));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Atom {
    /// A boolean.
    Bool(bool),
    /// A number, kept exactly as it was sent.
    Number(Number),
    /// A string.
    String(String),
}

impl Atom {
    /// The atom `value` is, if it is a string, a number or a boolean.
    pub fn from_value(value: &Value) -> Option<Atom> {
        match value {
            Value::Bool(b) => Some(Atom::Bool(*b)),
            Value::Number(n) => Some(Atom::Number(n.clone())),
            Value::String(s) => Some(Atom::String(s.clone())),
            _ => None,
        }
    }

    /// A number atom; `None` for NaN and the infinities, which JSON cannot carry.
    pub fn number(value: f64) -> Option<Atom> {
        Number::from_f64(value).map(Atom::Number)
    }

    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Atom::String(s) => Some(s),
            _ => None,
        }
    }

    /// The number as an `f64`, if it is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Atom::Number(n) => n.as_f64(),
            _ => None,
        }
    }

    /// The boolean, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Atom::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Atom::Bool(b) => write!(f, "{b}"),
            Atom::Number(n) => write!(f, "{n}"),
            Atom::String(s) => f.write_str(s),
        }
    }
}

impl From<&str> for Atom {
    fn from(value: &str) -> Self {
        Atom::String(value.to_owned())
    }
}

impl From<String> for Atom {
    fn from(value: String) -> Self {
        Atom::String(value)
    }
}

impl From<bool> for Atom {
    fn from(value: bool) -> Self {
        Atom::Bool(value)
    }
}

impl From<i64> for Atom {
    fn from(value: i64) -> Self {
        Atom::Number(value.into())
    }
}

impl From<i32> for Atom {
    fn from(value: i32) -> Self {
        Atom::Number(value.into())
    }
}

impl From<u64> for Atom {
    fn from(value: u64) -> Self {
        Atom::Number(value.into())
    }
}
