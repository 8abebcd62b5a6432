//! One domain's keys in Redis and every call the journal makes on them: the scripts' invocations and the parsing of
//! their replies, and the plain reads (the log after a place, the inbox after the cursor).

use emitter_state::journal::{Checkpoint, Committed, Request};
use redis::Value;

use super::scripts;
use crate::sentinel::Conn;
use crate::types::{Error, Result};

/// How many log or inbox entries one read takes at most.
pub(super) const READ_COUNT: usize = 1_000;

/// The keys of one domain, and the journal's notification channel.
#[derive(Debug, Clone)]
pub(super) struct DomainKeys {
    pub(super) domain: String,
    /// `owner`, `generation`, `head`, `log`, `inbox`: the order the scripts take them in.
    all: [String; 5],
    pub(super) channel: String,
}

impl DomainKeys {
    pub(super) fn new(cluster: &str, domain: &str) -> DomainKeys {
        let key = |what: &str| format!("emitter:{{{cluster}}}:state/{domain}/{what}");
        DomainKeys {
            domain: domain.to_owned(),
            all: [key("owner"), key("generation"), key("head"), key("log"), key("inbox")],
            channel: channel(cluster),
        }
    }

    pub(super) fn head(&self) -> &str {
        &self.all[2]
    }

    pub(super) fn log(&self) -> &str {
        &self.all[3]
    }

    pub(super) fn inbox(&self) -> &str {
        &self.all[4]
    }

    fn invocation(&self, script: &'static redis::Script) -> redis::ScriptInvocation<'static> {
        let mut invocation = script.prepare_invoke();
        for key in &self.all {
            invocation.key(key);
        }
        invocation
    }
}

/// The channel the journal's scripts and queue publish on: `l <n> <domain>` (committed up to n), `i <domain>` (new
/// requests), `o <domain>` (the lease was released).
pub(super) fn channel(cluster: &str) -> String {
    format!("emitter:{{{cluster}}}:state")
}

/// The answer to a claim.
#[derive(Debug)]
pub(super) enum Claim {
    /// Taken, with this generation.
    Taken(u64),
    /// Held by another process for this many more ms.
    Held(u64),
}

pub(super) async fn claim(conn: &mut Conn, keys: &DomainKeys, token: &str, lease_ms: u64) -> Result<Claim> {
    let mut invocation = keys.invocation(&scripts::CLAIM_SCRIPT);
    invocation.arg(token).arg(lease_ms);
    let items = array(invocation.invoke_async(conn).await?)?;
    match (status(&items)?.as_str(), items.get(1)) {
        ("ok", Some(gen)) => Ok(Claim::Taken(number(gen)?)),
        ("held", Some(left)) => Ok(Claim::Held(number(left)?)),
        (other, _) => Err(malformed(&format!("claim replied {other:?}"))),
    }
}

/// `Ok(true)`: renewed; `Ok(false)`: fenced (the lease is not this one, or ran out).
pub(super) async fn renew(conn: &mut Conn, keys: &DomainKeys, token: &str, gen: u64, lease_ms: u64) -> Result<bool> {
    let mut invocation = keys.invocation(&scripts::RENEW_SCRIPT);
    invocation.arg(token).arg(gen).arg(lease_ms);
    let items = array(invocation.invoke_async(conn).await?)?;
    Ok(status(&items)? == "ok")
}

pub(super) async fn release(conn: &mut Conn, keys: &DomainKeys, token: &str, gen: u64) -> Result<bool> {
    let mut invocation = keys.invocation(&scripts::RELEASE_SCRIPT);
    invocation.arg(token).arg(gen).arg(&keys.channel).arg(&keys.domain);
    let items = array(invocation.invoke_async(conn).await?)?;
    Ok(status(&items)? == "ok")
}

/// Where head is: the place a commit continues from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Place {
    /// The newest committed change.
    pub(super) n: u64,
    /// The last inbox entry consumed (`0-0`: none).
    pub(super) cursor: String,
}

/// One commit: what it continues from and what it records.
#[derive(Debug)]
pub(super) struct Commit {
    pub(super) token: String,
    pub(super) gen: u64,
    pub(super) from: Place,
    pub(super) cursor: String,
    /// The last membership seq handled, and the source of those seqs, if this commit handled any.
    pub(super) membership: Option<(u64, String)>,
    pub(super) checkpoint: Option<String>,
    pub(super) retention: u64,
    /// A name for the history, if this commit is its first (see [`Head::history`]).
    pub(super) history: String,
    pub(super) changes: Vec<String>,
}

/// The answer to a commit.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Committing {
    /// Committed: head is at this n.
    Done(u64),
    /// The lease is not the caller's (any more).
    Fenced,
    /// Head is not where the caller left it.
    Moved,
}

