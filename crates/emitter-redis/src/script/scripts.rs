//! The Lua scripts: every change to the cluster state is exactly one of them, so Redis's one-script-at-a-time
//! execution is the cluster's order. Each script validates everything *before* its first write: Redis does not roll
//! back a script that fails halfway, so a script must never be able to fail after writing.
//!
//! Every script gets the same eleven keys (all under the cluster's hash tag, see [`crate::script::keys`]), declared in
//! KEYS so that they also run on Redis Cluster, where a script may only touch the keys it declares:
//!
//! `KEYS[1]` epoch, `[2]` seq, `[3]` log, `[4]` users, `[5]` order, `[6]` links, `[7]` nodes, `[8]` generation,
//! `[9]` connections, `[10]` unlinked, `[11]` head (the hash of the newest entry). `order` (the users by join seq)
//! is no longer written: a user's record starts with its join seq, and a snapshot sorts by that. It is still deleted
//! when the state is created, so that one left by an earlier version goes.
//!
//! Replies: `{'refused', code, detail}`, or `{'ok', extra, entry, entry, …}` where each entry is the flat field list
//! the script appended to the log (`s` seq, `k` kind, `u` user, `n` node, `g` generation, `c` connection, `r` reason,
//! `b` by, then `p` the previous entry's hash and `h` its own), in order.
//!
//! The hash chain (see [`crate::chain`]): each entry's `h` is the first 16 hex digits of the SHA-1 of the previous
//! entry's `h` and the entry's fields. A replica promoted after missing the last writes hands out those seqs again
//! with other entries, so other hashes: a node that applied the lost ones sees the break. SHA-1 because Redis has it
//! built in (`redis.sha1hex`, in C); it costs about a microsecond per entry. The seq and the head are read and written
//! once per script, not once per entry.
//!
//! What a script costs Redis is mostly its number of `redis.call`s (each one a command dispatched and its reply
//! converted into Lua): a link of a new user makes six (read the user, claim the connection, write the user and its
//! link, append the join and the link), and a batch of changes a few more in all.

use std::sync::LazyLock;

use redis::Script;

/// Shared by the scripts that change state: the key names, the clock, the lease and user records, and the four
/// appends that are the only writes to `users`, `order` and `links`.
const PRELUDE: &str = r#"
local K_EPOCH, K_SEQ, K_LOG, K_USERS, K_ORDER, K_LINKS, K_NODES, K_GEN, K_CONNS, K_UNLINKED, K_HEAD =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]

local function fmt(n) return string.format('%d', n) end

local function refused(code, detail) return {'refused', code, detail or ''} end

-- The caller's epoch must be the one in Redis: a missing epoch means the state is gone (a restart or flush).
local function epoch_refusal(expected)
  local current = redis.call('GET', K_EPOCH)
  if current ~= expected then return refused('epoch', current or '') end
  return nil
end

-- Redis's own clock, in milliseconds: the one clock every node's lease is measured by.
-- Read once per script: a script is one instant (a batch of changes reads the clock once, not once per change).
local NOW = nil
local function now_ms()
  if not NOW then
    local t = redis.call('TIME')
    NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return NOW
end

-- nodes: node id -> "<generation> <deadline ms> <instance>": the instance is the random token of the process that
-- holds the lease (absent in leases written before it existed).
local function lease_of(node)
  local v = redis.call('HGET', K_NODES, node)
  if not v then return nil end
  local gen, deadline, instance = string.match(v, '^(%d+) (%d+) ?(%S*)$')
  if not gen then return nil end
  return gen, tonumber(deadline), instance
end

-- Writes `node`'s lease: generation `gen`, until `deadline` (ms), held by `instance` (what lease_of reads back).
local function hold(node, gen, deadline, instance)
  redis.call('HSET', K_NODES, node, gen .. ' ' .. fmt(deadline) .. ' ' .. instance)
end

local function alive(node, gen, now)
  local g, deadline = lease_of(node)
  return g ~= nil and g == gen and deadline >= now
end

-- users: name -> "<join seq>" when unlinked, "<join seq> <generation> <connection> <node>" when linked.
local function user_of(name)
  local v = redis.call('HGET', K_USERS, name)
  if not v then return nil end
  local j, g, c, n = string.match(v, '^(%d+) (%d+) (%d+) (.+)$')
  if j then return {join = j, gen = g, conn = c, node = n} end
  return {join = v}
end

local RETAIN, CHANNEL, EPOCH = nil, nil, nil
-- produced: the entries of the change being decided (its reply); appended: every entry of the script (its notice).
local produced, appended, last = {}, {}, nil
-- The newest seq and the hash of the newest entry: read at the first append of a script, counted and chained here,
-- written once at its end (`tell`). A script is atomic and never fails after its first write (see above), so the
-- keys read the same to everyone as if each append had written them.
local SEQ, HEAD = nil, nil

