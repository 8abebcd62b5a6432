//! Script replies into typed values. Nothing here trusts the reply's shape: Redis is another process, and a key may
//! have been written by something else, so every surprise is an [`Error::Malformed`], never a panic.

use redis::Value;

use crate::chain::{parse_hash, Link};
use crate::types::{Epoch, Error, LinkAddr, LogEntry, LogEvent, Refusal, Result, UnlinkReason, UserRecord};

/// An unlink's reason, by the name the scripts write in the log's `r` field.
fn parse_reason(text: &str) -> Option<UnlinkReason> {
    Some(match text {
        "request" => UnlinkReason::Requested,
        "leave" => UnlinkReason::Leaving,
        "expired" => UnlinkReason::LeaseExpired,
        "restarted" => UnlinkReason::NodeRestarted,
        "released" => UnlinkReason::NodeReleased,
        "replaced" => UnlinkReason::Replaced,
        _ => return None,
    })
}

/// A script's reply: refused, or done with an extra value and a list of items.
pub(crate) enum Reply {
    Refused { code: String, detail: String },
    Done { extra: String, items: Vec<Value> },
}

pub(crate) fn text(value: &Value) -> Result<String> {
    match value {
        Value::BulkString(bytes) => {
            String::from_utf8(bytes.clone()).map_err(|_| malformed("a string that is not UTF-8"))
        }
        Value::SimpleString(text) => Ok(text.clone()),
        Value::VerbatimString { text, .. } => Ok(text.clone()),
        Value::Int(number) => Ok(number.to_string()),
        Value::Okay => Ok("OK".to_owned()),
        other => Err(malformed(&format!("expected a string, got {other:?}"))),
    }
}

pub(crate) fn number(value: &Value) -> Result<u64> {
    let text = text(value)?;
    parse_u64(&text)
}

pub(crate) fn parse_u64(text: &str) -> Result<u64> {
    text.parse()
        .map_err(|_| malformed(&format!("expected a number, got {text:?}")))
}

pub(crate) fn malformed(what: &str) -> Error {
    Error::Malformed(what.to_owned())
}

pub(crate) fn array(value: Value) -> Result<Vec<Value>> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(malformed(&format!("expected an array, got {other:?}"))),
    }
}

pub(crate) fn reply(value: Value) -> Result<Reply> {
    let mut items = array(value)?.into_iter();
    let (Some(status), Some(second)) = (items.next(), items.next()) else {
        return Err(malformed("a script reply with fewer than two items"));
    };
    match text(&status)?.as_str() {
        "refused" => {
            let detail = items.next().map(|value| text(&value)).transpose()?.unwrap_or_default();
            Ok(Reply::Refused {
                code: text(&second)?,
                detail,
            })
        }
        "ok" => Ok(Reply::Done {
            extra: text(&second)?,
            items: items.collect(),
        }),
        other => Err(malformed(&format!("a script reply with status {other:?}"))),
    }
}

/// A refusal code from a script, for a change about `user`.
pub(crate) fn refusal(code: &str, detail: String, user: &str) -> Result<Refusal> {
    Ok(match code {
        "epoch" => Refusal::EpochChanged {
            current: (!detail.is_empty()).then_some(Epoch(detail)),
        },
        "fenced" => Refusal::Fenced,
        "join-existing" => Refusal::JoinExistingUser,
        "not-accepting" => Refusal::NotAcceptingNewUsers,
        "already-linked" => Refusal::AlreadyLinked { user: user.to_owned() },
        "unlink-unknown" => Refusal::UnlinkUnknownUser,
        "unlink-unlinked" => Refusal::UnlinkUnlinkedUser,
        "kick-unknown" => Refusal::KickUnknownUser,
        "not-linked-here" => Refusal::NotLinkedHere,
        "connection-linked" => Refusal::ConnectionLinked,
        "in-use" => Refusal::NodeInUse {
            remaining_ms: parse_u64(&detail)?,
        },
        other => return Err(malformed(&format!("refusal {other:?} ({detail})"))),
    })
}

/// Turns a reply into its extra value and items, or the refusal as an error.
pub(crate) fn done(value: Value, user: &str) -> Result<(String, Vec<Value>)> {
    match reply(value)? {
        Reply::Done { extra, items } => Ok((extra, items)),
        Reply::Refused { code, detail } => Err(Error::Refused(refusal(&code, detail, user)?)),
    }
}