pub(super) async fn commit(conn: &mut Conn, keys: &DomainKeys, commit: &Commit) -> Result<Committing> {
    let mut invocation = keys.invocation(&scripts::COMMIT_SCRIPT);
    let (seq, source) = match &commit.membership {
        Some((seq, source)) => (seq.to_string(), source.as_str()),
        None => (String::new(), ""),
    };
    invocation
        .arg(&commit.token)
        .arg(commit.gen)
        .arg(commit.from.n)
        .arg(&commit.from.cursor)
        .arg(&commit.cursor)
        .arg(seq)
        .arg(source)
        .arg(if commit.checkpoint.is_some() { "1" } else { "0" })
        .arg(commit.checkpoint.as_deref().unwrap_or(""))
        .arg(commit.retention.max(1))
        .arg(&keys.channel)
        .arg(&keys.domain)
        .arg(&commit.history);
    for change in &commit.changes {
        invocation.arg(change);
    }
    let items = array(invocation.invoke_async(conn).await?)?;
    match status(&items)?.as_str() {
        "ok" => Ok(Committing::Done(number(items.get(1).unwrap_or(&Value::Nil))?)),
        "fenced" => Ok(Committing::Fenced),
        "moved" => Ok(Committing::Moved),
        other => Err(malformed(&format!("commit replied {other:?}"))),
    }
}

/// Head as a reader needs it.
#[derive(Debug, Clone, Default)]
pub(super) struct Head {
    pub(super) n: u64,
    pub(super) cursor: String,
    /// The last membership seq handled, and the source of those seqs.
    pub(super) membership: Option<(u64, String)>,
    pub(super) checkpoint: Option<Checkpoint>,
    /// The name the first commit gave this history: another one means Redis lost the history read before.
    pub(super) history: Option<String>,
}

/// Head and every committed change after its checkpoint, read consistently: the first batch with head in one script,
/// the rest by [`log_after`] up to head's n. `Ok(None)`: the log moved under the read (trimmed past it): read again.
pub(super) async fn load(conn: &mut Conn, keys: &DomainKeys) -> Result<Option<(Head, Vec<Committed>)>> {
    let mut invocation = keys.invocation(&scripts::LOAD_SCRIPT);
    invocation.arg(READ_COUNT);
    let mut items = array(invocation.invoke_async(conn).await?)?.into_iter();
    let (Some(head), Some(entries)) = (items.next(), items.next()) else {
        return Err(malformed("load: too short"));
    };
    let head = parse_head(head)?;
    let from = head.checkpoint.as_ref().map_or(0, |checkpoint| checkpoint.n);
    let mut after = parse_log(entries)?;
    loop {
        let last = after.last().map_or(from, |committed| committed.n);
        if after.first().is_some_and(|first| first.n != from + 1) {
            return Ok(None);
        }
        if last >= head.n {
            after.truncate(usize::try_from(head.n.saturating_sub(from)).unwrap_or(usize::MAX));
            return Ok(Some((head, after)));
        }
        let more = log_after(conn, keys, last).await?;
        if more.first().is_none_or(|first| first.n != last + 1) {
            return Ok(None);
        }
        after.extend(more);
    }
}

/// What a follower reads: head's n and history, and up to [`READ_COUNT`] committed changes after its own n.
pub(super) struct Followed {
    pub(super) head: u64,
    pub(super) history: Option<String>,
    pub(super) changes: Vec<Committed>,
}

/// Up to [`READ_COUNT`] committed changes after `n`, and head's n and history, read at one instant.
pub(super) async fn follow(conn: &mut Conn, keys: &DomainKeys, n: u64) -> Result<Followed> {
    let ((head, history), entries): ((Option<String>, Option<String>), Value) = redis::pipe()
        .atomic()
        .cmd("HMGET")
        .arg(keys.head())
        .arg("n")
        .arg("e")
        .add_command(read_after(keys, n))
        .query_async(conn)
        .await?;
    Ok(Followed {
        head: head.map(|n| parse_u64(&n)).transpose()?.unwrap_or(0),
        history,
        changes: parse_log(entries)?,
    })
}

async fn log_after(conn: &mut Conn, keys: &DomainKeys, n: u64) -> Result<Vec<Committed>> {
    let entries: Value = read_after(keys, n).query_async(conn).await?;
    parse_log(entries)
}

/// The read of up to [`READ_COUNT`] committed changes after `n`.
fn read_after(keys: &DomainKeys, n: u64) -> redis::Cmd {
    let mut read = redis::cmd("XRANGE");
    read.arg(keys.log())
        .arg(format!("{}-0", n + 1))
        .arg("+")
        .arg("COUNT")
        .arg(READ_COUNT);
    read
}

