//! JSON deltas in the format of [jsondiffpatch](https://github.com/benjamine/jsondiffpatch) 0.5.0.
//!
//! [`diff`] computes what changed between two JSON values, and [`patch`] applies such a change. The reference
//! Projection model (`@krmx/state`) sends its clients `jsondiffpatch.diff(before, after)` and they apply it with
//! `jsondiffpatch.patch`, so a delta made here must be one that function applies; the interop test in
//! `tests/interop/test/delta.test.js` checks that against the real package from npm.
//!
//! # The format
//!
//! A delta describes the change of one value:
//!
//! | change                        | delta                                  |
//! |-------------------------------|----------------------------------------|
//! | added (an object member, an array item) | `[new]`                      |
//! | replaced                      | `[old, new]`                           |
//! | deleted                       | `[old, 0, 0]`                          |
//! | members of an object changed  | `{ "<key>": <delta>, … }`              |
//! | items of an array changed     | `{ "_t": "a", "<i>": <delta>, "_<i>": [old, 0, 0], … }` |
//!
//! In an array delta, `_<i>` keys (deletions, and moves `["", <to>, 3]`) count positions in the *old* array, and
//! plain `<i>` keys (insertions `[new]`, and changes of an item) count positions in the *new* array. Patching
//! removes the deleted and moved items first (highest index first), then inserts the new and moved items (lowest
//! index first), then applies the changes to items. jsondiffpatch also has text deltas (`[unidiff, 0, 2]`) for long
//! strings; [`diff`] never makes them, and [`patch`] refuses them ([`PatchError::TextDiff`]).
//!
//! # Differences from jsondiffpatch's own `diff`
//!
//! The deltas made here are not byte-for-byte what `jsondiffpatch.diff` would make, only ones that
//! `jsondiffpatch.patch` turns into the same result:
//!
//! - Strings are always replaced whole (`[old, new]`), never text-diffed.
//! - Arrays are diffed by their longest common subsequence of equal items, after trimming the common head and tail;
//!   the items left over between two common ones are paired up in order and diffed as changes, and the rest are
//!   deletions or insertions. No moves are made.
//! - An object or array whose delta is nothing but additions, deletions and replacements is replaced whole where
//!   that is shorter, as it is for a few small items: each entry costs a key and brackets on top of its value.
//! - An object whose delta would hold a `_t` or `__proto__` member is replaced whole (`[old, new]`) instead:
//!   `jsondiffpatch.patch` would take an object delta with a `_t` member for an array delta, and would set the
//!   prototype of the object instead of adding a `__proto__` member.
//! - Numbers are compared by value, as JavaScript sees them: `1` and `1.0` are the same number ([`equal`]).

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};

use serde_json::{Map, Number, Value};

/// `jsondiffpatch`'s marker in the third slot of a deletion: `[old, 0, 0]`.
const DELETED: u64 = 0;
/// `jsondiffpatch`'s marker in the third slot of a text delta: `[unidiff, 0, 2]`.
const TEXT_DIFF: u64 = 2;
/// `jsondiffpatch`'s marker in the third slot of an array move: `[old or "", to, 3]`.
const MOVED: u64 = 3;

/// Past this many cells (old items × new items, after trimming the common head and tail), arrays are not searched
/// for a longest common subsequence: the table would cost too much memory and time for one delta. Their items are
/// then paired up by position instead, which still makes a correct delta, only a larger one when items were
/// inserted or removed in the middle.
const LCS_MAX_CELLS: usize = 1 << 20;

/// The delta that turns `left` into `right`, in jsondiffpatch 0.5.0's format; `None` when they are [`equal`].
///
/// The delta holds the old values it replaces or deletes, as the format asks. Where an object or array changed only
/// by additions, deletions and replacements, and listing those would take more bytes than replacing it outright
/// (`[old, new]`), it is replaced outright; so a delta is never much larger than `[left, right]`.
///
/// ```
/// use emitter_state::delta::diff;
/// use serde_json::json;
///
/// let before = json!({ "cards": ["ace of spades", "two of hearts", "six of clubs"], "score": 1, "old": true });
/// let after = json!({ "cards": ["ace of spades", "six of clubs", "jack of diamonds"], "score": 2, "new": null });
/// assert_eq!(
///     diff(&before, &after),
///     Some(json!({
///         // `_1` is an index in the old array, `2` one in the new array.
///         "cards": { "_t": "a", "_1": ["two of hearts", 0, 0], "2": ["jack of diamonds"] },
///         "score": [1, 2],
///         "old": [true, 0, 0],
///         "new": [null],
///     })),
/// );
/// assert_eq!(diff(&before, &before), None);
/// assert_eq!(diff(&json!(1), &json!(1.0)), None); // the same number to JavaScript
/// ```
pub fn diff(left: &Value, right: &Value) -> Option<Value> {
    match (left, right) {
        (Value::Object(l), Value::Object(r)) => object_delta(l, r, left, right),
        (Value::Array(l), Value::Array(r)) => array_delta(l, r, left, right),
        _ if equal(left, right) => None,
        _ => Some(replaced(left, right)),
    }
}

