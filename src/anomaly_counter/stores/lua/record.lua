-- Count occurrences, in order, atomically, in one call.
-- KEYS: for each occurrence, the meta key of its anomaly ('...:m'); the script names the
--       anomaly's other keys and its shard's project indexes from it (see load_state and
--       index_key), and only when it uses them: a busy anomaly's call touches its meta and its
--       tail alone. On a cluster, the caller groups the occurrences of one slot.
-- ARGV: the policy (t_repeat t_escalate t_fix tail_capacity ttl_seconds dedup_horizon_ms
--       dedup_max_ids fix_validity_ms retention_days), then for each occurrence:
--       anomaly_key at now id_digest('' = none) signature
-- Returns one reply() per occurrence, each with four extra numbers (duplicate escalated_to
-- regressed newly_regressed) and no signature (the caller has the one it sent).
local p = {}
for i = 1, 9 do p[i] = tonumber(ARGV[i]) end
local t1, t2, t3, cap, ttl, horizon, max_ids, fix_validity, retention =
  p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9]
local REFRESH_EVERY = 3600000  -- key lifetimes are pushed out at most hourly

local function record_one(meta, member, at, now, id, signature)
  local s = load_state(meta)

  if id ~= '' then
    local ids = key_of(s, 'i')
    local seen = redis.call('ZSCORE', ids, id)
    if seen and tonumber(seen) >= now - horizon then
      -- seen again: the horizon runs from the last delivery (a long firing episode stays one)
      redis.call('ZADD', ids, now, id)
      return reply(s, counts(s, at), now, retention, fix_validity, '', 1, 0, 0, 0)
    end
    redis.call('ZADD', ids, now, id)
    redis.call('ZREMRANGEBYSCORE', ids, '-inf', '(' .. (now - horizon))
    local n = redis.call('ZCARD', ids)
    -- bounded memory: past max_ids the oldest ids are forgotten early (documented)
    if n > max_ids then redis.call('ZREMRANGEBYRANK', ids, 0, n - max_ids - 1) end
    redis.call('EXPIRE', ids, math.max(ttl, floor(horizon / 1000)))
  end

  if s[FIRST] < 0 then
    s[FIRST] = at
    redis.call('SET', key_of(s, 's'), signature)
  elseif at < s[FIRST] then
    s[FIRST] = at
  end
  add_occurrence(s, at, cap)

  local now_counts = counts(s, s[NEWEST])
  local at_counts = now_counts
  if at ~= s[NEWEST] then at_counts = counts(s, at) end

  -- Escalation is judged on the current 24 h count, so a late occurrence can complete a
  -- crossing but a cooled-off anomaly is not re-announced by one.
  local level = level_for(now_counts[2], t1, t2, t3)
  local escalated = 0
  if level > s[LEVEL] then escalated = level end
  s[LEVEL] = level

  for w = 1, 4 do
    if now_counts[w] > s[BOUND + w] then
      s[BOUND + w] = index_bound(now_counts[w])
      redis.call('ZADD', index_key(meta, w), s[BOUND + w], member)
    end
  end

  local regressed, newly = 0, 0
  local fix = s[FIX]
  if fix >= 0 and at >= fix and now - fix < fix_validity then
    regressed = 1
    if s[REGRESSED] < 0 then
      newly = 1
      s[REGRESSED] = at
    end
  end

  local refresh = now - s[REFRESHED] >= REFRESH_EVERY
  if refresh then s[REFRESHED] = now end
  redis.call('HSET', meta, 'st', pack_state(s))
  if refresh then
    local meta_ttl = ttl
    if fix >= 0 then meta_ttl = math.max(ttl, floor((fix + fix_validity - now) / 1000)) end
    redis.call('EXPIRE', meta, meta_ttl)
    redis.call('EXPIRE', s[TAIL_KEY], meta_ttl)  -- the state's size counts on it: same life
    local names = {key_of(s, 'd'), key_of(s, 'h'), key_of(s, 's')}
    for w = 1, 4 do
      names[#names + 1] = ring_key(s, w)
      names[#names + 1] = index_key(meta, w)
    end
    for _, name in ipairs(names) do redis.call('EXPIRE', name, ttl) end
  end
  return reply(s, at_counts, now, retention, fix_validity, '', 0, escalated, regressed, newly)
end

local out = {}
local k = 1
for a = 10, #ARGV, 5 do
  out[k] = record_one(KEYS[k], ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]),
                      ARGV[a + 3], ARGV[a + 4])
  k = k + 1
end
return out
