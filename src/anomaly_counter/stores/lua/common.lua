-- Shared by every anomaly-counter script (prepended to each at load time).
-- Mirrors anomaly_counter/windows.py: the same tail, rings and error bound; the contract tests
-- hold both to one brute-force model. All times are integer milliseconds, UTC.
-- Each redis.call costs a few microseconds, so the scripts read what they need once and
-- write each hash once.

local WINDOW = {3600000, 86400000, 604800000, 2592000000}
local GRAIN = {60000, 1440000, 10080000, 43200000}
local RING = 124
local DAY = 86400000
local floor = math.floor

local function num(value, default)
  if value == false or value == nil then return default end
  return tonumber(value)
end

-- The whole state of an anomaly but its signature, packed in one field of the meta hash ('st'),
-- so that a call reads it with one HGET and one C call, and writes it with one HSET:
--   1-12  first, newest, evicted, whether it has day counters (repairs or dispositions),
--         level, tail size, refreshed, four index bounds, and the oldest time in the tail;
--  13-20  per ring, the slice and count of pushed-out occurrences not yet added to it;
--  21-44  per window, cached ring sums: the ring, the edge slices, the sum of the slices
--         between them and the counts of the two edge slices (of the hash alone), so that a
--         storm counts its windows without reading the rings;
--  45-46  the permanent fix's time and the first regression after it.
local STATE = '<' .. string.rep('d', 46)
local NEW_STATE = {-1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, -1, 0, 0, 0, 0, 0, 0, 0, 0,
                   0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                   -1, -1}

local function load_state(meta)
  local fields = redis.call('HMGET', meta, 'st', 'tl')
  local v = NEW_STATE
  if fields[1] then v = {struct.unpack(STATE, fields[1])} end
  local function opt(x) if x < 0 then return nil end return x end
  local sums = {}
  for w = 1, 4 do
    local o = 20 + 6 * (w - 1)
    if v[o + 1] > 0 then
      sums[w] = {ring = v[o + 1], first = v[o + 2], last = v[o + 3], sum = v[o + 4],
                 nfirst = v[o + 5], nlast = v[o + 6]}
    end
  end
  return {first = opt(v[1]), newest = opt(v[2]), evicted = opt(v[3]), has_days = v[4] > 0,
          level = v[5], size = v[6], refreshed = v[7], bounds = {v[8], v[9], v[10], v[11]},
          oldest = opt(v[12]),
          pending = {{slot = v[13], n = v[14]}, {slot = v[15], n = v[16]},
                     {slot = v[17], n = v[18]}, {slot = v[19], n = v[20]}},
          sums = sums, fix = opt(v[45]), reg = opt(v[46]), tail = fields[2] or ''}
end