/// Whether `a` and `b` are the same JSON value, the way [`diff`] sees it: numbers are compared by value (`1`, `1.0`
/// and `-0` against `0` are the same; two integers are compared exactly), objects regardless of member order.
///
/// ```
/// use emitter_state::delta::equal;
/// use serde_json::json;
///
/// assert!(equal(&json!({ "a": [1, 2.0] }), &json!({ "a": [1.0, 2] })));
/// assert!(!equal(&json!([1, 2]), &json!([2, 1])));
/// ```
pub fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => numbers_equal(x, y),
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| equal(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(key, x)| y.get(key).is_some_and(|y| equal(x, y)))
        }
        _ => false,
    }
}

fn numbers_equal(x: &Number, y: &Number) -> bool {
    // Two integers compare exactly; as soon as one is a float, both compare as the f64 JavaScript would read.
    if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
        x == y
    } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
        x == y
    } else {
        x.as_f64() == y.as_f64()
    }
}

/// `[old, new]`.
fn replaced(left: &Value, right: &Value) -> Value {
    Value::Array(vec![left.clone(), right.clone()])
}

/// `[new]`.
fn added(right: &Value) -> Value {
    Value::Array(vec![right.clone()])
}

/// `[old, 0, 0]`.
fn deleted(left: &Value) -> Value {
    Value::Array(vec![left.clone(), DELETED.into(), DELETED.into()])
}

fn object_delta(l: &Map<String, Value>, r: &Map<String, Value>, left: &Value, right: &Value) -> Option<Value> {
    let mut delta = Map::new();
    for (key, old) in l {
        match r.get(key) {
            Some(new) => {
                if let Some(inner) = diff(old, new) {
                    delta.insert(key.clone(), inner);
                }
            }
            None => {
                delta.insert(key.clone(), deleted(old));
            }
        }
    }
    for (key, new) in r {
        if !l.contains_key(key) {
            delta.insert(key.clone(), added(new));
        }
    }
    if delta.is_empty() {
        None
    } else if delta.contains_key("_t") || delta.contains_key("__proto__") {
        // jsondiffpatch.patch would misread these members (see the module docs); replacing the object is always safe.
        Some(replaced(left, right))
    } else {
        Some(smaller(Value::Object(delta), left, right))
    }
}

/// `delta`, or replacing `left` with `right` outright where that is shorter.
///
/// Only a delta made of nothing but additions, deletions and replacements is measured: each of those entries costs
/// an index or key and some brackets on top of the values, which for many small items adds up to more than the
/// replacement. A delta with nested deltas already saves where it matters, and measuring it would cost time at every
/// level of a deep value.
fn smaller(delta: Value, left: &Value, right: &Value) -> Value {
    let Value::Object(entries) = &delta else {
        return delta;
    };
    if entries.iter().any(|(key, entry)| key != "_t" && !entry.is_array()) {
        return delta;
    }
    // `[left,right]`: the brackets and the comma.
    if json_len(left) + json_len(right) + 3 < json_len(&delta) {
        replaced(left, right)
    } else {
        delta
    }
}

