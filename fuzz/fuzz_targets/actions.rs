//! Sequences of client and server actions driven through `Server::host()` with fake connections, checked after every
//! step against the model and the design invariants of `crates/emitter-core/tests/model/harness.rs` (the same
//! harness the proptest suite uses).
//!
//! The fuzzer picks the setup (new users welcome or not, connection caps, close at the end), whether to
//! start from four linked users, and up to 256 actions: structured ones (links to a pool of names, leaves, `do/*`
//! messages that make listeners call back into the server, server calls) and raw frames (arbitrary bytes, or link
//! requests with arbitrary usernames and versions).
#![no_main]

#[path = "../../crates/emitter-core/tests/model/harness.rs"]
mod harness;

use arbitrary::{Arbitrary, Result, Unstructured};
use harness::{populated, Action, Ask, ClientAction, Harness, Setup, NAMES};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

#[derive(Debug)]
struct Input {
    setup: Setup,
    actions: Vec<Action>,
}

fn name(u: &mut Unstructured<'_>) -> Result<usize> {
    u.choose_index(NAMES.len())
}

fn text(u: &mut Unstructured<'_>) -> Result<String> {
    // Mostly short strings near the pool's names, sometimes anything.
    Ok(match u.int_in_range(0..=3u8)? {
        0 => NAMES[name(u)?].to_owned(),
        1 => format!("{}{}", NAMES[name(u)?], u.int_in_range(0..=9u8)?),
        _ => String::arbitrary(u)?,
    })
}

fn raw(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    Ok(match u.int_in_range(0..=3u8)? {
        // A link request with any username and version, and maybe an auth.
        0 => {
            let version = match u.int_in_range(0..=2u8)? {
                0 => "0.6.0".to_owned(),
                1 => "0.5.9".to_owned(),
                _ => String::arbitrary(u)?,
            };
            let mut payload = json!({"username": text(u)?, "version": version});
            if bool::arbitrary(u)? {
                payload["auth"] = json!(text(u)?);
            }
            json!({"type": "krmx/link", "payload": payload})
                .to_string()
                .into_bytes()
        }
        // A message of any type with a string payload: hits the reserved prefix and the `do/*` listener.
        1 => {
            let kind = match u.int_in_range(0..=3u8)? {
                0 => "krmx/".to_owned() + &String::arbitrary(u)?,
                1 => "do/".to_owned() + &String::arbitrary(u)?,
                _ => String::arbitrary(u)?,
            };
            json!({"type": kind, "payload": text(u)?}).to_string().into_bytes()
        }
        _ => {
            let len = u.int_in_range(0..=64usize)?;
            u.bytes(len)?.to_vec()
        }
    })
}

fn client_action(u: &mut Unstructured<'_>) -> Result<ClientAction> {
    Ok(match u.int_in_range(0..=9u8)? {
        0..=2 => ClientAction::Link {
            name: name(u)?,
            good_version: u.ratio(9u8, 10u8)?,
        },
        3 => ClientAction::LinkMalformed,
        4 => ClientAction::Unlink,
        5 => ClientAction::Leave,
        6 => ClientAction::Custom,
        7 => ClientAction::Ask {
            ask: *u.choose(&Ask::ALL)?,
            name: name(u)?,
        },
        8 => u
            .choose(&[ClientAction::UnknownReserved, ClientAction::Invalid])?
            .clone(),
        _ => ClientAction::Raw(raw(u)?),
    })
}

fn action(u: &mut Unstructured<'_>) -> Result<Action> {
    let connection = |u: &mut Unstructured<'_>| u.int_in_range(0..=15usize);
    Ok(match u.int_in_range(0..=11u8)? {
        0 | 1 => Action::Connect,
        2..=5 => Action::Send(connection(u)?, client_action(u)?),
        6 => Action::Drop(connection(u)?),
        7 => Action::Join(name(u)?),
        8 => Action::Unlink(name(u)?),
        9 => Action::Kick(name(u)?),
        10 => Action::SendTo(name(u)?),
        _ => Action::Broadcast(if bool::arbitrary(u)? { Some(name(u)?) } else { None }),
    })
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let setup = Setup {
            accept_new_users: u.ratio(7u8, 8u8)?,
            close_at_end: bool::arbitrary(u)?,
            max_connections: if u.ratio(1u8, 8u8)? {
                Some(u.int_in_range(0..=6usize)?)
            } else {
                None
            },
            max_unlinked_connections: if u.ratio(1u8, 8u8)? {
                Some(u.int_in_range(0..=4usize)?)
            } else {
                None
            },
            max_users: if u.ratio(1u8, 8u8)? {
                Some(u.int_in_range(0..=6usize)?)
            } else {
                None
            },
        };
        // Half the inputs start from four linked users.
        let mut actions = if bool::arbitrary(u)? { populated() } else { Vec::new() };
        while !u.is_empty() && actions.len() < 256 {
            actions.push(action(u)?);
        }
        Ok(Input { setup, actions })
    }
}

fuzz_target!(|input: Input| {
    if let Err(divergence) = Harness::run(input.setup, &input.actions) {
        panic!("{divergence}");
    }
});
