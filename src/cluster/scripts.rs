//! The Lua scripts: every change to the shared state is one of these, atomic in Redis, so each
//! 0↔1 transition (a channel's first subscriber anywhere, a user's first connection anywhere,
//! and their last) is decided once for the whole cluster. Prototyped in CLUSTER.md
//! (Appendix A); changed here: ownership tuples are cjson-encoded (user ids and node names
//! may contain `|`), a subscription is owned per socket (so a repeated subscribe or
//! unsubscribe is a no-op), bus entries carry fields instead of frames (each node builds the
//! frame with the same code a single box uses), the subscribe's gate is the bus id *before*
//! its own entries (the joining socket is excluded from its `member_added` by `x` and does get
//! the new `subscription_count`), and the leases live in the app's slot.
//!
//! `KEYS[1]` is the app's key base (`pb:v1:{app}:`); every key is built from it.
//!
//! Keys under the base: `bus` (stream), `hooks` (stream), `fwd` (origin → last forwarded
//! spool seq), `sc:{c}` (node → subscriptions), `chans` (occupied channels), `pu:{c}` (user →
//! connections), `pi:{c}` (user → user_info), `pm:{c}` ([node, socket] → user), `own:{node}`
//! (the node's [`s`, channel, socket] tuples), `gen` / `pend` (webhook generations and pending
//! delayed webhooks), `cache:{c}` (the last event of a cache channel), `nodes` (leases),
//! `conns` (node → connections), `epoch`; for watchlists (the section at the end): `wu` (user →
//! signed-in connections anywhere), `ww` (user → connections watching it anywhere) and
//! `wo:{node}` (socket → `[user, [watched…]]`, the node's signed-in connections).

use std::sync::LazyLock;

use redis::Script;

/// Bus and hook streams are trimmed to about this many entries (`MAXLEN ~`): a node cut off
/// for longer than it takes the cluster to publish this many events loses its place (and says
/// so); about 30 MB of Redis memory for 300-byte events.
pub const MAXLEN: u64 = 100_000;

/// Pusher's delay on `channel_vacated` and `member_removed` webhooks, so a page reload (leave
/// then join within a second) sends neither.
pub const HOOK_DELAY_MS: u64 = 3000;

const HELPERS: &str = r#"
local P = KEYS[1]
local MAXLEN = 100000
local DELAY = 3000
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The newest bus id. An empty bus (new, or Redis lost its data) gets a no-op entry first, so
-- the id is one of this stream's: a node still holding entries of a lost stream in its
-- ring must not take them for entries after the gate.
local function last_id()
  local l = redis.call('XREVRANGE', P .. 'bus', '+', '-', 'COUNT', 1)
  if #l > 0 then return l[1][1] end
  return redis.call('XADD', P .. 'bus', '*', 'k', 'z')