/// Head's place, the generation that made its last commit and the last membership seq handled: what tells whether a
/// commit whose reply was lost happened.
pub(super) async fn place(conn: &mut Conn, keys: &DomainKeys) -> Result<(Place, u64, Option<u64>)> {
    let (n, cursor, gen, seq): (Option<String>, Option<String>, Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(keys.head())
        .arg("n")
        .arg("c")
        .arg("g")
        .arg("m")
        .query_async(conn)
        .await?;
    let number = |value: Option<String>| value.map(|value| parse_u64(&value)).transpose();
    Ok((
        Place {
            n: number(n)?.unwrap_or(0),
            cursor: cursor.unwrap_or_else(|| "0-0".to_owned()),
        },
        number(gen)?.unwrap_or(0),
        number(seq)?,
    ))
}

/// One inbox entry: its id and the request, or `None` if it is not one (skipped, but consumed).
pub(super) type InboxEntry = (String, Option<Request>);

/// Up to `count` inbox entries after `cursor`.
pub(super) async fn inbox_after(
    conn: &mut Conn,
    keys: &DomainKeys,
    cursor: &str,
    count: usize,
) -> Result<Vec<InboxEntry>> {
    let entries: Value = redis::cmd("XRANGE")
        .arg(keys.inbox())
        .arg(format!("({cursor}"))
        .arg("+")
        .arg("COUNT")
        .arg(count.max(1))
        .query_async(conn)
        .await?;
    stream_entries(entries)?
        .into_iter()
        .map(|(id, fields)| {
            let request = field(&fields, "r").and_then(|text| serde_json::from_str(&text).ok());
            Ok((id, request))
        })
        .collect()
}

fn parse_head(value: Value) -> Result<Head> {
    let items = array(value)?;
    let get = |i: usize| -> Result<Option<String>> {
        match items.get(i) {
            None | Some(Value::Nil) => Ok(None),
            Some(value) => text(value).map(Some),
        }
    };
    let n = get(0)?.map(|n| parse_u64(&n)).transpose()?.unwrap_or(0);
    let membership = match (get(3)?, get(4)?) {
        (Some(seq), Some(source)) => Some((parse_u64(&seq)?, source)),
        _ => None,
    };
    let checkpoint = match (get(5)?, get(6)?) {
        (Some(cn), Some(state)) => Some(Checkpoint {
            n: parse_u64(&cn)?,
            state: serde_json::from_str(&state).map_err(|error| malformed(&format!("checkpoint: {error}")))?,
        }),
        _ => None,
    };
    Ok(Head {
        n,
        cursor: get(1)?.unwrap_or_else(|| "0-0".to_owned()),
        history: get(7)?,
        membership,
        checkpoint,
    })
}

/// Log entries (`<n>-0`, field `c` the change's JSON).
fn parse_log(value: Value) -> Result<Vec<Committed>> {
    stream_entries(value)?
        .into_iter()
        .map(|(id, fields)| {
            let n = id
                .strip_suffix("-0")
                .ok_or_else(|| malformed(&format!("log entry id {id}")))
                .and_then(parse_u64)?;
            let change = field(&fields, "c").ok_or_else(|| malformed(&format!("log entry {n} has no change")))?;
            let change =
                serde_json::from_str(&change).map_err(|error| malformed(&format!("log entry {n}: {error}")))?;
            Ok(Committed { n, change })
        })
        .collect()
}

/// An `XRANGE` reply: each entry's id and its fields, flat.
fn stream_entries(value: Value) -> Result<Vec<(String, Vec<Value>)>> {
    array(value)?
        .into_iter()
        .map(|entry| {
            let mut parts = array(entry)?.into_iter();
            let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
                return Err(malformed("a stream entry without id or fields"));
            };
            Ok((text(&id)?, array(fields)?))
        })
        .collect()
}

fn field(fields: &[Value], name: &str) -> Option<String> {
    fields
        .chunks(2)
        .find(|pair| pair.first().and_then(|key| text(key).ok()).as_deref() == Some(name))
        .and_then(|pair| pair.get(1))
        .and_then(|value| text(value).ok())
}

fn array(value: Value) -> Result<Vec<Value>> {
    match value {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(malformed(&format!("expected an array, got {other:?}"))),
    }
}

fn status(items: &[Value]) -> Result<String> {
    items
        .first()
        .map(text)
        .unwrap_or_else(|| Err(malformed("an empty reply")))
}

fn text(value: &Value) -> Result<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).map_err(|_| malformed("not UTF-8")),
        Value::SimpleString(text) => Ok(text.clone()),
        Value::Int(n) => Ok(n.to_string()),
        other => Err(malformed(&format!("expected text, got {other:?}"))),
    }
}

fn number(value: &Value) -> Result<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).map_err(|_| malformed("a negative number")),
        other => parse_u64(&text(other)?),
    }
}

fn parse_u64(text: &str) -> Result<u64> {
    text.parse().map_err(|_| malformed(&format!("not a number: {text:?}")))
}

fn malformed(what: &str) -> Error {
    Error::Malformed(format!("journal: {what}"))
}
