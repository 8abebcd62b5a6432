//! Properties of `delta::diff` and `delta::patch` over random pairs of JSON values: patching the left value with
//! their delta gives the right one, a value has no delta against itself, and a delta is never much larger than
//! replacing the value outright.
//!
//! The right value is usually an edit of the left one, and array items come from a small pool, so that arrays share
//! items and the longest-common-subsequence path is taken with gaps on both sides.

use emitter_state::delta::{diff, equal, patch};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..4).prop_map(Value::from),
        prop::sample::select(vec![0.5, -2.25, 2.0, 1e21]).prop_map(Value::from),
        prop::sample::select(vec!["", "a", "b", "é💥", "_t"]).prop_map(Value::from),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c", "id", "0", "_t", "__proto__"]).prop_map(String::from)
}

fn json_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(prop_oneof![scalar(), inner.clone()], 0..7).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One edit, addressed by numbers that are taken modulo whatever they index when the edit is applied.
#[derive(Debug, Clone)]
enum Edit {
    Insert { at: usize, value: Value },
    CopyItem { from: usize, at: usize },
    Remove { at: usize },
    Swap { a: usize, b: usize },
    SetMember { key: String, value: Value },
    RemoveMember { at: usize },
    Descend { at: usize, edit: Box<Edit> },
    Replace { value: Value },
}

fn edit() -> impl Strategy<Value = Edit> {
    let leaf = prop_oneof![
        (any::<usize>(), prop_oneof![scalar(), json_value()]).prop_map(|(at, value)| Edit::Insert { at, value }),
        (any::<usize>(), any::<usize>()).prop_map(|(from, at)| Edit::CopyItem { from, at }),
        any::<usize>().prop_map(|at| Edit::Remove { at }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Swap { a, b }),
        (key(), json_value()).prop_map(|(key, value)| Edit::SetMember { key, value }),
        any::<usize>().prop_map(|at| Edit::RemoveMember { at }),
        json_value().prop_map(|value| Edit::Replace { value }),
    ];
    leaf.prop_recursive(3, 12, 1, |inner| {
        (any::<usize>(), inner).prop_map(|(at, edit)| Edit::Descend {
            at,
            edit: Box::new(edit),
        })
    })
}

/// Applies `edit` to `value`; an edit that does not fit the value (removing from an empty array) does nothing.
fn apply(value: &mut Value, edit: &Edit) {
    match (value, edit) {
        (Value::Array(items), Edit::Insert { at, value }) => items.insert(at % (items.len() + 1), value.clone()),
        (Value::Array(items), Edit::CopyItem { from, at }) if !items.is_empty() => {
            let item = items[from % items.len()].clone();
            items.insert(at % (items.len() + 1), item);
        }
        (Value::Array(items), Edit::Remove { at }) if !items.is_empty() => {
            items.remove(at % items.len());
        }
        (Value::Array(items), Edit::Swap { a, b }) if !items.is_empty() => {
            let len = items.len();
            items.swap(a % len, b % len);
        }
        (Value::Array(items), Edit::Descend { at, edit }) if !items.is_empty() => {
            let len = items.len();
            apply(&mut items[at % len], edit);
        }
        (Value::Object(members), Edit::SetMember { key, value }) => {
            members.insert(key.clone(), value.clone());
        }
        (Value::Object(members), Edit::RemoveMember { at }) if !members.is_empty() => {
            let key = members.keys().nth(at % members.len()).cloned().unwrap();
            members.remove(&key);
        }
        (Value::Object(members), Edit::Descend { at, edit }) if !members.is_empty() => {
            let key = members.keys().nth(at % members.len()).cloned().unwrap();
            apply(members.get_mut(&key).unwrap(), edit);
        }
        (value, Edit::Replace { value: new }) => *value = new.clone(),
        _ => {}
    }
}

/// A left value and a right one: mostly an edit of the left, sometimes an unrelated value.
fn pair() -> impl Strategy<Value = (Value, Value)> {
    prop_oneof![
        4 => (json_value(), prop::collection::vec(edit(), 0..6)).prop_map(|(left, edits)| {
            let mut right = left.clone();
            for edit in &edits {
                apply(&mut right, edit);
            }
            (left, right)
        }),
        1 => (json_value(), json_value()),
    ]
}

