-- Count one occurrence, atomically, in one call.
-- KEYS: meta tail ring1h ring24h ring7d ring30d ids days history
--       index1h index24h index7d index30d          (all under one hash tag)
-- ARGV: anomaly_key at now id_digest('' = none) signature_json t_repeat t_escalate t_fix
--       tail_capacity ttl_seconds dedup_horizon_ms dedup_max_ids fix_validity_ms retention_days
-- Returns: duplicate escalated_to regressed newly_regressed, then the snapshot at `at`.
local meta, tail, days, history, ids = KEYS[1], KEYS[2], KEYS[8], KEYS[9], KEYS[7]
local rings = {KEYS[3], KEYS[4], KEYS[5], KEYS[6]}
local member, at, now, id = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local t1, t2, t3 = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local cap, ttl = tonumber(ARGV[9]), tonumber(ARGV[10])
local horizon, max_ids = tonumber(ARGV[11]), tonumber(ARGV[12])
local fix_validity, retention = tonumber(ARGV[13]), tonumber(ARGV[14])

if id ~= '' then
  local seen = redis.call('ZSCORE', ids, id)
  if seen and tonumber(seen) >= now - horizon then
    -- seen again: the horizon runs from the last delivery (a long firing episode stays one)
    redis.call('ZADD', ids, now, id)
    local out = {1, 0, 0, 0}
    for _, v in ipairs(snapshot(meta, tail, rings, days, at, now, retention, fix_validity)) do
      out[#out + 1] = v
    end
    return out
  end
  redis.call('ZADD', ids, now, id)
  redis.call('ZREMRANGEBYSCORE', ids, '-inf', '(' .. (now - horizon))
  local n = redis.call('ZCARD', ids)
  -- bounded memory: past max_ids the oldest ids are forgotten early (documented)
  if n > max_ids then redis.call('ZREMRANGEBYRANK', ids, 0, n - max_ids - 1) end
end

local first = num(redis.call('HGET', meta, 'fs'), nil)
if first == nil then
  redis.call('HSET', meta, 'fs', at, 'sig', ARGV[5])
elseif at < first then
  redis.call('HSET', meta, 'fs', at)
end
add_occurrence(meta, tail, rings, at, cap)

local newest = tonumber(redis.call('HGET', meta, 'ls'))
local now_counts = counts(meta, tail, rings, newest)
local level = level_for(now_counts[2], t1, t2, t3)
local previous = num(redis.call('HGET', meta, 'lvl'), 0)
local escalated = 0
if level > previous then escalated = level end
if level ~= previous then redis.call('HSET', meta, 'lvl', level) end

local indexes = {KEYS[10], KEYS[11], KEYS[12], KEYS[13]}
for i = 1, 4 do
  redis.call('ZADD', indexes[i], now_counts[i], member)
  redis.call('EXPIRE', indexes[i], ttl)
end

local regressed, newly = 0, 0
local fix = num(redis.call('HGET', meta, 'fix'), nil)
if fix ~= nil and at >= fix and now - fix < fix_validity then
  regressed = 1
  if redis.call('HSETNX', meta, 'reg', at) == 1 then newly = 1 end
end

local meta_ttl = ttl
if fix ~= nil then meta_ttl = math.max(ttl, floor((fix + fix_validity - now) / 1000)) end
redis.call('EXPIRE', meta, meta_ttl)
for _, key in ipairs({tail, rings[1], rings[2], rings[3], rings[4], days, history}) do
  redis.call('EXPIRE', key, ttl)
end
if id ~= '' then redis.call('EXPIRE', ids, math.max(ttl, floor(horizon / 1000))) end

local out = {0, escalated, regressed, newly}
for _, v in ipairs(snapshot(meta, tail, rings, days, at, now, retention, fix_validity)) do
  out[#out + 1] = v
end
return out
