//! The journal's Lua scripts: the only writers of a domain's `owner` and `head`, and of its `log`. Each validates
//! before its first write, and reads the time from Redis (`TIME`), the one clock every process shares.
//!
//! KEYS, for every script: `owner`, `generation`, `head`, `log`, `inbox` of one domain (all under the cluster's hash
//! tag, so one slot).

use std::sync::LazyLock;

use redis::Script;

/// Now in ms by Redis's clock, and the owner record `<token> <generation> <deadline>` parsed (nil if missing).
const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function owner()
  local value = redis.call('GET', KEYS[1])
  if not value then return nil end
  local token, gen, deadline = string.match(value, '^(%S+) (%d+) (%d+)$')
  if not token then return nil end
  return {token = token, gen = gen, deadline = tonumber(deadline)}
end
local function holds(token, gen)
  local o = owner()
  return o and o.token == token and o.gen == gen and o.deadline > now
end
"#;

/// claim(token, lease ms): takes the lease when it is missing or past its deadline (or held by this very token: a
/// claim whose reply was lost), with a new generation. `{'ok', generation}` or `{'held', ms left}`.
const CLAIM: &str = r#"
local o = owner()
if o and o.deadline > now and o.token ~= ARGV[1] then return {'held', o.deadline - now} end
local gen = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. gen .. ' ' .. (now + tonumber(ARGV[2])))
return {'ok', gen}
"#;

/// renew(token, generation, lease ms): `{'ok'}`, or `{'fenced'}` unless the lease is this one and alive.
const RENEW: &str = r#"
if not holds(ARGV[1], ARGV[2]) then return {'fenced'} end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. (now + tonumber(ARGV[3])))
return {'ok'}
"#;

/// release(token, generation, channel, domain): deletes the lease if it is this one (alive or not) and tells the
/// other processes, so that one claims it at once. `{'ok'}` or `{'fenced'}`.
const RELEASE: &str = r#"
local o = owner()
if not (o and o.token == ARGV[1] and o.gen == ARGV[2]) then return {'fenced'} end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[3], 'o ' .. ARGV[4])
return {'ok'}
"#;

/// commit(token, generation, expected n, expected cursor, new cursor, membership seq or '', membership source,
/// checkpoint flag '0'/'1', checkpoint JSON, log retention, channel, domain, history id, change JSON…).
///
/// Refuses `{'fenced'}` unless the caller holds the lease, alive by Redis's clock, and `{'moved', n, cursor}` unless
/// head is where the caller left it (nothing consumed twice, nothing committed twice). Then appends each change as
/// `<n>-0`, sets head (n, cursor, the committing generation, the membership seq handled, the checkpoint), trims the
/// consumed inbox entries and the log below the checkpoint (keeping `retention` newest entries), and publishes
/// `l <n> <domain>` when it appended. `{'ok', n}`. The first commit of a history names it (`e`, the caller's random
/// candidate): a follower that finds another name knows Redis lost the history it followed.
const COMMIT: &str = r#"
if not holds(ARGV[1], ARGV[2]) then return {'fenced'} end
local head = redis.call('HMGET', KEYS[3], 'n', 'c')
local n = tonumber(head[1] or '0')
local cursor = head[2] or '0-0'
if n ~= tonumber(ARGV[3]) or cursor ~= ARGV[4] then return {'moved', n, cursor} end
for i = 14, #ARGV do
  n = n + 1
  redis.call('XADD', KEYS[4], n .. '-0', 'c', ARGV[i])
end
redis.call('HSET', KEYS[3], 'n', n, 'c', ARGV[5], 'g', ARGV[2])
redis.call('HSETNX', KEYS[3], 'e', ARGV[13])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[3], 'm', ARGV[6], 'ms', ARGV[7]) end
if ARGV[8] == '1' then
  redis.call('HSET', KEYS[3], 'cn', n, 'cs', ARGV[9])
  local keep_from = n - tonumber(ARGV[10]) + 1
  if keep_from > 1 then redis.call('XTRIM', KEYS[4], 'MINID', keep_from .. '-0') end
end
if ARGV[5] ~= ARGV[4] then redis.call('XTRIM', KEYS[5], 'MINID', ARGV[5]) end
if #ARGV >= 14 then redis.call('PUBLISH', ARGV[11], 'l ' .. n .. ' ' .. ARGV[12]) end
return {'ok', n}
"#;

/// load(count): head (n, cursor, generation, membership seq, its source, checkpoint n, checkpoint JSON, history id) and the
/// first `count` log entries after the checkpoint, read at one instant.
const LOAD: &str = r#"
local head = redis.call('HMGET', KEYS[3], 'n', 'c', 'g', 'm', 'ms', 'cn', 'cs', 'e')
local from = tonumber(head[6] or '0') + 1
return {head, redis.call('XRANGE', KEYS[4], from .. '-0', '+', 'COUNT', tonumber(ARGV[1]))}
"#;

fn with_prelude(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

pub(super) static CLAIM_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_prelude(CLAIM));
pub(super) static RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_prelude(RENEW));
pub(super) static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_prelude(RELEASE));
pub(super) static COMMIT_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_prelude(COMMIT));
pub(super) static LOAD_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LOAD));