/// Checks that the old values a delta holds are the ones in `left`, where the delta says they are: the format asks
/// for them (jsondiffpatch's `unpatch` and its formatters read them), though `patch` never does.
fn old_values_fit(left: &Value, delta: &Value) -> Result<(), String> {
    let first = |leaf: &[Value]| leaf.first().cloned().unwrap_or_default();
    match delta {
        // `[old, new]` and `[old, 0, 0]`; `[new]` has no old value.
        Value::Array(leaf) if leaf.len() == 1 => Ok(()),
        Value::Array(leaf) if equal(&first(leaf), left) => Ok(()),
        Value::Array(leaf) => Err(format!("old value {} where the value is {left}", first(leaf))),
        Value::Object(entries) if entries.get("_t") == Some(&json!("a")) => {
            let items = left.as_array().ok_or_else(|| format!("an array delta for {left}"))?;
            let mut deleted = Vec::new();
            let mut inserted = Vec::new();
            for (key, entry) in entries.iter().filter(|(key, _)| *key != "_t") {
                if let Some(i) = key.strip_prefix('_') {
                    let i: usize = i.parse().unwrap();
                    old_values_fit(&items[i], entry).map_err(|e| format!("{key}: {e}"))?;
                    deleted.push(i);
                } else if entry.as_array().is_some_and(|leaf| leaf.len() == 1) {
                    inserted.push(key.parse::<usize>().unwrap());
                }
            }
            // The items that stay keep their order and take the new indices nothing was inserted at.
            let staying = (0..items.len()).filter(|i| !deleted.contains(i));
            let places = (0..).filter(|j| !inserted.contains(j));
            let old_index: std::collections::HashMap<usize, usize> = places.zip(staying).collect();
            for (key, entry) in entries.iter().filter(|(key, _)| *key != "_t" && !key.starts_with('_')) {
                let j: usize = key.parse().unwrap();
                if !inserted.contains(&j) {
                    let i = old_index[&j];
                    old_values_fit(&items[i], entry).map_err(|e| format!("{key} (old {i}): {e}"))?;
                }
            }
            Ok(())
        }
        Value::Object(entries) => {
            let members = left.as_object().ok_or_else(|| format!("an object delta for {left}"))?;
            for (key, entry) in entries {
                match (members.get(key), entry.as_array().is_some_and(|leaf| leaf.len() == 1)) {
                    (None, true) => {}
                    (Some(member), false) => old_values_fit(member, entry).map_err(|e| format!("{key}: {e}"))?,
                    _ => return Err(format!("{key}: added though there, or changed though missing")),
                }
            }
            Ok(())
        }
        _ => Err(format!("not a delta: {delta}")),
    }
}

fn size(value: &Value) -> usize {
    serde_json::to_string(value).unwrap().len()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn patching_with_the_delta_gives_the_right_value((left, right) in pair()) {
        let mut patched = left.clone();
        match diff(&left, &right) {
            None => prop_assert!(equal(&left, &right), "no delta, but {} != {}", left, right),
            Some(delta) => {
                prop_assert!(!equal(&left, &right), "a delta {} for equal values", delta);
                patch(&mut patched, &delta).map_err(|e| TestCaseError::fail(format!("{e}; delta {delta}")))?;
                prop_assert!(equal(&patched, &right), "patched {} != {} (delta {})", patched, right, delta);
                old_values_fit(&left, &delta).map_err(|e| TestCaseError::fail(format!("{e}; delta {delta}")))?;
                // Never much larger than replacing outright: each entry holds at most an old and a new value, and
                // some brackets and an index.
                let replace = size(&json!([left, right]));
                prop_assert!(size(&delta) <= 2 * replace + 16, "delta {} for {} -> {}", delta, left, right);
            }
        }
    }

    #[test]
    fn a_value_has_no_delta_against_itself(value in json_value()) {
        prop_assert_eq!(diff(&value, &value.clone()), None);
    }

    #[test]
    fn objects_with_members_in_another_order_have_no_delta(members in prop::collection::vec((key(), json_value()), 0..6)) {
        // serde_json's Map keeps keys sorted here, but with its `preserve_order` feature on (some other crate in a
        // build can turn it on) the order would follow insertion; `equal` must not care either way.
        let forward: Map<String, Value> = members.iter().cloned().collect();
        let backward: Map<String, Value> = members.iter().rev().cloned().collect();
        // Later duplicates win in `forward` and earlier ones in `backward`, so compare only when they agree.
        if forward.keys().all(|k| equal(&forward[k], &backward[k])) {
            prop_assert_eq!(diff(&Value::Object(forward), &Value::Object(backward)), None);
        }
    }
}