/// The length of `value` serialized compactly, without building the string (a stream's history bound counts it too).
pub(crate) fn json_len(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a Value to a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

fn array_delta(l: &[Value], r: &[Value], left: &Value, right: &Value) -> Option<Value> {
    let head = l.iter().zip(r).take_while(|(x, y)| equal(x, y)).count();
    let tail = l[head..]
        .iter()
        .rev()
        .zip(r[head..].iter().rev())
        .take_while(|(x, y)| equal(x, y))
        .count();
    let old = &l[head..l.len() - tail];
    let new = &r[head..r.len() - tail];
    if old.is_empty() && new.is_empty() {
        return None;
    }

    let mut delta = Map::new();
    delta.insert("_t".into(), "a".into());
    // Walk the gaps between the common items (and the one after the last): the items of a gap are paired up in
    // order and diffed, and what is left of the longer side is deleted or inserted. Common and paired items keep
    // their order on both sides, so after the deletions and insertions each paired old item sits at its new index,
    // which is where jsondiffpatch.patch applies the change to it.
    let mut from = (0, 0);
    for (i, j) in common_subsequence(old, new).into_iter().chain([(old.len(), new.len())]) {
        let gap_old = &old[from.0..i];
        let gap_new = &new[from.1..j];
        let paired = gap_old.len().min(gap_new.len());
        for k in 0..paired {
            if let Some(inner) = diff(&gap_old[k], &gap_new[k]) {
                delta.insert((head + from.1 + k).to_string(), inner);
            }
        }
        for (k, item) in gap_old.iter().enumerate().skip(paired) {
            delta.insert(format!("_{}", head + from.0 + k), deleted(item));
        }
        for (k, item) in gap_new.iter().enumerate().skip(paired) {
            delta.insert((head + from.1 + k).to_string(), added(item));
        }
        from = (i + 1, j + 1);
    }
    // Some item differs once the head and tail are trimmed, so there is an entry besides `_t`; an array delta with
    // none would still be wrong to send, hence the check.
    (delta.len() > 1).then(|| smaller(Value::Object(delta), left, right))
}

/// The index pairs `(i, j)`, increasing in both, of a longest common subsequence of equal items of `old` and `new`;
/// none when the arrays are too large to search ([`LCS_MAX_CELLS`]).
fn common_subsequence(old: &[Value], new: &[Value]) -> Vec<(usize, usize)> {
    let (n, m) = (old.len(), new.len());
    if n == 0 || m == 0 || n.saturating_mul(m) > LCS_MAX_CELLS {
        return Vec::new();
    }
    // Hashing each item once keeps the n × m comparisons cheap: `equal` only runs where the hashes agree.
    let old_hashes: Vec<u64> = old.iter().map(value_hash).collect();
    let new_hashes: Vec<u64> = new.iter().map(value_hash).collect();
    let same = |i: usize, j: usize| old_hashes[i] == new_hashes[j] && equal(&old[i], &new[j]);

    // lengths[i * (m + 1) + j]: the length of a longest common subsequence of old[i..] and new[j..].
    let width = m + 1;
    let mut lengths = vec![0u32; (n + 1) * width];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lengths[i * width + j] = if same(i, j) {
                lengths[(i + 1) * width + j + 1] + 1
            } else {
                lengths[(i + 1) * width + j].max(lengths[i * width + j + 1])
            };
        }
    }
    let mut pairs = Vec::with_capacity(lengths[0] as usize);
    let (mut i, mut j) = (0, 0);
    while i < n && j < m {
        if same(i, j) {
            pairs.push((i, j));
            i += 1;
            j += 1;
        } else if lengths[(i + 1) * width + j] >= lengths[i * width + j + 1] {
            i += 1;
        } else {
            j += 1;
        }
    }
    pairs
}

/// A hash consistent with [`equal`]: equal values hash the same.
fn value_hash(value: &Value) -> u64 {
    let mut hasher = DefaultHasher::new();
    hash_into(value, &mut hasher);
    hasher.finish()
}

fn hash_into(value: &Value, hasher: &mut DefaultHasher) {
    match value {
        Value::Null => 0u8.hash(hasher),
        Value::Bool(b) => (1u8, b).hash(hasher),
        Value::Number(n) => {
            // Every number hashes as its f64, so that equal numbers of any representation agree; adding 0.0 turns
            // -0.0 into 0.0. serde_json numbers are always finite, so there is no NaN to worry about.
            let f = n.as_f64().unwrap_or(0.0) + 0.0;
            (2u8, f.to_bits()).hash(hasher);
        }
        Value::String(s) => (3u8, s).hash(hasher),
        Value::Array(items) => {
            (4u8, items.len()).hash(hasher);
            for item in items {
                hash_into(item, hasher);
            }
        }
        Value::Object(members) => {
            // Summing the members' own hashes makes the result independent of member order.
            let sum = members.iter().fold(0u64, |sum, (key, member)| {
                let mut h = DefaultHasher::new();
                key.hash(&mut h);
                hash_into(member, &mut h);
                sum.wrapping_add(h.finish())
            });
            (5u8, members.len(), sum).hash(hasher);
        }
    }
}

