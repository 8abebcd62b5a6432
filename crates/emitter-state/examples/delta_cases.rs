//! Random delta cases for the interop test against jsondiffpatch 0.5.0 (`tests/interop/test/delta.test.js`).
//!
//! ```text
//! delta_cases cases [COUNT] [SEED]   COUNT lines {"left", "right", "delta"}: a seeded random pair and
//!                                    emitter_state::delta::diff of it (null when there is no change)
//! delta_cases patch                  reads lines {"left", "delta", "right"} (deltas made by jsondiffpatch.diff) on
//!                                    stdin, applies each with emitter_state::delta::patch, and answers each with a
//!                                    line: "ok", or what went wrong
//! ```
//!
//! The pairs are built to hit the interesting paths: the right value is usually an edit of the left one (items
//! inserted, removed, changed or swapped, members added, removed or changed), items come from a small pool so that
//! arrays share items, and object keys include `_t`, `__proto__` and `constructor`, which JavaScript treats specially.

use std::io::{self, BufRead, Write};
use std::process::ExitCode;

use emitter_state::delta;
use serde_json::{json, Map, Value};

/// SplitMix64: small, seedable, and the same on every platform, so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True `percent` times in a hundred.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

const KEYS: &[&str] = &[
    "a",
    "b",
    "c",
    "d",
    "id",
    "name",
    "0",
    "10",
    "_0",
    "a/b",
    "_t",
    "__proto__",
    "constructor",
];

/// Scalars that arrays share, so that their longest common subsequences are not trivial. Under 60 characters each:
/// jsondiffpatch text-diffs longer strings, which emitter's patch does not apply (the `patch` direction).
fn pooled(rng: &mut Rng) -> Value {
    let pool = [
        json!(0),
        json!(1),
        json!(-1),
        json!(2.0),
        json!(0.5),
        json!(1e21),
        json!("a"),
        json!("b"),
        json!(""),
        json!("é💥"),
        json!("quote \" backslash \\ newline \n"),
        json!(true),
        json!(null),
    ];
    rng.pick(&pool)
}

/// A key, mostly plain, now and then one that JavaScript objects treat specially.
fn key(rng: &mut Rng) -> String {
    if rng.chance(85) {
        rng.pick(&KEYS[..10]).to_string()
    } else {
        rng.pick(&KEYS[10..]).to_string()
    }
}

fn value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth == 0 { 3 } else { 5 }) {
        0 | 1 => pooled(rng),
        2 => json!(rng.below(1000)),
        _ => container(rng, depth),
    }
}

/// An array or an object, with values down to `depth - 1` levels below it.
fn container(rng: &mut Rng, depth: usize) -> Value {
    let below = depth.saturating_sub(1);
    if rng.chance(50) {
        Value::Array((0..rng.below(8)).map(|_| item(rng, below)).collect())
    } else {
        Value::Object((0..rng.below(6)).map(|_| (key(rng), value(rng, below))).collect())
    }
}

/// An array item: half the time a pooled scalar, so arrays share items.
fn item(rng: &mut Rng, depth: usize) -> Value {
    if rng.chance(50) {
        pooled(rng)
    } else {
        value(rng, depth)
    }
}

/// An edit of `original`: nested values are edited, kept or replaced.
fn edit(rng: &mut Rng, original: &Value, depth: usize) -> Value {
    if rng.chance(10) {
        return value(rng, depth);
    }
    match original {
        Value::Array(items) => {
            let mut items = items.clone();
            for _ in 0..=rng.below(4) {
                let len = items.len();
                match rng.below(5) {
                    0 => {
                        let inserted = if len > 0 && rng.chance(30) {
                            items[rng.below(len)].clone()
                        } else {
                            item(rng, depth.saturating_sub(1))
                        };
                        items.insert(rng.below(len + 1), inserted);
                    }
                    1 if len > 0 => {
                        items.remove(rng.below(len));
                    }
                    2 if len > 0 => {
                        let i = rng.below(len);
                        items[i] = edit(rng, &items[i], depth.saturating_sub(1));
                    }
                    3 if len > 1 => {
                        let (i, j) = (rng.below(len), rng.below(len));
                        items.swap(i, j);
                    }
                    _ => {}
                }
            }
            Value::Array(items)
        }
        Value::Object(members) => {
            let mut members: Map<String, Value> = members.clone();
            for _ in 0..=rng.below(3) {
                let keys: Vec<String> = members.keys().cloned().collect();
                match rng.below(3) {
                    0 => {
                        members.insert(key(rng), value(rng, depth.saturating_sub(1)));
                    }
                    1 if !keys.is_empty() => {
                        members.remove(&rng.pick(&keys));
                    }
                    _ if !keys.is_empty() => {
                        let k = rng.pick(&keys);
                        let edited = edit(rng, &members[&k], depth.saturating_sub(1));
                        members.insert(k, edited);
                    }
                    _ => {}
                }
            }
            Value::Object(members)
        }
        scalar if rng.chance(50) => scalar.clone(),
        _ => pooled(rng),
    }
}

fn cases(count: usize, seed: u64) -> io::Result<()> {
    let mut rng = Rng(seed);
    let mut out = io::BufWriter::new(io::stdout().lock());
    for _ in 0..count {
        // Mostly a container at the top, as a projection is; now and then a scalar or an unchanged value.
        let left = if rng.chance(95) {
            container(&mut rng, 3)
        } else {
            value(&mut rng, 3)
        };
        let right = match rng.below(20) {
            0 => left.clone(),
            1 => value(&mut rng, 3),
            _ => edit(&mut rng, &left, 3),
        };
        let delta = delta::diff(&left, &right).unwrap_or(Value::Null);
        writeln!(out, "{}", json!({ "left": left, "right": right, "delta": delta }))?;
    }
    out.flush()
}

fn patch_lines() -> io::Result<()> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    for line in io::stdin().lock().lines() {
        let answer = match serde_json::from_str::<Value>(&line?) {
            Err(error) => format!("unreadable line: {error}"),
            Ok(case) => {
                let mut patched = case["left"].clone();
                match delta::patch(&mut patched, &case["delta"]) {
                    Err(error) => error.to_string(),
                    Ok(()) if delta::equal(&patched, &case["right"]) => "ok".into(),
                    Ok(()) => format!("patched to {patched}"),
                }
            }
        };
        writeln!(out, "{answer}")?;
    }
    out.flush()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: u64| args.get(i).map_or(Ok(default), |s| s.parse::<u64>());
    let result = match args.first().map(String::as_str) {
        Some("cases") => match (number(1, 2000), number(2, 1)) {
            (Ok(count), Ok(seed)) => cases(count as usize, seed),
            _ => Err(io::Error::other("COUNT and SEED are numbers")),
        },
        Some("patch") => patch_lines(),
        _ => Err(io::Error::other(
            "usage: delta_cases cases [COUNT] [SEED] | delta_cases patch",
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("delta_cases: {error}");
            ExitCode::FAILURE
        }
    }
}
