-- Shared by every anomaly-counter script (prepended to each at load time).
-- Mirrors anomaly_counter/windows.py: the same tail, rings and error bound; the contract tests
-- hold both to one brute-force model. All times are integer milliseconds, UTC.

local WINDOW = {3600000, 86400000, 604800000, 2592000000}
local GRAIN = {60000, 1440000, 10080000, 43200000}
local RING = 124
local DAY = 86400000
local floor = math.floor

local function num(value, default)
  if value == false or value == nil then return default end
  return tonumber(value)
end

-- Count one occurrence at t into the tail (kept to `cap` times) and the four rings.
local function add_occurrence(meta, tail, rings, t, cap)
  local newest = num(redis.call('HGET', meta, 'ls'), nil)
  -- Make room before adding, never after: a sorted set that grew past 128 entries would stay
  -- in Redis's large encoding (about 6x the memory) even once trimmed back.
  local evicted = num(redis.call('HGET', meta, 'ev'), nil)
  local size = redis.call('ZCARD', tail)
  local function evict(count)
    local popped = redis.call('ZPOPMIN', tail, count)
    for i = 2, #popped, 2 do
      local score = tonumber(popped[i])
      if evicted == nil or score > evicted then evicted = score end
    end
  end
  if size > cap then evict(size - cap); size = cap end  -- the capacity was lowered since
  if size == cap then
    local oldest = redis.call('ZRANGE', tail, 0, 0, 'WITHSCORES')
    if t <= tonumber(oldest[2]) then
      if evicted == nil or t > evicted then evicted = t end  -- only the rings keep it
    else
      evict(1)
      redis.call('ZADD', tail, t, redis.call('HINCRBY', meta, 'seq', 1))
    end
    redis.call('HSET', meta, 'ev', evicted)
  else
    redis.call('ZADD', tail, t, redis.call('HINCRBY', meta, 'seq', 1))
  end
  for i = 1, #GRAIN do
    local g = GRAIN[i]
    local slot = floor(t / g)
    local newest_slot = slot
    if newest ~= nil then newest_slot = floor(newest / g) end
    if slot > newest_slot - RING then
      redis.call('HINCRBY', rings[i], slot, 1)
      if slot > newest_slot then
        local dead = {}
        for _, field in ipairs(redis.call('HKEYS', rings[i])) do
          if tonumber(field) <= slot - RING then dead[#dead + 1] = field end
        end
        if #dead > 0 then redis.call('HDEL', rings[i], unpack(dead)) end
      end
    end
  end
  if newest == nil or t > newest then redis.call('HSET', meta, 'ls', t) end
end

-- Occurrences in [at - W, at] for window w (1: 1 h ... 4: 30 d).
local function count(meta, tail, rings, w, at)
  local newest = num(redis.call('HGET', meta, 'ls'), nil)
  if newest == nil then return 0 end
  local evicted = num(redis.call('HGET', meta, 'ev'), nil)
  local lo, hi = at - WINDOW[w], at
  if evicted == nil or lo > evicted then
    return redis.call('ZCOUNT', tail, lo, hi)
  end
  local r = #GRAIN
  for i = w, #GRAIN do
    if floor(lo / GRAIN[i]) > floor(newest / GRAIN[i]) - RING then r = i; break end
  end
  local g = GRAIN[r]
  local first, last = floor(lo / g), floor(hi / g)
  local half = floor(g / 2)
  if first == last then
    local n = num(redis.call('HGET', rings[r], first), 0)
    return floor((n * (hi - lo + 1) + half) / g)
  end
  local fields = {}
  for s = first, last do fields[#fields + 1] = s end
  local values = redis.call('HMGET', rings[r], unpack(fields))
  local whole = 0
  for i = 2, #values - 1 do whole = whole + num(values[i], 0) end
  local numerator = num(values[1], 0) * ((first + 1) * g - lo)
  local last_count = num(values[#values], 0)
  if hi >= evicted then
    -- everything after hi is in the tail: the end slice is exact
    local after = redis.call('ZCOUNT', tail, '(' .. hi, (last + 1) * g - 1)
    whole = whole + last_count - after
  else
    numerator = numerator + last_count * (hi - last * g + 1)
  end
  return whole + floor((numerator + half) / g)
end

local function counts(meta, tail, rings, at)
  return {count(meta, tail, rings, 1, at), count(meta, tail, rings, 2, at),
          count(meta, tail, rings, 3, at), count(meta, tail, rings, 4, at)}
end

-- Day-bucketed counters: fields '<day>|<name>'. Totals of the days still retained.
local function day_totals(key, now, retention_days)
  local since = floor(now / DAY) - retention_days
  local flat = redis.call('HGETALL', key)
  local totals = {}
  for i = 1, #flat, 2 do
    local bar = string.find(flat[i], '|', 1, true)
    if bar ~= nil and tonumber(string.sub(flat[i], 1, bar - 1)) >= since then
      local name = string.sub(flat[i], bar + 1)
      totals[name] = (totals[name] or 0) + tonumber(flat[i + 1])
    end
  end
  return totals
end

-- Add n to a day counter, and drop expired days (at most once a day per key).
local function day_add(key, at, now, retention_days, name, n)
  redis.call('HINCRBY', key, floor(at / DAY) .. '|' .. name, n)
  local today = floor(now / DAY)
  if num(redis.call('HGET', key, 'pruned'), -1) < today then
    local dead = {}
    for _, field in ipairs(redis.call('HKEYS', key)) do
      local bar = string.find(field, '|', 1, true)
      if bar ~= nil and tonumber(string.sub(field, 1, bar - 1)) < today - retention_days then
        dead[#dead + 1] = field
      end
    end
    if #dead > 0 then redis.call('HDEL', key, unpack(dead)) end
    redis.call('HSET', key, 'pruned', today)
  end
end

local DISPOSITIONS = {'auto_repair', 'human_approved', 'manual_resolved', 'cold_start_trust',
                      'timeout_ignored'}

-- A snapshot as a flat array: c1h c24h c7d c30d first last repairs fix d1..d5 signature.
local function snapshot(meta, tail, rings, days, at, now, retention_days, fix_validity)
  local fields = redis.call('HMGET', meta, 'fs', 'ls', 'fix', 'sig')
  local c = counts(meta, tail, rings, at)
  local totals = day_totals(days, now, retention_days)
  local repairs = 0
  for name, n in pairs(totals) do
    if string.sub(name, 1, 2) == 't:' then repairs = repairs + n end
  end
  local fix = num(fields[3], -1)
  if fix >= 0 and now - fix >= fix_validity then fix = -1 end
  local out = {c[1], c[2], c[3], c[4], num(fields[1], -1), num(fields[2], -1), repairs, fix}
  for _, kind in ipairs(DISPOSITIONS) do out[#out + 1] = totals['d:' .. kind] or 0 end
  out[#out + 1] = fields[4] or ''
  return out
end

local function level_for(c24, t1, t2, t3)
  if c24 >= t3 then return 3 elseif c24 >= t2 then return 2 elseif c24 >= t1 then return 1 end
  return 0
end