/// Why [`patch`] could not apply a delta. `value` may be partly patched by then.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PatchError {
    /// The delta is not in jsondiffpatch's format.
    Malformed {
        /// Where in the value, as a JSON Pointer (`""` is the whole value).
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The delta does not fit the value: a member or item it changes is missing, an index is out of range, an added
    /// member is already there, or it changes an object as an array (or the other way round). The value is not the
    /// one the delta was made from.
    Mismatch {
        /// Where in the value, as a JSON Pointer.
        path: String,
        /// What did not fit.
        reason: &'static str,
    },
    /// A text delta (`[unidiff, 0, 2]`), which jsondiffpatch makes for strings of 60 characters or more; [`diff`]
    /// never makes one, and this patcher does not apply them.
    TextDiff {
        /// Where in the value, as a JSON Pointer.
        path: String,
    },
}

impl PatchError {
    /// Where in the value the delta could not be applied, as a JSON Pointer (`""` is the whole value).
    pub fn path(&self) -> &str {
        match self {
            PatchError::Malformed { path, .. } | PatchError::Mismatch { path, .. } | PatchError::TextDiff { path } => {
                path
            }
        }
    }

    /// Puts `segment` in front of the path, as the error travels up from where it happened.
    fn within(mut self, segment: &str) -> Self {
        let path = match &mut self {
            PatchError::Malformed { path, .. } | PatchError::Mismatch { path, .. } | PatchError::TextDiff { path } => {
                path
            }
        };
        let escaped = segment.replace('~', "~0").replace('/', "~1");
        path.insert_str(0, &format!("/{escaped}"));
        self
    }
}

impl fmt::Display for PatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = |path: &str| {
            if path.is_empty() {
                "the root".to_string()
            } else {
                format!("`{path}`")
            }
        };
        match self {
            PatchError::Malformed { path, reason } => write!(f, "malformed delta at {}: {reason}", at(path)),
            PatchError::Mismatch { path, reason } => {
                write!(f, "delta does not fit the value at {}: {reason}", at(path))
            }
            PatchError::TextDiff { path } => write!(f, "text deltas are not supported (at {})", at(path)),
        }
    }
}

impl std::error::Error for PatchError {}

fn malformed(reason: &'static str) -> PatchError {
    PatchError::Malformed {
        path: String::new(),
        reason,
    }
}

fn mismatch(reason: &'static str) -> PatchError {
    PatchError::Mismatch {
        path: String::new(),
        reason,
    }
}

/// Applies `delta`, in jsondiffpatch 0.5.0's format, to `value`, as `jsondiffpatch.patch` would.
///
/// It is stricter than jsondiffpatch, which writes whatever it is told: a member or item that the delta changes or
/// deletes must be there, a member it adds must not be, and indices must be in range. Old values in the delta are not
/// checked. It applies array moves (`["", to, 3]`), which jsondiffpatch's own `diff` makes, but not text deltas
/// ([`PatchError::TextDiff`]). On error, `value` may be partly patched.
///
/// ```
/// use emitter_state::delta::patch;
/// use serde_json::json;
///
/// let mut hand = json!({ "cards": ["a", "b", "c"], "score": 1 });
/// patch(&mut hand, &json!({ "cards": { "_t": "a", "_0": ["a", 0, 0], "2": ["d"] }, "score": [1, 2] })).unwrap();
/// assert_eq!(hand, json!({ "cards": ["b", "c", "d"], "score": 2 }));
///
/// // A move, as jsondiffpatch.diff(["x", "y", "z"], ["z", "x", "y"]) makes it.
/// let mut letters = json!(["x", "y", "z"]);
/// patch(&mut letters, &json!({ "_t": "a", "_2": ["", 0, 3] })).unwrap();
/// assert_eq!(letters, json!(["z", "x", "y"]));
///
/// let error = patch(&mut hand, &json!({ "missing": [1, 2] })).unwrap_err();
/// assert_eq!(error.path(), "/missing");
/// ```
pub fn patch(value: &mut Value, delta: &Value) -> Result<(), PatchError> {
    match delta {
        Value::Array(leaf) => match Leaf::read(leaf)? {
            Leaf::Added(new) | Leaf::Replaced(new) => {
                *value = new.clone();
                Ok(())
            }
            Leaf::Deleted => Err(malformed(
                "a deletion only applies to an object member or an array item",
            )),
            Leaf::Moved { .. } => Err(malformed(
                "a move only applies under an `_<index>` key of an array delta",
            )),
            Leaf::Text => Err(PatchError::TextDiff { path: String::new() }),
        },
        Value::Object(members) => match members.get("_t") {
            None => patch_object(value, members),
            Some(Value::String(t)) if t == "a" => patch_array(value, members),
            Some(_) => Err(malformed(
                "an array delta has `\"_t\": \"a\"`, and an object delta no `_t`",
            )),
        },
        _ => Err(malformed("a delta is an array or an object")),
    }
}

