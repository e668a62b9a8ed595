-- Count occurrences of anomalies of one project shard, in order, atomically, in one call.
-- KEYS: index1h index24h index7d index30d, then for each occurrence ten keys:
--       meta ring1h ring24h ring7d ring30d ids days history signature
--       (all under the shard's hash tag)
-- ARGV: the policy (t_repeat t_escalate t_fix tail_capacity ttl_seconds dedup_horizon_ms
--       dedup_max_ids fix_validity_ms retention_days), then for each occurrence:
--       anomaly_key at now id_digest('' = none) signature
-- Returns one reply() per occurrence, each with four extra numbers (duplicate escalated_to
-- regressed newly_regressed) and no signature (the caller has the one it sent).
local p = {}
for i = 1, 9 do p[i] = tonumber(ARGV[i]) end
local t1, t2, t3, cap, ttl, horizon, max_ids, fix_validity, retention =
  p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9]
local indexes = {KEYS[1], KEYS[2], KEYS[3], KEYS[4]}
local REFRESH_EVERY = 3600000  -- key lifetimes are pushed out at most hourly

local function record_one(k, member, at, now, id, signature)
  local meta, ids, days, history = KEYS[k], KEYS[k + 5], KEYS[k + 6], KEYS[k + 7]
  local rings = {KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]}
  local s = load_state(meta)

  if id ~= '' then
    local seen = redis.call('ZSCORE', ids, id)
    if seen and tonumber(seen) >= now - horizon then
      -- seen again: the horizon runs from the last delivery (a long firing episode stays one)
      redis.call('ZADD', ids, now, id)
      return reply(s, counts(s, rings, at), days, now, retention, fix_validity,
                   {1, 0, 0, 0}, '')
    end
    redis.call('ZADD', ids, now, id)
    redis.call('ZREMRANGEBYSCORE', ids, '-inf', '(' .. (now - horizon))
    local n = redis.call('ZCARD', ids)
    -- bounded memory: past max_ids the oldest ids are forgotten early (documented)
    if n > max_ids then redis.call('ZREMRANGEBYRANK', ids, 0, n - max_ids - 1) end
    redis.call('EXPIRE', ids, math.max(ttl, floor(horizon / 1000)))
  end

  if s.first == nil then
    s.first = at
    redis.call('SET', KEYS[k + 8], signature)
  elseif at < s.first then
    s.first = at
  end
  add_occurrence(s, rings, at, cap)

  local now_counts = counts(s, rings, s.newest)
  local at_counts = now_counts
  if at ~= s.newest then at_counts = counts(s, rings, at) end

  -- Escalation is judged on the current 24 h count, so a late occurrence can complete a
  -- crossing but a cooled-off anomaly is not re-announced by one.
  local level = level_for(now_counts[2], t1, t2, t3)
  local escalated = 0
  if level > s.level then escalated = level end
  s.level = level

  for i = 1, 4 do
    if now_counts[i] > s.bounds[i] then
      s.bounds[i] = index_bound(now_counts[i])
      redis.call('ZADD', indexes[i], s.bounds[i], member)
    end
  end

  local regressed, newly = 0, 0
  if s.fix ~= nil and at >= s.fix and now - s.fix < fix_validity then
    regressed = 1
    if s.reg == nil then
      newly = 1
      s.reg = at
    end
  end

  local refresh = now - s.refreshed >= REFRESH_EVERY
  if refresh then s.refreshed = now end
  redis.call('HSET', meta, 'st', pack_state(s), 'tl', s.tail)
  if refresh then
    local meta_ttl = ttl
    if s.fix ~= nil then meta_ttl = math.max(ttl, floor((s.fix + fix_validity - now) / 1000)) end
    redis.call('EXPIRE', meta, meta_ttl)
    for _, key in ipairs({rings[1], rings[2], rings[3], rings[4], days, history,
                          indexes[1], indexes[2], indexes[3], indexes[4], KEYS[k + 8]}) do
      redis.call('EXPIRE', key, ttl)
    end
  end
  return reply(s, at_counts, days, now, retention, fix_validity,
               {0, escalated, regressed, newly}, '')
end

local out = {}
local k = 5
for a = 10, #ARGV, 5 do
  out[#out + 1] = record_one(k, ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]),
                             ARGV[a + 3], ARGV[a + 4])
  k = k + 9
end
return out