end
local function bus(fields)
  local a = {P .. 'bus', 'MAXLEN', '~', MAXLEN, '*'}
  for _, v in ipairs(fields) do a[#a + 1] = v end
  return redis.call('XADD', unpack(a))
end
local function hook(name, chan, user, delay, key, gen)
  local a = {P .. 'hooks', 'MAXLEN', '~', MAXLEN, '*', 'name', name, 'channel', chan,
    'due', tostring(now_ms() + delay)}
  if user then a[#a + 1] = 'user'; a[#a + 1] = user end
  if key then a[#a + 1] = 'key'; a[#a + 1] = key; a[#a + 1] = 'gen'; a[#a + 1] = tostring(gen) end
  redis.call('XADD', unpack(a))
end
-- A channel's subscription count changed (apps with subscription_count on): its frame on the
-- bus and its webhook, as one box sends both.
local function count_changed(chan, n)
  bus({'k', 'sc', 'c', chan, 'n', tostring(n)})
  redis.call('XADD', P .. 'hooks', 'MAXLEN', '~', MAXLEN, '*', 'name', 'subscription_count',
    'channel', chan, 'due', tostring(now_ms()), 'count', tostring(n))
end
local function total(chan)
  local s = 0
  for _, v in ipairs(redis.call('HVALS', P .. 'sc:' .. chan)) do s = s + tonumber(v) end
  return s
end
local function ckey(chan) return cjson.encode({'c', chan}) end
local function ukey(chan, user) return cjson.encode({'u', chan, user}) end
-- 0 -> 1: a new generation; swallow the "up" while a delayed "down" is still pending.
local function rise(k)
  redis.call('HINCRBY', P .. 'gen', k, 1)
  if redis.call('HEXISTS', P .. 'pend', k) == 1 then
    redis.call('HDEL', P .. 'pend', k)
    return false
  end
  return true
end
-- 1 -> 0: remember which generation the delayed webhook belongs to.
local function fall(k)
  local g = tonumber(redis.call('HGET', P .. 'gen', k) or '0')
  redis.call('HSET', P .. 'pend', k, g)
  return g
end
-- One socket leaves one channel: the same for an unsubscribe, a closed connection and a reap.
local function leave(node, chan, socket, scf)
  if redis.call('SREM', P .. 'own:' .. node, cjson.encode({'s', chan, socket})) == 0 then
    return false
  end
  local f = cjson.encode({node, socket})
  local user = redis.call('HGET', P .. 'pm:' .. chan, f)
  if user then
    redis.call('HDEL', P .. 'pm:' .. chan, f)
    if redis.call('HINCRBY', P .. 'pu:' .. chan, user, -1) <= 0 then
      redis.call('HDEL', P .. 'pu:' .. chan, user)
      redis.call('HDEL', P .. 'pi:' .. chan, user)
      bus({'k', 'mr', 'c', chan, 'u', user})
      local k = ukey(chan, user)
      hook('member_removed', chan, user, DELAY, k, fall(k))
    end
  end
  if redis.call('HINCRBY', P .. 'sc:' .. chan, node, -1) <= 0 then
    redis.call('HDEL', P .. 'sc:' .. chan, node)
  end
  local t = total(chan)
  if t == 0 then
    redis.call('SREM', P .. 'chans', chan)
    local k = ckey(chan)
    hook('channel_vacated', chan, nil, DELAY, k, fall(k))
  elseif scf and not user then
    count_changed(chan, t)
  end
  return true
end
local function reap(node, scf)
  for _, t in ipairs(redis.call('SMEMBERS', P .. 'own:' .. node)) do
    local x = cjson.decode(t)
    leave(node, x[2], x[3], scf)
  end
  redis.call('DEL', P .. 'own:' .. node)
  redis.call('ZREM', P .. 'nodes', node)
  redis.call('HDEL', P .. 'conns', node)
end
"#;

/// SUBSCRIBE. ARGV: node, channel, socket, user ('' off presence), user_info ('' none),
/// max presence members, subscription_count frames ('1'/'0'), cache channel ('1'/'0').
/// Returns `{'ok', gate, {user, info, …}, {event, data}}` or `{'full'}`.
const SUBSCRIBE: &str = r#"
local node, chan, socket, user, info = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local own = P .. 'own:' .. node
local stup = cjson.encode({'s', chan, socket})
local gate = last_id()
if redis.call('SISMEMBER', own, stup) == 0 then
  if user ~= '' and redis.call('HEXISTS', P .. 'pu:' .. chan, user) == 0
      and redis.call('HLEN', P .. 'pu:' .. chan) >= tonumber(ARGV[6]) then
    return {'full'}
  end
  redis.call('SADD', own, stup)
  redis.call('HINCRBY', P .. 'sc:' .. chan, node, 1)
  local t = total(chan)
  if t == 1 then
    redis.call('SADD', P .. 'chans', chan)
    if rise(ckey(chan)) then hook('channel_occupied', chan, nil, 0) end
  end
  if user ~= '' then
    redis.call('HSET', P .. 'pm:' .. chan, cjson.encode({node, socket}), user)
    if redis.call('HINCRBY', P .. 'pu:' .. chan, user, 1) == 1 then
      redis.call('HSET', P .. 'pi:' .. chan, user, info)
      bus({'k', 'ma', 'c', chan, 'u', user, 'i', info, 'x', socket})
      if rise(ukey(chan, user)) then hook('member_added', chan, user, 0) end
    end
  elseif ARGV[7] == '1' then
    count_changed(chan, t)
  end
end
local members = {}
if user ~= '' then members = redis.call('HGETALL', P .. 'pi:' .. chan) end
local cache = {}
if ARGV[8] == '1' then
  local c = redis.call('HMGET', P .. 'cache:' .. chan, 'n', 'd')
  if c[1] and c[2] then cache = c end
end
return {'ok', gate, members, cache}
"#;

/// UNSUBSCRIBE. ARGV: node, channel, socket, subscription_count frames. Returns 1 or 0 (not
/// subscribed: already left, or reaped).
const UNSUBSCRIBE: &str = r#"
if leave(ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1') then return 1 end
return 0
"#;

/// REAP: the janitor. ARGV: subscription_count frames, and optionally a node that leaves now
/// (a clean shutdown). Reaps nodes whose lease is past, by Redis's clock, a few per call;
/// returns the reaped incarnations. Running it twice, or on two nodes at once, is a no-op.
const REAP: &str = r#"
local scf = ARGV[1] == '1'
if ARGV[2] and ARGV[2] ~= '' then redis.call('ZADD', P .. 'nodes', 0, ARGV[2]) end
local dead = redis.call('ZRANGEBYSCORE', P .. 'nodes', '-inf', now_ms(), 'LIMIT', 0, 4)
for _, node in ipairs(dead) do
  reap(node, scf)
  watch_reap(node)
end
return dead
"#;

/// HEARTBEAT. ARGV: node, lease ms, this node's connections, an epoch to set if none.
/// Returns `{had a lease, live nodes, connections on the other live nodes, epoch}`.
const HEARTBEAT: &str = r#"
local now = now_ms()
local had = redis.call('ZSCORE', P .. 'nodes', ARGV[1])
redis.call('ZADD', P .. 'nodes', now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', P .. 'conns', ARGV[1], ARGV[3])
local alive = redis.call('ZRANGEBYSCORE', P .. 'nodes', now, '+inf')
local others = 0
for _, n in ipairs(alive) do
  if n ~= ARGV[1] then others = others + tonumber(redis.call('HGET', P .. 'conns', n) or '0') end
end
local epoch = redis.call('GET', P .. 'epoch')
if not epoch then
  redis.call('SET', P .. 'epoch', ARGV[4])
  epoch = ARGV[4]
end
local h = 0
if had then h = 1 end
return {h, #alive, others, epoch}
"#;

/// FORWARD: the idempotent spool → bus step. ARGV: origin, the mark the forwarder knows it
/// left ('' when it knows none), then six per event: seq, except socket ('' none), name, data,
/// channels (JSON array), cache channels among them (JSON array). Events at or below the
/// origin's high-water mark are skipped, so a reconnect or a restart forwards again without
/// duplicates. Returns how many were added, or -1 (nothing added) when the mark is below the
/// one the forwarder left: Redis lost data (a restart without persistence, or with AOF losing
/// its last second), and with it bus entries other nodes may not have read. Adding on top
/// would raise the mark past them for good; the forwarder first goes back (`forward.rs`).
const FORWARD: &str = r#"
local origin = ARGV[1]
local mark = redis.call('HGET', P .. 'fwd', origin)
if ARGV[2] ~= '' and (not mark or tonumber(mark) < tonumber(ARGV[2])) then return -1 end
local last = tonumber(mark or '-1')
local added = 0
local last_s = ''
local i = 3
while i + 5 <= #ARGV do
  local q = tonumber(ARGV[i])
  if q > last then
    bus({'k', 'e', 'o', origin, 'q', ARGV[i], 'x', ARGV[i + 1], 'n', ARGV[i + 2],
      'd', ARGV[i + 3], 'cs', ARGV[i + 4]})
    for _, c in ipairs(cjson.decode(ARGV[i + 5])) do
      redis.call('HSET', P .. 'cache:' .. c, 'n', ARGV[i + 2], 'd', ARGV[i + 3])
      redis.call('PEXPIRE', P .. 'cache:' .. c, 1800000)
    end
    last = q
    last_s = ARGV[i]
    added = added + 1
  end
  i = i + 6
end
if added > 0 then redis.call('HSET', P .. 'fwd', origin, last_s) end
return added
"#;

/// CONFIRM: a delayed webhook is due. ARGV: transition key, generation. 1: send it (nothing
/// undid the transition meanwhile); 0: drop it.
const CONFIRM: &str = r#"
if redis.call('HGET', P .. 'pend', ARGV[1]) == ARGV[2] then
  redis.call('HDEL', P .. 'pend', ARGV[1])
  return 1
end
return 0
"#;

/// CHANNELS: occupied channels starting with ARGV[1], each `{name, subscriptions, users}`.
const CHANNELS: &str = r#"
local out = {}
for _, c in ipairs(redis.call('SMEMBERS', P .. 'chans')) do
  if string.sub(c, 1, #ARGV[1]) == ARGV[1] then
    out[#out + 1] = {c, total(c), redis.call('HLEN', P .. 'pu:' .. c)}
  end
end
return out
"#;

/// CHANNEL: `{subscriptions, users}` of channel ARGV[1].
const CHANNEL: &str = r#"
return {total(ARGV[1]), redis.call('HLEN', P .. 'pu:' .. ARGV[1])}
"#;

/// CACHED: `{event, data, ttl ms}` of cache channel ARGV[1], or `{}`.
const CACHED: &str = r#"
local c = redis.call('HMGET', P .. 'cache:' .. ARGV[1], 'n', 'd')
if not (c[1] and c[2]) then return {} end
return {c[1], c[2], redis.call('PTTL', P .. 'cache:' .. ARGV[1])}
"#;

fn script(body: &str) -> Script {
    build(body, "#!lua")
}

/// A read-only script: still answers while Redis is out of memory (and may run on a replica).
fn read_script(body: &str) -> Script {
    build(body, "#!lua flags=no-writes")
}

fn build(body: &str, shebang: &str) -> Script {
    let helpers = HELPERS
        .replace("MAXLEN = 100000", &format!("MAXLEN = {MAXLEN}"))
        .replace("DELAY = 3000", &format!("DELAY = {HOOK_DELAY_MS}"));
    // The shebang (Redis 7, Valkey) makes Redis refuse a writing script up front when it is
    // out of memory, instead of stopping it half way with some writes done (tried on 7.0.15
    // with maxmemory 2mb: a plain EVAL wrote until the limit, a `#!lua` one wrote nothing).
    Script::new(&format!("{shebang}\n{helpers}{WATCH_HELPERS}{body}"))
}

pub static SUBSCRIBE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(SUBSCRIBE));
pub static UNSUBSCRIBE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(UNSUBSCRIBE));
pub static REAP_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(REAP));
pub static HEARTBEAT_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(HEARTBEAT));
pub static FORWARD_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(FORWARD));
pub static CONFIRM_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(CONFIRM));
pub static CHANNELS_SCRIPT: LazyLock<Script> = LazyLock::new(|| read_script(CHANNELS));
pub static CHANNEL_SCRIPT: LazyLock<Script> = LazyLock::new(|| read_script(CHANNEL));
pub static CACHED_SCRIPT: LazyLock<Script> = LazyLock::new(|| read_script(CACHED));

// ---------------------------------------------------------------------------------------------
// Watchlists: `online` when a user's first signed-in connection anywhere appears, `offline`
// when the last one anywhere is gone (closed, signed in again as someone else, or reaped with
// its node), each decided once here and sent to every node's watchers through the bus in
// order. Only signed-in connections of apps with `watchlist` on cost anything: one script per
// signin and one per signout. A transition goes on the bus only while someone anywhere
// watches the user (`ww`), so a shop whose users watch nobody adds no bus traffic.
// ---------------------------------------------------------------------------------------------

const WATCH_HELPERS: &str = r#"
-- A user's transition, on the bus only while someone watches them.
local function watch_note(user, kind)
  if tonumber(redis.call('HGET', P .. 'ww', user) or '0') > 0 then bus({'k', kind, 'u', user}) end
end
-- One signed-in connection goes: the same for a signout, a closed connection and a reap. Its
-- watchlist goes first, as on one box (a user watching itself gets no `offline` of its own).
local function watch_leave(node, socket)
  local wo = P .. 'wo:' .. node
  local t = redis.call('HGET', wo, socket)
  if not t then return false end
  redis.call('HDEL', wo, socket)
  local x = cjson.decode(t)
  for _, w in ipairs(x[2]) do
    if redis.call('HINCRBY', P .. 'ww', w, -1) <= 0 then redis.call('HDEL', P .. 'ww', w) end
  end
  if redis.call('HINCRBY', P .. 'wu', x[1], -1) <= 0 then
    redis.call('HDEL', P .. 'wu', x[1])
    watch_note(x[1], 'off')
  end
  return true
end
local function watch_reap(node)
  for _, s in ipairs(redis.call('HKEYS', P .. 'wo:' .. node)) do watch_leave(node, s) end
  redis.call('DEL', P .. 'wo:' .. node)
end
"#;

/// SIGNIN. ARGV: node, socket, user, then the distinct user ids it watches. Idempotent per
/// socket. The user goes online first, then its watchlist counts, as on one box. Returns `{}`
/// with no watchlist, else `{gate, online}`: the watched users signed in anywhere, consistent
/// with the bus at `gate` (taken after this script's own entry, so the signing-in socket never
/// gets its own `online` from the bus).
const SIGNIN: &str = r#"
local node, socket, user = ARGV[1], ARGV[2], ARGV[3]
local watched = {}
for i = 4, #ARGV do watched[#watched + 1] = ARGV[i] end
if redis.call('HSETNX', P .. 'wo:' .. node, socket, cjson.encode({user, watched})) == 1 then
  if redis.call('HINCRBY', P .. 'wu', user, 1) == 1 then watch_note(user, 'on') end
  for _, w in ipairs(watched) do redis.call('HINCRBY', P .. 'ww', w, 1) end
end
if #watched == 0 then return {} end
local online = {}
for _, w in ipairs(watched) do
  if redis.call('HEXISTS', P .. 'wu', w) == 1 then online[#online + 1] = w end
end
return {last_id(), online}
"#;

/// SIGNOUT. ARGV: node, socket. Returns 1, or 0 when it was not signed in here (already
/// signed out, or reaped).
const SIGNOUT: &str = r#"
if watch_leave(ARGV[1], ARGV[2]) then return 1 end
return 0
"#;

pub static SIGNIN_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(SIGNIN));
pub static SIGNOUT_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(SIGNOUT));

// ---------------------------------------------------------------------------------------------
// Resume: a token's lineage (`resume::remote`), a hash under `lin:{token}` with `o`, the socket
// id of the connection that holds it, and `l`, the lineage. Only its holder writes it; a
// connection that reconnects elsewhere claims it first, so the old connection's last write
// (its node noticed the end late) cannot undo what the new one inherited.
// ---------------------------------------------------------------------------------------------

/// LINEAGE_SAVE. ARGV: token, owner, lineage, ttl ms. Returns 1, or 0 when another
/// connection holds the token now.
const LINEAGE_SAVE: &str = r#"
local k = P .. 'lin:' .. ARGV[1]
local o = redis.call('HGET', k, 'o')
if o and o ~= ARGV[2] then return 0 end
redis.call('HSET', k, 'o', ARGV[2], 'l', ARGV[3])
redis.call('PEXPIRE', k, ARGV[4])
return 1
"#;

/// LINEAGE_CLAIM. ARGV: token, owner, ttl ms. The lineage, now held by `owner`; nil when
/// there is none (nothing is created: the owner's first save does that).
const LINEAGE_CLAIM: &str = r#"
local k = P .. 'lin:' .. ARGV[1]
local l = redis.call('HGET', k, 'l')
if not l then return false end
redis.call('HSET', k, 'o', ARGV[2])
redis.call('PEXPIRE', k, ARGV[3])
return l
"#;

pub static LINEAGE_SAVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(LINEAGE_SAVE));
pub static LINEAGE_CLAIM_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(LINEAGE_CLAIM));