local function pack_state(s)
  local b, q = s.bounds, s.pending
  local out = {s.first or -1, s.newest or -1, s.evicted or -1, s.has_days and 1 or 0, s.level,
               s.size,
               s.refreshed, b[1], b[2], b[3], b[4], s.oldest or -1, q[1].slot, q[1].n,
               q[2].slot, q[2].n, q[3].slot, q[3].n, q[4].slot, q[4].n}
  for w = 1, 4 do
    local c = s.sums[w]
    if c then
      out[#out + 1], out[#out + 2], out[#out + 3] = c.ring, c.first, c.last
      out[#out + 1], out[#out + 2], out[#out + 3] = c.sum, c.nfirst, c.nlast
    else
      for _ = 1, 6 do out[#out + 1] = 0 end
    end
  end
  out[45], out[46] = s.fix or -1, s.reg or -1
  return struct.pack(STATE, unpack(out))
end

-- The score an index keeps for a count: a little above it, so that a busy anomaly rewrites its
-- index entries only now and then. Any upper bound keeps the top-k exact (ranking.index_bound).
local function index_bound(c)
  return c + 2 + floor(c / 2)
end

-- Put an occurrence pushed out of the tail into the four rings.
local function flush_pending(s, rings, i, oldest_kept)
  local p = s.pending[i]
  if p.n == 0 then return end
  local created = redis.call('HINCRBY', rings[i], p.slot, p.n) == p.n
  for w = 1, 4 do
    local c = s.sums[w]
    if c and c.ring == i and p.slot >= c.first and p.slot <= c.last then
      if p.slot == c.first then
        c.nfirst = c.nfirst + p.n
      elseif p.slot == c.last then
        c.nlast = c.nlast + p.n
      else
        c.sum = c.sum + p.n
      end
    end
  end
  p.n = 0
  if created and redis.call('HLEN', rings[i]) > RING then
    local dead = {}
    for _, field in ipairs(redis.call('HKEYS', rings[i])) do
      if tonumber(field) <= oldest_kept then dead[#dead + 1] = field end
    end
    if #dead > 0 then
      redis.call('HDEL', rings[i], unpack(dead))
      for w = 1, 4 do
        if s.sums[w] and s.sums[w].ring == i then s.sums[w] = nil end
      end
    end
  end
end

-- Put an occurrence pushed out of the tail into the four rings. Pushed-out occurrences come
-- oldest first, so most fall in the slice of the one before: each ring keeps the count of its
-- latest slice in the state and writes it to the hash only when the slice changes.
local function evict(s, rings, t)
  if s.evicted == nil or t > s.evicted then s.evicted = t end
  local newest = s.newest
  if newest == nil or t > newest then newest = t end
  for i = 1, #GRAIN do
    local g = GRAIN[i]
    local slot, oldest_kept = floor(t / g), floor(newest / g) - RING
    if slot > oldest_kept then
      local p = s.pending[i]
      if p.n > 0 and p.slot == slot then
        p.n = p.n + 1
      else
        flush_pending(s, rings, i, oldest_kept)
        p.slot, p.n = slot, 1
      end
    end
  end
end

-- The tail ('tl' in the meta hash): the latest occurrence times as packed doubles, ascending.
-- A string rather than a sorted set: one field read and written with the state, binary search
-- for counts, and half the memory.
local function tail_at(tail, i)  -- the i-th time, from 1
  return (struct.unpack('<d', tail, 8 * i - 7))
end

local function first_after(tail, x, strictly)  -- the position of the first time >= x (> x)
  local lo, hi = 1, #tail / 8 + 1
  while lo < hi do
    local mid = floor((lo + hi) / 2)
    local value = tail_at(tail, mid)
    if value < x or (strictly and value == x) then lo = mid + 1 else hi = mid end
  end
  return lo
end

-- Count one occurrence at t: into the tail (kept to `cap` times), pushing the oldest out into
-- the rings. Updates s.tail, s.size, s.oldest, s.newest and s.evicted.
local function add_occurrence(s, rings, t, cap)
  local tail = s.tail
  local size = #tail / 8
  if size > cap then  -- the capacity was lowered since
    for i = 1, size - cap do evict(s, rings, tail_at(tail, i)) end
    tail = string.sub(tail, 8 * (size - cap) + 1)
    size = cap
  end
  local keep = true
  if size == cap then
    local oldest = tail_at(tail, 1)
    if t <= oldest then
      keep = false
      evict(s, rings, t)  -- older than the whole tail: only the rings keep it
    else
      evict(s, rings, oldest)
      tail = string.sub(tail, 9)
      size = size - 1
    end
  end
  if keep then
    local packed = struct.pack('<d', t)
    if size == 0 or t >= tail_at(tail, size) then
      tail = tail .. packed  -- in order: the usual case
    else
      local at = 8 * (first_after(tail, t, true) - 1)
      tail = string.sub(tail, 1, at) .. packed .. string.sub(tail, at + 1)
    end
    size = size + 1
  end
  s.tail, s.size = tail, size
  if size > 0 then s.oldest = tail_at(tail, 1) end
  if s.newest == nil or t > s.newest then s.newest = t end
end

-- Occurrences in [at - W, at] for window w (1: 1 h ... 4: 30 d): the tail's exactly, plus the
-- pushed-out ones estimated from the finest ring that covers the window's start.
local function count(s, rings, w, at)
  if s.newest == nil then return 0 end
  local lo, hi = at - WINDOW[w], at
  local exact
  if s.size == 0 or lo > s.newest or hi < s.oldest then
    exact = 0
  elseif lo <= s.oldest and hi >= s.newest then
    exact = s.size  -- the window holds the whole tail
  else
    exact = first_after(s.tail, hi, true) - first_after(s.tail, lo, false)
  end
  if s.evicted == nil or lo > s.evicted then return exact end
  local r = #GRAIN
  for i = w, #GRAIN do
    if floor(lo / GRAIN[i]) > floor(s.newest / GRAIN[i]) - RING then r = i; break end
  end
  local g = GRAIN[r]
  local first, last = floor(lo / g), floor(math.min(hi, s.evicted) / g)
  local half = floor(g / 2)
  local p = s.pending[r]
  local function pending_at(slot)
    if p.n > 0 and p.slot == slot then return p.n end
    return 0
  end
  if first == last then
    local n = num(redis.call('HGET', rings[r], first), 0) + pending_at(first)
    local stop = hi
    if hi >= s.evicted then stop = (first + 1) * g - 1 end
    return exact + floor((n * (stop - lo + 1) + half) / g)
  end
  local c = s.sums[w]
  if not (c and c.ring == r and c.first == first and c.last == last) then
    local fields = {}
    for slot = first, last do fields[#fields + 1] = slot end
    local values = redis.call('HMGET', rings[r], unpack(fields))
    local between = 0
    for i = 2, #values - 1 do between = between + num(values[i], 0) end
    c = {ring = r, first = first, last = last, sum = between, nfirst = num(values[1], 0),
         nlast = num(values[#values], 0)}
    s.sums[w] = c
  end
  local whole = c.sum
  if p.n > 0 and p.slot > first and p.slot < last then whole = whole + p.n end
  local first_count = c.nfirst + pending_at(first)
  local last_count = c.nlast + pending_at(last)
  local numerator = first_count * ((first + 1) * g - lo)
  if hi >= s.evicted then
    whole = whole + last_count  -- every pushed-out occurrence is at or before hi
  else
    numerator = numerator + last_count * (hi - last * g + 1)
  end
  return exact + whole + floor((numerator + half) / g)
end

local function counts(s, rings, at)
  return {count(s, rings, 1, at), count(s, rings, 2, at), count(s, rings, 3, at),
          count(s, rings, 4, at)}
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

-- Note in the anomaly's state that it has day counters, so that replies read them.
local function mark_days(meta, ttl)
  local s = load_state(meta)
  if not s.has_days then
    s.has_days = true
    redis.call('HSET', meta, 'st', pack_state(s))
    if redis.call('TTL', meta) < 0 then redis.call('EXPIRE', meta, ttl) end
  end
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

-- The reply: {c1h, c24h, c7d, c30d, first, last, repairs, fix, d1..d5, [extra...,] signature}.
local function reply(s, c, days, now, retention_days, fix_validity, extra, signature)
  local totals = {}
  if s.has_days then totals = day_totals(days, now, retention_days) end
  local repairs = 0
  for name, n in pairs(totals) do
    if string.sub(name, 1, 2) == 't:' then repairs = repairs + n end
  end
  local fix = s.fix or -1
  if fix >= 0 and now - fix >= fix_validity then fix = -1 end
  local out = {c[1], c[2], c[3], c[4], s.first or -1, s.newest or -1, repairs, fix}
  for _, kind in ipairs(DISPOSITIONS) do out[#out + 1] = totals['d:' .. kind] or 0 end
  for _, v in ipairs(extra) do out[#out + 1] = v end
  out[#out + 1] = signature
  return out
end

local function level_for(c24, t1, t2, t3)
  if c24 >= t3 then return 3 elseif c24 >= t2 then return 2 elseif c24 >= t1 then return 1 end
  return 0
end
