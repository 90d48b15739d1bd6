//! The Lua scripts that make each channel operation one atomic step in Redis.
//!
//! Every key a script touches is passed in `KEYS` and carries the channel's hash tag, so
//! the scripts also run unchanged on a Redis Cluster node. `redis::Script` sends
//! `EVALSHA` and falls back to `EVAL` (which loads the script) on `NOSCRIPT`.
//! Times come from the server's `TIME` (Redis 7 replicates script effects, not the
//! script), so every node ages history by one clock.

use std::sync::LazyLock;

use redis::Script;

/// Publish. KEYS: meta, stream, idempotency key. ARGV: 1 body, 2 epoch for a new stream,
/// 3 history size, 4 history ttl ms, 5 quiet keep ms, 6 idempotency fingerprint (`""`:
/// none), 7 idempotency ttl ms, 8 pub/sub channel, 9 `PUBLISH` or `SPUBLISH` (cluster),
/// 10 the server's incarnation (see `RestartEpochs`): `c:<run_id>` checked against the
/// meta's, `n:<run_id>` only recorded, `""` neither.
/// Returns `{status, offset, epoch, receivers}`; status 0 published, 1 replayed,
/// 2 idempotency conflict.
pub static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local meta, stream, idem = KEYS[1], KEYS[2], KEYS[3]
local fp = ARGV[6]
if fp ~= '' then
  local prev = redis.call('HMGET', idem, 'f', 'o', 'e', 'r')
  if prev[1] then
    if prev[1] == fp then
      return {1, tonumber(prev[2]), prev[3], tonumber(prev[4])}
    end
    return {2, 0, '', 0}
  end
end
local epoch = redis.call('HGET', meta, 'e')
local check, run = string.sub(ARGV[10], 1, 1), string.sub(ARGV[10], 3)
if epoch and check == 'c' and redis.call('HGET', meta, 'r') ~= run then
  -- Written by an earlier server run that may have lost its tail: a new incarnation.
  epoch = false
  redis.call('DEL', meta)
end
if not epoch then
  epoch = ARGV[2]
  redis.call('HSET', meta, 'e', epoch)
  if run ~= '' then redis.call('HSET', meta, 'r', run) end
  -- A stream left from a lost incarnation would refuse the new, lower ids.
  redis.call('DEL', stream)
end
local offset = redis.call('HINCRBY', meta, 's', 1)
local soffset = string.format('%.0f', offset)
local size = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local keep = tonumber(ARGV[5])
if size > 0 then
  local t = redis.call('TIME')
  local now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  redis.call('XADD', stream, 'MAXLEN', size, soffset .. '-0', 'd', ARGV[1], 't', now)
  if ttl > 0 then
    redis.call('PEXPIRE', stream, ttl)
    redis.call('PEXPIRE', meta, math.max(ttl, keep))
  else
    redis.call('PERSIST', stream)
    redis.call('PERSIST', meta)
  end
else
  -- No history: the stream restarts after this publication (a reader from before it
  -- gets an incomplete page, never a hole), but offsets go on so gaps show.
  redis.call('DEL', stream)
  redis.call('PEXPIRE', meta, keep)
end
local receivers = redis.call(ARGV[9], ARGV[8], soffset .. ' ' .. epoch .. ' ' .. ARGV[1])
if fp ~= '' then
  redis.call('HSET', idem, 'f', fp, 'o', soffset, 'e', epoch, 'r', receivers)
  redis.call('PEXPIRE', idem, ARGV[7])
end
return {0, offset, epoch, receivers}
"#,
    )
});

/// History. KEYS: meta, stream. ARGV: 1 mode (`p` position only, `f` forward, `r`
/// reverse), 2 start id (`-`, `+` or `<offset>-0`), 3 count, 4 age limit ms (0: none),
/// 5 the server's incarnation (as for publish), 6 epoch for a new incarnation,
/// 7 quiet keep ms. A stream written by an earlier server run gets a new epoch here
/// already (offset 0, history dropped), so no reader sees a position that may regress;
/// a stream without a meta gets its epoch here (offset 0), as the `Broker` contract asks.
/// Entries older than the age limit are trimmed first (at most 4096 per read). Returns `{epoch, offset, id1,
/// body1, id2, body2, ...}`.
pub static HISTORY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local pos = redis.call('HMGET', KEYS[1], 'e', 's', 'r')
local epoch = pos[1] or ''
local offset = tonumber(pos[2] or '0')
local check, run = string.sub(ARGV[5], 1, 1), string.sub(ARGV[5], 3)
if epoch ~= '' and check == 'c' and pos[3] ~= run then
  redis.call('DEL', KEYS[1], KEYS[2])
  epoch = ARGV[6]
  offset = 0
  redis.call('HSET', KEYS[1], 'e', epoch, 's', 0, 'r', run)
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
end
if epoch == '' then
  -- A read creates the stream's epoch, so that a subscriber learns the epoch the
  -- coming publications belong to; a stream left without its meta is from a lost
  -- incarnation.
  epoch = ARGV[6]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 's', 0)
  if run ~= '' then redis.call('HSET', KEYS[1], 'r', run) end
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
end
local out = {epoch, offset}
if ARGV[1] == 'p' then
  return out
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  local t = redis.call('TIME')
  local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - ttl
  -- Bounded work per read: a longer backlog of old entries goes on the next reads.
  for _ = 1, 64 do
    local batch = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 64)
    if #batch == 0 then break end
    local old = {}
    local fresh = false
    for _, e in ipairs(batch) do
      local f = e[2]
      local time = 0
      for i = 1, #f, 2 do
        if f[i] == 't' then time = tonumber(f[i + 1]) end
      end
      if time >= cutoff then
        fresh = true
        break
      end
      old[#old + 1] = e[1]
    end
    if #old > 0 then redis.call('XDEL', KEYS[2], unpack(old)) end
    if fresh then break end
  end
end
local entries
if ARGV[1] == 'f' then
  entries = redis.call('XRANGE', KEYS[2], ARGV[2], '+', 'COUNT', ARGV[3])
else
  entries = redis.call('XREVRANGE', KEYS[2], ARGV[2], '-', 'COUNT', ARGV[3])
end
for _, e in ipairs(entries) do
  local f = e[2]
  for i = 1, #f, 2 do
    if f[i] == 'd' then
      out[#out + 1] = e[1]
      out[#out + 1] = f[i + 1]
    end
  end
end
return out
"#,
    )
});

/// Removes expired presence entries. Needs KEYS info, users, expiry and a local `now`.
const PURGE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for i = 1, #gone, 100 do
  local chunk = {}
  for j = i, math.min(i + 99, #gone) do chunk[#chunk + 1] = gone[j] end
  redis.call('HDEL', KEYS[1], unpack(chunk))
  redis.call('HDEL', KEYS[2], unpack(chunk))
end
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now) end
"#;

/// Presence join or refresh. KEYS: info hash, users hash, expiry zset. ARGV: client,
/// encoded info, user, ttl ms.
pub static JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[3], now + ttl, ARGV[1])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
return 1
"#,
    )
});

/// Presence members (after purging expired ones). KEYS: info, users, expiry.
pub static PRESENCE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{PURGE}\nreturn redis.call('HVALS', KEYS[1])")));

/// Presence counts `{clients, distinct users}` (after purging). KEYS: info, users, expiry.
pub static STATS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PURGE}\n{}",
        r#"
local users = redis.call('HVALS', KEYS[2])
local seen, n = {}, 0
for _, u in ipairs(users) do
  if not seen[u] then seen[u] = true; n = n + 1 end
end
return {#users, n}
"#
    ))
});