/// A delta that is an array: what happens to one value.
enum Leaf<'a> {
    /// `[new]`
    Added(&'a Value),
    /// `[old, new]`
    Replaced(&'a Value),
    /// `[old, 0, 0]`
    Deleted,
    /// `[old or "", to, 3]`
    Moved { to: usize },
    /// `[unidiff, 0, 2]`
    Text,
}

impl<'a> Leaf<'a> {
    fn read(leaf: &'a [Value]) -> Result<Self, PatchError> {
        match leaf {
            [new] => Ok(Leaf::Added(new)),
            [_, new] => Ok(Leaf::Replaced(new)),
            [_, second, Value::Number(kind)] => match kind.as_u64() {
                Some(DELETED) => Ok(Leaf::Deleted),
                Some(TEXT_DIFF) => Ok(Leaf::Text),
                Some(MOVED) => match second.as_u64().and_then(|to| usize::try_from(to).ok()) {
                    Some(to) => Ok(Leaf::Moved { to }),
                    None => Err(malformed("a move's target index is not a non-negative integer")),
                },
                _ => Err(malformed("the third item of a three-item delta is 0, 2 or 3")),
            },
            _ => Err(malformed("an array delta has one, two or three items")),
        }
    }
}

fn patch_object(value: &mut Value, delta: &Map<String, Value>) -> Result<(), PatchError> {
    let Value::Object(members) = value else {
        return Err(mismatch("an object delta applies to an object"));
    };
    for (key, inner) in delta {
        let result = match inner {
            Value::Array(leaf) => match Leaf::read(leaf) {
                Ok(Leaf::Added(new)) => {
                    if members.contains_key(key) {
                        Err(mismatch("the member to add is already there"))
                    } else {
                        members.insert(key.clone(), new.clone());
                        Ok(())
                    }
                }
                Ok(Leaf::Replaced(new)) => match members.get_mut(key) {
                    Some(member) => {
                        *member = new.clone();
                        Ok(())
                    }
                    None => Err(mismatch("the member to replace is missing")),
                },
                Ok(Leaf::Deleted) => match members.remove(key) {
                    Some(_) => Ok(()),
                    None => Err(mismatch("the member to delete is missing")),
                },
                Ok(Leaf::Moved { .. }) => Err(malformed(
                    "a move only applies under an `_<index>` key of an array delta",
                )),
                Ok(Leaf::Text) => Err(PatchError::TextDiff { path: String::new() }),
                Err(error) => Err(error),
            },
            Value::Object(_) => match members.get_mut(key) {
                Some(member) => patch(member, inner),
                None => Err(mismatch("the member to change is missing")),
            },
            _ => Err(malformed("a delta is an array or an object")),
        };
        result.map_err(|error| error.within(key))?;
    }
    Ok(())
}

/// Reads an array index the way jsondiffpatch writes one: decimal digits, no sign and no leading zero.
fn index(digits: &str) -> Option<usize> {
    let canonical =
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && (digits == "0" || !digits.starts_with('0'));
    canonical.then(|| digits.parse().ok()).flatten()
}

fn patch_array(value: &mut Value, delta: &Map<String, Value>) -> Result<(), PatchError> {
    let Value::Array(items) = value else {
        return Err(mismatch("an array delta applies to an array"));
    };

    // Sort the delta's entries out first, as jsondiffpatch does: removals (deletions and moves) by old index,
    // insertions and changes by new index.
    let mut removals: Vec<(usize, Option<usize>)> = Vec::new();
    let mut insertions: Vec<(usize, Value)> = Vec::new();
    let mut changes: Vec<(usize, &str, &Value)> = Vec::new();
    for (key, inner) in delta {
        if key == "_t" {
            continue;
        }
        let at = |error: PatchError| error.within(key);
        if let Some(digits) = key.strip_prefix('_') {
            let i = index(digits)
                .ok_or_else(|| at(malformed("an array delta's keys are `_t`, `<index>` or `_<index>`")))?;
            match inner.as_array().map(|leaf| Leaf::read(leaf)) {
                Some(Ok(Leaf::Deleted)) => removals.push((i, None)),
                Some(Ok(Leaf::Moved { to })) => removals.push((i, Some(to))),
                Some(Err(error)) => return Err(at(error)),
                _ => return Err(at(malformed("an `_<index>` key holds a deletion or a move"))),
            }
        } else {
            let i =
                index(key).ok_or_else(|| at(malformed("an array delta's keys are `_t`, `<index>` or `_<index>`")))?;
            match inner {
                Value::Array(leaf) if leaf.len() == 1 => insertions.push((i, leaf[0].clone())),
                _ => changes.push((i, key, inner)),
            }
        }
    }

    // Highest index first, so that each removal leaves the indices of those still to come alone.
    removals.sort_unstable_by_key(|(i, _)| std::cmp::Reverse(*i));
    for (i, to) in removals {
        if i >= items.len() {
            return Err(mismatch("the item to delete or move is out of range").within(&format!("_{i}")));
        }
        let item = items.remove(i);
        if let Some(to) = to {
            insertions.push((to, item));
        }
    }

    // Lowest index first: by the time an item goes to index i, the i items before it are in place.
    insertions.sort_by_key(|(i, _)| *i);
    if insertions.windows(2).any(|pair| pair[0].0 == pair[1].0) {
        return Err(malformed("two items are inserted at the same index"));
    }
    for (i, item) in insertions {
        if i > items.len() {
            return Err(mismatch("the index to insert at is out of range").within(&i.to_string()));
        }
        items.insert(i, item);
    }

    for (i, key, inner) in changes {
        let Some(item) = items.get_mut(i) else {
            return Err(mismatch("the item to change is out of range").within(key));
        };
        let result = match inner {
            Value::Array(leaf) => match Leaf::read(leaf) {
                Ok(Leaf::Replaced(new)) => {
                    *item = new.clone();
                    Ok(())
                }
                Ok(Leaf::Text) => Err(PatchError::TextDiff { path: String::new() }),
                Ok(Leaf::Added(_)) => unreachable!("one-item deltas were sorted into the insertions"),
                Ok(Leaf::Deleted | Leaf::Moved { .. }) => Err(malformed(
                    "deletions and moves go under `_<index>` keys, at the old index",
                )),
                Err(error) => Err(error),
            },
            Value::Object(_) => patch(item, inner),
            _ => Err(malformed("a delta is an array or an object")),
        };
        result.map_err(|error| error.within(key))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roundtrip(left: Value, right: Value) -> Value {
        let delta = diff(&left, &right).expect("the values differ");
        let mut patched = left.clone();
        patch(&mut patched, &delta).unwrap_or_else(|e| panic!("{e}: {delta}"));
        assert!(
            equal(&patched, &right),
            "patched {patched}, expected {right} (delta {delta})"
        );
        delta
    }

    #[test]
    fn equal_values_have_no_delta() {
        for value in [
            json!(null),
            json!(true),
            json!(3),
            json!("x"),
            json!([1, [2]]),
            json!({ "a": { "b": [] } }),
        ] {
            assert_eq!(diff(&value, &value.clone()), None, "{value}");
        }
        assert_eq!(diff(&json!([1, 2.5, -0.0]), &json!([1.0, 2.5, 0])), None);
        assert_eq!(diff(&json!({ "a": 1, "b": 2 }), &json!({ "b": 2.0, "a": 1 })), None);
    }

    #[test]
    fn scalars_and_type_changes_are_replaced() {
        assert_eq!(roundtrip(json!(1), json!(2)), json!([1, 2]));
        assert_eq!(roundtrip(json!("a"), json!(null)), json!(["a", null]));
        assert_eq!(roundtrip(json!({ "a": 1 }), json!([1])), json!([{ "a": 1 }, [1]]));
        assert_eq!(roundtrip(json!([1]), json!({ "0": 1 })), json!([[1], { "0": 1 }]));
        let long = "x".repeat(100);
        assert_eq!(
            roundtrip(json!(long), json!(format!("{long}y"))),
            json!([long, format!("{long}y")])
        );
    }

    #[test]
    fn object_members_are_added_replaced_deleted_and_nested() {
        let delta = roundtrip(
            json!({ "same": 1, "gone": [1], "changed": "a", "nested": { "x": 1, "y": 2 } }),
            json!({ "same": 1, "new": { "z": 1 }, "changed": "b", "nested": { "x": 1, "y": 3 } }),
        );
        assert_eq!(
            delta,
            json!({
                "gone": [[1], 0, 0],
                "new": [{ "z": 1 }],
                "changed": ["a", "b"],
                "nested": { "y": [2, 3] },
            })
        );
    }

    #[test]
    fn objects_with_a_changed_t_or_proto_member_are_replaced_whole() {
        let left = json!({ "inner": { "_t": 1, "x": 1 }, "other": 1 });
        let right = json!({ "inner": { "_t": 2, "x": 1 }, "other": 1 });
        assert_eq!(
            roundtrip(left, right),
            json!({ "inner": [{ "_t": 1, "x": 1 }, { "_t": 2, "x": 1 }] })
        );
        // An unchanged `_t` is no trouble: it does not appear in the delta.
        assert_eq!(
            roundtrip(json!({ "_t": "a", "x": 1 }), json!({ "_t": "a", "x": 2 })),
            json!({ "x": [1, 2] })
        );
        assert_eq!(
            roundtrip(json!({}), json!({ "__proto__": {} })),
            json!([{}, { "__proto__": {} }])
        );
    }

    /// A card: long enough that listing a few of them in a delta beats replacing the whole array.
    fn card(name: &str) -> Value {
        json!({ "card": name, "owner": "somebody" })
    }

    #[test]
    fn arrays_insert_at_new_indices_and_delete_at_old_ones() {
        let [a, b, c, d, x] = ["a", "b", "c", "d", "x"].map(card);
        assert_eq!(
            roundtrip(json!([a]), json!([a, b, c])),
            json!({ "_t": "a", "1": [b], "2": [c] })
        );
        assert_eq!(
            roundtrip(json!([a, b, c]), json!([a, c])),
            json!({ "_t": "a", "_1": [b, 0, 0] })
        );
        assert_eq!(
            roundtrip(json!([a, b, c]), json!([a, x, b, c])),
            json!({ "_t": "a", "1": [x] })
        );
        assert_eq!(
            roundtrip(json!([a, b, c]), json!([b, c, d])),
            json!({ "_t": "a", "_0": [a, 0, 0], "2": [d] })
        );
        // Deleting at the head and inserting further on: `_0` counts in the old array, `3` in the new one.
        assert_eq!(
            roundtrip(json!([x, a, b, c]), json!([a, b, c, d])),
            json!({ "_t": "a", "_0": [x, 0, 0], "3": [d] })
        );
    }

    #[test]
    fn array_items_between_common_ones_are_diffed_in_place() {
        // The changed object keeps its slot and gets a nested delta, instead of a deletion and an insertion.
        let delta = roundtrip(
            json!([{ "id": 1, "n": 1 }, { "id": 2, "n": 1 }, "end"]),
            json!([{ "id": 1, "n": 1 }, { "id": 2, "n": 2 }, "end"]),
        );
        assert_eq!(delta, json!({ "_t": "a", "1": { "n": [1, 2] } }));
        // Two gaps around the common `c, d`: the first changed in place and longer on the new side, the second
        // deleted.
        let [a, b, c, d, x, y, z] = ["a", "b", "c", "d", "x", "y", "z"].map(card);
        let delta = roundtrip(json!([a, c, d, b, z]), json!([x, y, c, d, z]));
        assert_eq!(
            delta,
            json!({ "_t": "a", "0": { "card": ["a", "x"] }, "1": [y], "_3": [b, 0, 0] })
        );
    }

    #[test]
    fn small_deltas_of_small_items_give_way_to_replacing_outright() {
        // Each deletion entry `"_<i>":[old,0,0]` costs more than the item itself.
        assert_eq!(
            roundtrip(json!([1, 2, 3, 4, 5]), json!([1])),
            json!([[1, 2, 3, 4, 5], [1]])
        );
        assert_eq!(roundtrip(json!([]), json!(["a", "b"])), json!([[], ["a", "b"]]));
        assert_eq!(
            roundtrip(json!({ "a": 1, "b": 2 }), json!({ "c": 3 })),
            json!([{ "a": 1, "b": 2 }, { "c": 3 }])
        );
        // Only the level made of nothing but leaves is weighed: the outer delta still points at the member.
        assert_eq!(
            roundtrip(json!({ "xs": [1, 2, 3], "keep": 0 }), json!({ "xs": [], "keep": 0 })),
            json!({ "xs": [[1, 2, 3], []] })
        );
    }

    #[test]
    fn arrays_past_the_lcs_limit_are_still_correct() {
        let left: Vec<Value> = (0..2000).map(|i| json!(i)).collect();
        let mut right = left.clone();
        right.rotate_left(1); // no common head or tail, so the whole middle is 2000 × 2000 cells
        right[1000] = json!("changed");
        roundtrip(Value::Array(left), Value::Array(right));
    }

    #[test]
    fn the_reference_tests_card_game_delta_applies() {
        // The serialized delta from the reference's projection test: arrays filled from empty.
        let mut view = json!({ "order": [], "deckSize": 0, "hand": [] });
        let delta = json!({
            "order": { "0": ["lisa"], "1": ["simon"], "_t": "a" },
            "deckSize": [0, 41],
            "hand": { "0": [{ "id": "c1" }], "1": [{ "id": "c2" }], "_t": "a" },
        });
        patch(&mut view, &delta).unwrap();
        assert_eq!(
            view,
            json!({ "order": ["lisa", "simon"], "deckSize": 41, "hand": [{ "id": "c1" }, { "id": "c2" }] })
        );
    }

    #[test]
    fn patch_applies_moves_deletions_insertions_and_changes_together() {
        // jsondiffpatch.diff([1, 2, 3, 4, {"a": 1}], [4, 1, 9, 3, {"a": 2}]) with moves; removals go first, by old
        // index, then insertions by new index, then the change at new index 4.
        let mut value = json!([1, 2, 3, 4, { "a": 1 }]);
        let delta = json!({ "_t": "a", "_3": ["", 0, 3], "_1": [2, 0, 0], "2": [9], "4": { "a": [1, 2] } });
        patch(&mut value, &delta).unwrap();
        assert_eq!(value, json!([4, 1, 9, 3, { "a": 2 }]));
    }

    #[test]
    fn patch_refuses_what_does_not_fit() {
        let mut value = json!({ "a": [1, 2], "s": "text" });
        let cases = [
            (json!({ "b": [1, 2] }), "/b"),
            (json!({ "b": { "x": [1] } }), "/b"),
            (json!({ "b": [1, 0, 0] }), "/b"),
            (json!({ "a": [5] }), "/a"),
            (json!({ "a": { "_t": "a", "_2": [3, 0, 0] } }), "/a/_2"),
            (json!({ "a": { "_t": "a", "3": [3] } }), "/a/3"),
            (json!({ "a": { "_t": "a", "2": [3, 4] } }), "/a/2"),
            (json!({ "a": { "x": [1, 2] } }), "/a"),
            (json!({ "s": { "_t": "a", "0": [1] } }), "/s"),
        ];
        for (delta, path) in cases {
            let error = patch(&mut value.clone(), &delta).unwrap_err();
            assert!(matches!(error, PatchError::Mismatch { .. }), "{delta}: {error}");
            assert_eq!(error.path(), path, "{delta}");
        }
        let error = patch(&mut value, &json!({ "s": ["@@ -1,4 +1,4 @@\n-text\n+next\n", 0, 2] })).unwrap_err();
        assert_eq!(error, PatchError::TextDiff { path: "/s".into() });
        assert_eq!(error.to_string(), "text deltas are not supported (at `/s`)");
    }

    #[test]
    fn patch_refuses_what_is_not_a_delta() {
        let value = json!({ "a": [1, 2], "a/b~": 1 });
        let cases = [
            (json!(3), ""),
            (json!([]), ""),
            (json!([1, 2, 3, 4]), ""),
            (json!([1, 0, 0]), ""),
            (json!({ "_t": "b" }), ""),
            (json!({ "a": [1, 2, 7] }), "/a"),
            (json!({ "a": { "_t": "a", "x": [1] } }), "/a/x"),
            (json!({ "a": { "_t": "a", "01": [1] } }), "/a/01"),
            (json!({ "a": { "_t": "a", "_0": [1, 2] } }), "/a/_0"),
            (json!({ "a": { "_t": "a", "0": [1, 0, 0] } }), "/a/0"),
            (json!({ "a": { "_t": "a", "0": 5 } }), "/a/0"),
            (json!({ "a/b~": "x" }), "/a~1b~0"),
            (json!({ "a": { "_t": "a", "_0": ["", 1, 3], "1": [5] } }), "/a"),
        ];
        for (delta, path) in cases {
            let error = patch(&mut value.clone(), &delta).unwrap_err();
            assert!(matches!(error, PatchError::Malformed { .. }), "{delta}: {error}");
            assert_eq!(error.path(), path, "{delta}");
        }
    }

    #[test]
    fn hashes_agree_with_equality() {
        let pairs = [
            (json!(1), json!(1.0)),
            (json!(0), json!(-0.0)),
            (json!({ "a": 1, "b": [2] }), json!({ "b": [2.0], "a": 1 })),
        ];
        for (a, b) in pairs {
            assert!(equal(&a, &b));
            assert_eq!(value_hash(&a), value_hash(&b), "{a} {b}");
        }
        assert_ne!(
            value_hash(&json!({ "a": 1, "b": 2 })),
            value_hash(&json!({ "a": 2, "b": 1 }))
        );
    }
}