local function append(fields)
  if not SEQ then
    local current = redis.call('MGET', K_SEQ, K_HEAD)
    SEQ, HEAD = tonumber(current[1]) or 0, current[2] or '0'
  end
  SEQ = SEQ + 1
  local s = fmt(SEQ)
  local entry = {'s', s}
  for i = 1, #fields do entry[#entry + 1] = fields[i] end
  local prev = HEAD
  HEAD = string.sub(redis.sha1hex(prev .. '|' .. table.concat(entry, '|')), 1, 16)
  entry[#entry + 1] = 'p'
  entry[#entry + 1] = prev
  entry[#entry + 1] = 'h'
  entry[#entry + 1] = HEAD
  redis.call('XADD', K_LOG, 'MAXLEN', '~', RETAIN, s .. '-0', unpack(entry))
  produced[#produced + 1] = entry
  appended[#appended + 1] = entry
  last = s
  return s
end

-- `linking`: a link of the user follows in the same script, and writes its record and its unlinked mark itself.
local function do_join(user, by, linking)
  local s = append({'k', 'join', 'u', user, 'b', by})
  if not linking then
    redis.call('HSET', K_USERS, user, s)
    redis.call('ZADD', K_UNLINKED, now_ms(), user)
  end
  return {join = s, fresh = linking}
end

-- connections: "<node>/<generation>/<connection>" -> the user it is linked to.
local function conn_key(node, gen, conn) return node .. '/' .. gen .. '/' .. conn end

-- The connection's record is written first, by `change` (its HSETNX is also the check that the connection is free).
local function do_link(user, rec, node, gen, conn, by)
  append({'k', 'link', 'u', user, 'n', node, 'g', gen, 'c', conn, 'b', by})
  redis.call('HSET', K_USERS, user, rec.join .. ' ' .. gen .. ' ' .. conn .. ' ' .. node)
  redis.call('ZADD', K_LINKS, 0, node .. '/' .. user)
  if not rec.fresh then redis.call('ZREM', K_UNLINKED, user) end
end

local function do_unlink(user, rec, reason, by)
  append({'k', 'unlink', 'u', user, 'n', rec.node, 'g', rec.gen, 'c', rec.conn, 'r', reason, 'b', by})
  redis.call('HSET', K_USERS, user, rec.join)
  redis.call('ZREM', K_LINKS, rec.node .. '/' .. user)
  redis.call('HDEL', K_CONNS, conn_key(rec.node, rec.gen, rec.conn))
  -- unlinked: name -> when it was unlinked (ms, Redis's clock), for the grace period the reaper applies.
  redis.call('ZADD', K_UNLINKED, now_ms(), user)
end

local function do_leave(user, by)
  append({'k', 'leave', 'u', user, 'b', by})
  redis.call('HDEL', K_USERS, user)
  redis.call('ZREM', K_UNLINKED, user)
end

-- Unlinks every user linked to any generation of `node` (links: "<node>/<user>", scores 0, so a lex range is
-- exactly one node's users; node ids cannot contain '/', and '0' is the byte after '/').
local function unlink_node(node, reason, by)
  local members = redis.call('ZRANGEBYLEX', K_LINKS, '[' .. node .. '/', '(' .. node .. '0')
  for _, member in ipairs(members) do
    local user = string.sub(member, #node + 2)
    local rec = user_of(user)
    if rec and rec.node == node then
      do_unlink(user, rec, reason, by)
    else
      redis.call('ZREM', K_LINKS, member)
    end
  end
end

-- Stores the new seq and the chain's new head and tells the nodes: one PUBLISH per script, of its last seq, that
-- entry's hash and, on a second line, the entries it appended (a JSON array of their field lists, as in the log), so
-- that a node in step applies them without reading the log. A script that appended more than NOTICE_MAX (a reap of
-- a big node) leaves them out: the nodes read the log, and no subscriber's buffer takes a huge message.
-- Returns that JSON when it was made, or made because `json` asks for it (nil when nothing was appended).
local NOTICE_MAX = 1000
local function tell(json)
  if not last then return nil end
  redis.call('MSET', K_SEQ, last, K_HEAD, HEAD)
  local notice = last .. ' ' .. EPOCH .. ' ' .. HEAD
  local entries = nil
  if json or #appended <= NOTICE_MAX then entries = cjson.encode(appended) end
  if #appended <= NOTICE_MAX then notice = notice .. '\n' .. entries end
  redis.call('PUBLISH', CHANNEL, notice)
  return entries
end

-- Tells the nodes and replies with every entry appended.
local function finish(extra)
  tell()
  local reply = {'ok', extra or ''}
  for i = 1, #produced do reply[#reply + 1] = produced[i] end
  return reply
end

local function setup()
  EPOCH, RETAIN, CHANNEL = ARGV[1], ARGV[2], ARGV[3]
  return epoch_refusal(EPOCH)
end
"#;

/// `open(candidate, create)`: adopts the epoch in Redis, or creates the cluster state with `candidate` as its epoch
/// when there is none (first start, or Redis lost the state) and `create` is `1`. Creating wipes every other key of
/// the cluster but the generation counter (kept so that a generation is never reused, even across epochs).
/// Reply: `{epoch, created (0|1)}`, or `{'', 2}` when there is none and `create` is `0`.
const OPEN: &str = r#"
local current = redis.call('GET', KEYS[1])
if current then return {current, 0} end
if ARGV[2] ~= '1' then return {'', 2} end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[9], KEYS[10], KEYS[11])
redis.call('SET', KEYS[1], ARGV[1])
return {ARGV[1], 1}
"#;

/// One [`crate::wire::Change`] of `node`'s generation `gen`, whose lease is `live` or not: a refusal, or nil once its entries are
/// appended (in `produced`). The flag of a link is two characters, `1` or `0` each: new users accepted, and a linked
/// user's link replaced. Every refusal comes before any write, so a refused change changed nothing.
const CHANGE: &str = r#"
local function change(node, gen, live, kind, user, conn, flag)
  if not live then return refused('fenced') end
  local rec = user_of(user)
  local function here() return rec.node == node and rec.gen == gen and rec.conn == conn end
  if kind == 'join' then
    if rec then return refused('join-existing') end
    do_join(user, node)
  elseif kind == 'link' then
    local accept, replace = string.sub(flag, 1, 1) == '1', string.sub(flag, 2, 2) == '1'
    if not rec and not accept then return refused('not-accepting') end
    if rec and rec.node and not replace then return refused('already-linked') end
    -- The first write, and the last check: a connection links one user at most (HSETNX writes nothing if it does).
    if redis.call('HSETNX', K_CONNS, conn_key(node, gen, conn), user) == 0 then return refused('connection-linked') end
    if not rec then
      rec = do_join(user, node, true)
    elseif rec.node then
      do_unlink(user, rec, 'replaced', node)
    end
    do_link(user, rec, node, gen, conn, node)
  elseif kind == 'unlink' then
    if not rec then return refused('unlink-unknown') end
    if flag == '1' then
      if not here() then return refused('not-linked-here') end
    elseif not rec.node then
      return refused('unlink-unlinked')
    end
    do_unlink(user, rec, 'request', node)
  elseif kind == 'leave' then
    if not rec then return refused('kick-unknown') end
    if flag == '1' and not here() then return refused('not-linked-here') end
    if rec.node then do_unlink(user, rec, 'leave', node) end
    do_leave(user, node)
  else
    return refused('bad-request', kind)
  end
  return nil
end
"#;

/// `submit(epoch, retain, channel, node, generation, kind, user, connection, flag)`: one [`crate::wire::Change`].
const SUBMIT: &str = r#"
local refusal = setup()
if refusal then return refusal end
local refused_change = change(ARGV[4], ARGV[5], alive(ARGV[4], ARGV[5], now_ms()), ARGV[6], ARGV[7], ARGV[8], ARGV[9])
if refused_change then return refused_change end
return finish()
"#;

/// `submit_many(epoch, retain, channel, node, generation, (kind, user, connection, flag)...)`: several changes of one
/// node, decided one after the other as that many `submit` calls would be, in one script: the epoch, the clock and
/// the node's lease are read once, and the nodes are told once (one PUBLISH of the last seq). Reply:
/// `{'batch', entries, reply...}`: `entries` every entry the script appended, as the JSON its notification carries
/// (encoded once, in C: handing them back as Lua tables cost Redis more than deciding the changes), then one reply per
/// change, in order: a refusal, or `{'ok', '', first, count}`, its entries' place in `entries` (0-based). Or one
/// refusal for all (the epoch changed).
const SUBMIT_MANY: &str = r#"
local refusal = setup()
if refusal then return refusal end
local node, gen = ARGV[4], ARGV[5]
local live = alive(node, gen, now_ms())
local replies = {'batch', ''}
for i = 6, #ARGV, 4 do
  local first = #appended
  local reply = change(node, gen, live, ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
  if not reply then reply = {'ok', '', first, #appended - first} end
  replies[#replies + 1] = reply
end
replies[2] = tell(true) or '[]'
return replies
"#;

/// `register(epoch, retain, channel, node, ttl ms, instance)`: a new generation for `node` and a lease until now + ttl,
/// held by `instance` (the registering process's random token). A live lease of the node held by another instance is
/// refused `in-use` (detail: the ms it has left): one live process per node id. A lease past its deadline, or this
/// instance's own, is taken over: any user still linked to an older generation of the node is unlinked first
/// (`restarted`): that process is gone or fenced. Extra: the generation.
const REGISTER: &str = r#"
local refusal = setup()
if refusal then return refusal end
local node, ttl, instance = ARGV[4], tonumber(ARGV[5]), ARGV[6]
local now = now_ms()
local held, deadline, holder = lease_of(node)
if held and deadline >= now and holder ~= instance then return refused('in-use', fmt(deadline - now)) end
local gen = fmt(redis.call('INCR', K_GEN))
unlink_node(node, 'restarted', node)
hold(node, gen, now + ttl, instance)
return finish(gen)
"#;

/// `renew(epoch, retain, channel, node, generation, ttl ms, instance)`: extends a live lease of this generation, held
/// by this instance, to now + ttl. A lease past its deadline is gone even before a reaper removed it: refused
/// `fenced`.
const RENEW: &str = r#"
local refusal = setup()
if refusal then return refusal end
local node, gen, ttl, instance = ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7]
local now = now_ms()
local _, _, holder = lease_of(node)
if not alive(node, gen, now) or holder ~= instance then return refused('fenced') end
hold(node, gen, now + ttl, instance)
return finish()
"#;

/// `release(epoch, retain, channel, node, generation)`: a clean shutdown. Unlinks the node's users (`released`) and
/// removes its lease, if the lease is still this generation's (expired or not: nobody else has cleaned up yet).
const RELEASE: &str = r#"
local refusal = setup()
if refusal then return refusal end
local node, gen = ARGV[4], ARGV[5]
if lease_of(node) ~= gen then return refused('fenced') end
unlink_node(node, 'released', node)
redis.call('HDEL', K_NODES, node)
return finish()
"#;

/// `reap(epoch, retain, channel, by, grace ms)`: for every node whose lease is past its deadline, unlinks its users
/// (`expired`) and removes the lease; then, with a grace period (over 0), makes every user unlinked for longer than it
/// leave. Any node may run it; it needs no lease of its own.
const REAP: &str = r#"
local refusal = setup()
if refusal then return refusal end
local by, grace = ARGV[4], tonumber(ARGV[5]) or 0
local now = now_ms()
local all = redis.call('HGETALL', K_NODES)
for i = 1, #all, 2 do
  local node = all[i]
  local gen, deadline = string.match(all[i + 1], '^(%d+) (%d+)')
  if not gen or tonumber(deadline) < now then
    unlink_node(node, 'expired', by)
    redis.call('HDEL', K_NODES, node)
  end
end
if grace > 0 then
  for _, user in ipairs(redis.call('ZRANGEBYSCORE', K_UNLINKED, '-inf', now - grace)) do
    local rec = user_of(user)
    if rec and not rec.node then
      do_leave(user, by)
    else
      redis.call('ZREM', K_UNLINKED, user)
    end
  end
end
return finish()
"#;

/// `snapshot(epoch)`: the newest seq, its entry's hash, and every user with their record, atomically (in no order:
/// a record starts with the user's join seq, which the reader sorts by).
/// Reply: `{'ok', seq, hash, name, record, name, record, …}`.
const SNAPSHOT: &str = r#"
local current = redis.call('GET', KEYS[1])
if current ~= ARGV[1] then return {'refused', 'epoch', current or ''} end
local reply = {'ok', redis.call('GET', KEYS[2]) or '0', redis.call('GET', KEYS[11]) or '0'}
local users = redis.call('HGETALL', KEYS[4])
for i = 1, #users do reply[#reply + 1] = users[i] end
return reply
"#;

fn with_prelude(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

pub(crate) static OPEN_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(OPEN));
pub(crate) static SUBMIT_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{PRELUDE}\n{CHANGE}\n{SUBMIT}")));
pub(crate) static SUBMIT_MANY_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{PRELUDE}\n{CHANGE}\n{SUBMIT_MANY}")));
pub(crate) static REGISTER_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_prelude(REGISTER));
pub(crate) static RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_prelude(RENEW));
pub(crate) static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_prelude(RELEASE));
pub(crate) static REAP_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_prelude(REAP));
pub(crate) static SNAPSHOT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SNAPSHOT));