/// One log entry from its flat field list (`s`, `k`, `u`, …) as the scripts write it to the stream, and its place in
/// the hash chain (`p`, `h`; `None` for an entry written before the log had one).
pub(crate) fn entry(value: Value) -> Result<(LogEntry, Option<Link>)> {
    let fields = array(value)?;
    let mut seq = None;
    let (mut prev, mut hash) = (None, None);
    let (mut kind, mut user, mut node, mut generation, mut connection, mut reason, mut by) =
        (None, None, None, None, None, None, None);
    let mut pairs = fields.iter();
    while let (Some(name), Some(value)) = (pairs.next(), pairs.next()) {
        let value = text(value)?;
        match text(name)?.as_str() {
            "s" => seq = Some(parse_u64(&value)?),
            "k" => kind = Some(value),
            "u" => user = Some(value),
            "n" => node = Some(value),
            "g" => generation = Some(parse_u64(&value)?),
            "c" => connection = Some(parse_u64(&value)?),
            "r" => reason = Some(value),
            "b" => by = Some(value),
            "p" => prev = Some(hash_of(&value)?),
            "h" => hash = Some(hash_of(&value)?),
            // A field a later version may add: ignored, so that old nodes can read a newer log.
            _ => {}
        }
    }
    let (Some(seq), Some(kind), Some(user)) = (seq, kind, user) else {
        return Err(malformed("a log entry without seq, kind or user"));
    };
    let link = || match (node.clone(), generation, connection) {
        (Some(node), Some(generation), Some(connection)) => Ok(LinkAddr {
            node,
            generation,
            connection,
        }),
        _ => Err(malformed(&format!("log entry {seq} ({kind}) without its link"))),
    };
    let event = match kind.as_str() {
        "join" => LogEvent::Joined { user },
        "link" => LogEvent::Linked { user, link: link()? },
        "unlink" => {
            let reason = reason
                .as_deref()
                .and_then(parse_reason)
                .unwrap_or(UnlinkReason::Requested);
            LogEvent::Unlinked {
                user,
                link: link()?,
                reason,
            }
        }
        "leave" => LogEvent::Left { user },
        other => return Err(malformed(&format!("log entry {seq} of kind {other:?}"))),
    };
    let link = match (prev, hash) {
        (Some(prev), Some(hash)) => Some(Link { prev, hash }),
        _ => None,
    };
    let entry = LogEntry {
        seq,
        event,
        by: by.unwrap_or_default(),
    };
    Ok((entry, link))
}

/// Entries as the scripts write them in JSON (a notification's, a batch's answer): an array of their flat field
/// lists, each list returned as the array of strings [`entry`] reads.
pub(crate) fn entry_lists(json: &str) -> Result<Vec<Value>> {
    let lists: Vec<Vec<String>> = serde_json::from_str(json)
        .map_err(|error| malformed(&format!("entries that are not a JSON array: {error}")))?;
    Ok(lists
        .into_iter()
        .map(|list| {
            Value::Array(
                list.into_iter()
                    .map(|field| Value::BulkString(field.into_bytes()))
                    .collect(),
            )
        })
        .collect())
}

pub(crate) fn entries(items: Vec<Value>) -> Result<Vec<(LogEntry, Option<Link>)>> {
    items.into_iter().map(entry).collect()
}

/// A chain hash as the scripts write it.
pub(crate) fn hash_of(text: &str) -> Result<u64> {
    parse_hash(text).ok_or_else(|| malformed(&format!("expected a chain hash, got {text:?}")))
}

/// A `users` record: `<join seq>`, or `<join seq> <generation> <connection> <node>` when linked.
pub(crate) fn record(name: String, value: &str) -> Result<UserRecord> {
    let mut parts = value.splitn(4, ' ');
    let joined = parse_u64(parts.next().unwrap_or_default())?;
    let link = match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => None,
        (Some(generation), Some(connection), Some(node)) => Some(LinkAddr {
            node: node.to_owned(),
            generation: parse_u64(generation)?,
            connection: parse_u64(connection)?,
        }),
        _ => return Err(malformed(&format!("user record {value:?}"))),
    };
    Ok(UserRecord { name, joined, link })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn an_entry_reads_back_from_its_fields() {
        let fields = [
            "s", "4", "k", "unlink", "u", "alice", "n", "n1", "g", "2", "c", "9", "r", "expired", "b", "n2",
        ];
        let value = Value::Array(fields.iter().map(|field| bulk(field)).collect());
        let (entry, link) = entry(value).unwrap();
        assert_eq!(link, None, "an entry from before the chain");
        assert_eq!(entry.seq, 4);
        assert_eq!(entry.by, "n2");
        assert_eq!(
            entry.event,
            LogEvent::Unlinked {
                user: "alice".into(),
                link: LinkAddr {
                    node: "n1".into(),
                    generation: 2,
                    connection: 9
                },
                reason: UnlinkReason::LeaseExpired,
            }
        );
    }

    #[test]
    fn entries_read_back_from_the_json_the_scripts_write() {
        // As Lua's cjson writes them: `/` escaped, other characters as they are.
        let json = r#"[["s","5","k","join","u","a\/b é","b","n1","p","0","h","00ff"]]"#;
        let (entry, link) = entries(entry_lists(json).unwrap()).unwrap().remove(0);
        assert_eq!(entry.event, LogEvent::Joined { user: "a/b é".into() });
        assert_eq!(link, Some(Link { prev: 0, hash: 255 }));
        assert!(entry_lists("{}").is_err(), "cjson's empty table is not an array");
        assert!(entry_lists("[[1]]").is_err());
    }

    #[test]
    fn surprises_are_errors_not_panics() {
        assert!(entry(Value::Int(3)).is_err());
        assert!(entry(Value::Array(vec![bulk("s"), bulk("x")])).is_err());
        assert!(entry(Value::Array(vec![
            bulk("s"),
            bulk("1"),
            bulk("k"),
            bulk("link"),
            bulk("u"),
            bulk("a")
        ]))
        .is_err());
        assert!(reply(Value::Array(vec![bulk("maybe"), bulk("")])).is_err());
        assert!(reply(Value::Nil).is_err());
        assert!(record("a".into(), "x").is_err());
        assert!(record("a".into(), "1 2").is_err());
        assert_eq!(record("a".into(), "7").unwrap().link, None);
        let linked = record("a".into(), "7 3 12 node-1").unwrap();
        assert_eq!(linked.joined, 7);
        assert_eq!(
            linked.link.map(|link| (link.node, link.generation, link.connection)),
            Some(("node-1".into(), 3, 12))
        );
    }
}
