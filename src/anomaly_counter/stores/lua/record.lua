-- Count one occurrence, atomically, in one call.
-- KEYS: meta tail ring1h ring24h ring7d ring30d ids days history
--       index1h index24h index7d index30d signature      (all under one hash tag)
-- ARGV: anomaly_key at now id_digest('' = none) signature_json policy
--   policy: 't_repeat,t_escalate,t_fix,tail_capacity,ttl_seconds,dedup_horizon_ms,
--            dedup_max_ids,fix_validity_ms,retention_days'
-- Returns reply() with four extra numbers: duplicate escalated_to regressed newly_regressed,
-- and no signature (the caller has the one it sent).
local meta, tail, ids, days, history = KEYS[1], KEYS[2], KEYS[7], KEYS[8], KEYS[9]
local rings = {KEYS[3], KEYS[4], KEYS[5], KEYS[6]}
local member, at, now, id = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local p = numbers(ARGV[6])
local t1, t2, t3, cap, ttl, horizon, max_ids, fix_validity, retention =
  p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9]
local REFRESH_EVERY = 3600000  -- key lifetimes are pushed out at most hourly

local s = load_state(meta)

if id ~= '' then
  local seen = redis.call('ZSCORE', ids, id)
  if seen and tonumber(seen) >= now - horizon then
    -- seen again: the horizon runs from the last delivery (a long firing episode stays one)
    redis.call('ZADD', ids, now, id)
    return reply(s, counts(s, tail, rings, at), days, now, retention, fix_validity, {1, 0, 0, 0},
                 '')
  end
  redis.call('ZADD', ids, now, id)
  redis.call('ZREMRANGEBYSCORE', ids, '-inf', '(' .. (now - horizon))
  local n = redis.call('ZCARD', ids)
  -- bounded memory: past max_ids the oldest ids are forgotten early (documented)
  if n > max_ids then redis.call('ZREMRANGEBYRANK', ids, 0, n - max_ids - 1) end
end

if s.first == nil then
  s.first = at
  redis.call('SET', KEYS[14], ARGV[5])
elseif at < s.first then
  s.first = at
end
add_occurrence(s, tail, rings, at, cap)

local now_counts = counts(s, tail, rings, s.newest)
local at_counts = now_counts
if at ~= s.newest then at_counts = counts(s, tail, rings, at) end

-- Escalation is judged on the current 24 h count, so a late occurrence can complete a crossing
-- but a cooled-off anomaly is not re-announced by one.
local level = level_for(now_counts[2], t1, t2, t3)
local escalated = 0
if level > s.level then escalated = level end

local indexes = {KEYS[10], KEYS[11], KEYS[12], KEYS[13]}
for i = 1, 4 do
  if now_counts[i] > s.bounds[i] then
    local bound = index_bound(now_counts[i])
    redis.call('ZADD', indexes[i], bound, member)
    s.bounds[i] = bound
  end
end

local regressed, newly = 0, 0
if s.fix ~= nil and at >= s.fix and now - s.fix < fix_validity then
  regressed = 1
  if s.reg == nil then
    newly = 1
    redis.call('HSET', meta, 'reg', at)
  end
end

local refresh = now - s.refreshed >= REFRESH_EVERY
if refresh then s.refreshed = now end
s.level = level
if s.sums_changed then
  redis.call('HSET', meta, 'st', pack_state(s), 'wc', pack_sums(s))
else
  redis.call('HSET', meta, 'st', pack_state(s))
end

if refresh then
  local meta_ttl = ttl
  if s.fix ~= nil then meta_ttl = math.max(ttl, floor((s.fix + fix_validity - now) / 1000)) end
  redis.call('EXPIRE', meta, meta_ttl)
  for _, key in ipairs({tail, rings[1], rings[2], rings[3], rings[4], days, history,
                        indexes[1], indexes[2], indexes[3], indexes[4], KEYS[14]}) do
    redis.call('EXPIRE', key, ttl)
  end
end
if id ~= '' then redis.call('EXPIRE', ids, math.max(ttl, floor(horizon / 1000))) end

return reply(s, at_counts, days, now, retention, fix_validity, {0, escalated, regressed, newly},
             '')
