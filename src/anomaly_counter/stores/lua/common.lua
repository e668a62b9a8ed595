-- Shared by every anomaly-counter script (prepended to each at load time, after the constants
-- generated from Python: WINDOW, GRAIN, RING, DAY, INDEX_NAMES, SHARD_KEYS, SHARD_LIVED,
-- DISPOSITIONS, INDEX_SLACK, INDEX_SPREAD, LEVEL_*; see stores/redis.py lua_constants).
-- Mirrors anomaly_counter/windows.py: the same tail, rings and error bound; the contract tests
-- hold both to one brute-force model. All times are integer milliseconds, UTC.
--
-- Written for the server's one thread, where every microsecond of a script is a microsecond of
-- every client's wait. Measured on Redis 7: each redis.call costs about 1 us; each table made
-- costs about as much as a few dozen VM instructions; and Redis's Lua hashes every byte of
-- every string it makes (a 1 KB string costs about 1 us). So the state is one flat array of
-- numbers, unpacked and packed by one C call each; key names are made only when used; and the
-- tail is changed in place rather than copied.

local floor = math.floor

local function num(value, default)
  if value == false or value == nil then return default end
  return tonumber(value)
end

-- The state of an anomaly, packed in one field of its meta hash ('st'): 47 numbers, -1 for
-- "none" where a time may be missing. Positions:
local FIRST, NEWEST, EVICTED, HAS_DAYS, LEVEL, SIZE, REFRESHED = 1, 2, 3, 4, 5, 6, 7
local BOUND = 7      -- BOUND + w: the score the window's project index holds (w = 1..4)
local OLDEST = 12    -- the oldest time in the tail
local PENDING = 11   -- PENDING + 2r, + 2r + 1: slice and count of pushed-out occurrences not
                     -- yet added to ring r (r = 1..4)
local SUMS = 15      -- SUMS + 6w .. + 6w + 5: window w's cached ring sums: the ring, the edge
                     -- slices, the sum between them, the counts of the two edge slices (of the
                     -- hash alone), so that a storm counts its windows without reading rings
local FIX, REGRESSED = 45, 46  -- the permanent fix's time, the first regression after it
local HEAD = 47      -- the slot of the oldest time in the tail's circular buffer
local STORED = 47
-- ... and, not stored, for the call: the anomaly's key names without their last letter, its
-- tail's key, and the tail as read (false: not read yet). (Positions in this file only: replies
-- name what they carry.)
local BASE, TAIL_KEY, BUFFER, FRESH = 48, 49, 50, 51  -- FRESH: its meta held no state
local VERIFY_UNTIL = 52  -- the latest end of its repairs' verification windows (-1: none)

local STATE = '<' .. string.rep('d', STORED)
local NEW_STATE = {-1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, -1, 0, 0, 0, 0, 0, 0, 0, 0,
                   0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                   -1, -1, 0}

-- The state of the anomaly whose meta key is `meta` ('...:m'). Its other keys share the name
-- but the last letter: 't' tail, 'r0'..'r3' rings, 'i' ids, 'w' write marks, 'd' days,
-- 'h' history, 's' signature, 'l' timeline (see key_of).
local function load_state(meta)
  local got = redis.call('HMGET', meta, 'st', 'vu')
  local packed = got[1]
  local s
  if packed then
    s = {struct.unpack(STATE, packed)}  -- the 48th value, unpack's next position, is replaced
  else
    s = {unpack(NEW_STATE)}
  end
  local base = string.sub(meta, 1, -2)
  s[BASE], s[TAIL_KEY], s[BUFFER], s[FRESH] = base, base .. 't', false, not packed
  s[VERIFY_UNTIL] = tonumber(got[2]) or -1
  return s
end

local function pack_state(s)
  return struct.pack(STATE, unpack(s, 1, STORED))
end

local function key_of(s, suffix)
  return s[BASE] .. suffix
end

local RING_SUFFIX = {'r0', 'r1', 'r2', 'r3'}
local function ring_key(s, r)
  return s[BASE] .. RING_SUFFIX[r]
end

-- The key of a project index (INDEX_NAMES) of the shard the meta key belongs to: everything up
-- to the hash tag's end is the shard's prefix (key prefixes and encoded parts hold no '}').
local function shard_key(meta, name)
  return string.sub(meta, 1, string.find(meta, '}', 1, true)) .. ':x:' .. name
end
local function index_key(meta, w)
  return shard_key(meta, INDEX_NAMES[w])
end

-- The score an index keeps for a count: a little above it, so that a busy anomaly rewrites its
-- index entries only now and then. Any upper bound keeps the top-k exact (ranking.index_bound).
local function index_bound(c)
  return c + INDEX_SLACK + floor(c / INDEX_SPREAD)
end

-- Add ring r's pending count to its hash, and keep the cached sums that cover it current.
local function flush_pending(s, r, oldest_kept)
  local n = s[PENDING + 2 * r + 1]
  if n == 0 then return end
  local slot = s[PENDING + 2 * r]
  local ring = ring_key(s, r)
  local created = redis.call('HINCRBY', ring, slot, n) == n
  for w = 1, 4 do
    local o = SUMS + 6 * w
    if s[o] == r and slot >= s[o + 1] and slot <= s[o + 2] then
      if slot == s[o + 1] then
        s[o + 4] = s[o + 4] + n
      elseif slot == s[o + 2] then
        s[o + 5] = s[o + 5] + n
      else
        s[o + 3] = s[o + 3] + n
      end
    end
  end
  s[PENDING + 2 * r + 1] = 0
  if created and redis.call('HLEN', ring) > RING then
    local dead = {}
    for _, field in ipairs(redis.call('HKEYS', ring)) do
      if tonumber(field) <= oldest_kept then dead[#dead + 1] = field end
    end
    if #dead > 0 then
      redis.call('HDEL', ring, unpack(dead))
      for w = 1, 4 do
        if s[SUMS + 6 * w] == r then s[SUMS + 6 * w] = 0 end  -- forget the cached sums
      end
    end
  end
end

-- Put an occurrence pushed out of the tail into the four rings. Pushed-out occurrences come
-- oldest first, so most fall in the slice of the one before: each ring keeps the count of its
-- latest slice in the state and writes it to the hash only when the slice changes.
local function evict(s, t)
  if t > s[EVICTED] then s[EVICTED] = t end
  local newest = s[NEWEST]
  if t > newest then newest = t end
  for r = 1, 4 do
    local g = GRAIN[r]
    local slot, oldest_kept = floor(t / g), floor(newest / g) - RING
    if slot > oldest_kept then
      local n = s[PENDING + 2 * r + 1]
      if n > 0 and s[PENDING + 2 * r] == slot then
        s[PENDING + 2 * r + 1] = n + 1
      else
        flush_pending(s, r, oldest_kept)
        s[PENDING + 2 * r], s[PENDING + 2 * r + 1] = slot, 1
      end
    end
  end
end

-- The tail: the latest occurrence times (at most `cap`), as packed doubles in the anomaly's
-- string key '...:t', used as a circular buffer: slot (head + j - 1) % size holds the j-th
-- oldest, and the string is always exactly `size` slots long. An occurrence in order into a full
-- tail overwrites the oldest's slot in place (SETRANGE) and reads the next oldest (GETRANGE):
-- 16 bytes cross into Lua instead of the whole tail. Anything else (a late occurrence, a
-- changed capacity) reads the whole tail and writes it back in order.
local DOUBLE = '<d'

local function tail_buffer(s)  -- the buffer as stored, read at most once per state
  if not s[BUFFER] then
    local buffer = redis.call('GET', s[TAIL_KEY]) or ''
    if #buffer ~= 8 * s[SIZE] then
      -- Lost (say, evicted by a maxmemory policy): its times read as 1970, in no window.
      buffer = string.sub(buffer .. string.rep('\0', 8 * s[SIZE]), 1, 8 * s[SIZE])
    end
    s[BUFFER] = buffer
  end
  return s[BUFFER]
end

local function tail_at(s, j)  -- the j-th oldest time, from 1
  local slot = (s[HEAD] + j - 1) % s[SIZE]
  return (struct.unpack(DOUBLE, tail_buffer(s), 8 * slot + 1))
end

local function first_after(s, x, strictly)  -- the position of the first time >= x (> x)
  local lo, hi = 1, s[SIZE] + 1
  while lo < hi do
    local mid = floor((lo + hi) / 2)
    local value = tail_at(s, mid)
    if value < x or (strictly and value == x) then lo = mid + 1 else hi = mid end
  end
  return lo
end

-- The first occurrence after time x as far as the state knows it, or nil: the tail's; and when
-- occurrences after x were pushed out of the tail, the latest of those (an upper bound: one
-- came back by then at the latest).
local function first_occurrence_after(s, x)
  if s[SIZE] == 0 or s[NEWEST] <= x then return nil end
  if s[EVICTED] > x then return s[EVICTED] end
  local position = first_after(s, x, true)
  if position > s[SIZE] then return nil end
  return tail_at(s, position)
end

-- Note an occurrence at `at` as the recurrence of the verified repairs of the history whose
-- window holds it (the first one after each repair: an earlier one replaces a later); then
-- keep in the meta's 'vu' only the latest end of the windows still open and not falsified, so
-- that the occurrences of a storm after a failed repair do not read the history again.
local function note_recurrence(meta, history, at)
  local entries = redis.call('LRANGE', history, 0, -1)
  local open = -1
  for i, raw in ipairs(entries) do
    local e = cjson.decode(raw)
    local deadline = e['until']
    if deadline and e.at < at and at <= deadline and (not e.back or e.back > at) then
      e.back = at
      redis.call('LSET', history, i - 1, cjson.encode(e))
    end
    if deadline and not e.back and deadline > open then open = deadline end
  end
  if open < 0 then
    redis.call('HDEL', meta, 'vu')
  else
    redis.call('HSET', meta, 'vu', string.format('%d', open))
  end
end

-- The general case: the whole tail, in order, changed in Lua and written back.
local function add_out_of_order(s, t, cap)
  local buffer, head, size = tail_buffer(s), s[HEAD], s[SIZE]
  local tail = buffer
  if head > 0 then tail = string.sub(buffer, 8 * head + 1) .. string.sub(buffer, 1, 8 * head) end
  local function at(i) return (struct.unpack(DOUBLE, tail, 8 * i - 7)) end
  if size > cap then  -- the capacity was lowered since
    for i = 1, size - cap do evict(s, at(i)) end
    tail = string.sub(tail, 8 * (size - cap) + 1)
    size = cap
  end
  local keep = true
  if size == cap then
    local oldest = at(1)
    if t <= oldest then
      keep = false
      evict(s, t)  -- older than the whole tail: only the rings keep it
    else
      evict(s, oldest)
      tail = string.sub(tail, 9)
      size = size - 1
    end
  end
  if keep then
    local lo, hi = 1, size + 1  -- the position of the first time > t
    while lo < hi do
      local mid = floor((lo + hi) / 2)
      if at(mid) <= t then lo = mid + 1 else hi = mid end
    end
    local cut = 8 * (lo - 1)
    tail = string.sub(tail, 1, cut) .. struct.pack(DOUBLE, t) .. string.sub(tail, cut + 1)
    size = size + 1
  end
  redis.call('SET', s[TAIL_KEY], tail, 'KEEPTTL')
  s[BUFFER], s[HEAD], s[SIZE] = tail, 0, size
  if size > 0 then s[OLDEST] = at(1) end
end

-- Count one occurrence at t: into the tail (kept to `cap` times), pushing the oldest out into
-- the rings.
local function add_occurrence(s, t, cap)
  local size = s[SIZE]
  if size > 0 and t < s[NEWEST] or size > cap or size < cap and s[HEAD] ~= 0 then
    add_out_of_order(s, t, cap)
  elseif size < cap then  -- in order, room left: append
    redis.call('SETRANGE', s[TAIL_KEY], 8 * size, struct.pack(DOUBLE, t))
    if size == 0 then s[OLDEST] = t end
    s[SIZE], s[BUFFER] = size + 1, false
  else  -- in order, full: the newest takes the oldest's slot
    evict(s, s[OLDEST])
    local head = s[HEAD]
    redis.call('SETRANGE', s[TAIL_KEY], 8 * head, struct.pack(DOUBLE, t))
    head = (head + 1) % size
    s[HEAD], s[BUFFER] = head, false
    local oldest = redis.call('GETRANGE', s[TAIL_KEY], 8 * head, 8 * head + 7)
    if #oldest == 8 then
      s[OLDEST] = (struct.unpack(DOUBLE, oldest))
    else  -- the tail was lost (see tail_buffer): it starts again from this occurrence
      redis.call('SET', s[TAIL_KEY], struct.pack(DOUBLE, t), 'KEEPTTL')
      s[SIZE], s[HEAD], s[OLDEST] = 1, 0, t
    end
  end
  if t > s[NEWEST] then s[NEWEST] = t end
end

-- Occurrences in [at - W, at] for window w (1: 1 h ... 4: 30 d): the tail's exactly, plus the
-- pushed-out ones estimated from the finest ring that covers the window's start.
local function count(s, w, at)
  local newest = s[NEWEST]
  if newest < 0 then return 0 end
  local lo, hi = at - WINDOW[w], at
  local size, oldest, evicted = s[SIZE], s[OLDEST], s[EVICTED]
  local exact
  if size == 0 or lo > newest or hi < oldest then
    exact = 0
  elseif lo <= oldest and hi >= newest then
    exact = size  -- the window holds the whole tail
  else
    exact = first_after(s, hi, true) - first_after(s, lo, false)
  end
  if evicted < 0 or lo > evicted then return exact end
  local r = 4
  for i = w, 4 do
    if floor(lo / GRAIN[i]) > floor(newest / GRAIN[i]) - RING then r = i; break end
  end
  local g = GRAIN[r]
  local first, last = floor(lo / g), floor(math.min(hi, evicted) / g)
  local half = floor(g / 2)
  local pending_slot, pending = s[PENDING + 2 * r], s[PENDING + 2 * r + 1]
  local pending_first, pending_last = 0, 0
  if pending > 0 and pending_slot == first then pending_first = pending end
  if pending > 0 and pending_slot == last then pending_last = pending end
  if first == last then
    local n = num(redis.call('HGET', ring_key(s, r), first), 0) + pending_first
    local stop = hi
    if hi >= evicted then stop = (first + 1) * g - 1 end
    return exact + floor((n * (stop - lo + 1) + half) / g)
  end
  local o = SUMS + 6 * w
  if not (s[o] == r and s[o + 1] == first and s[o + 2] == last) then
    local fields = {}
    for slot = first, last do fields[#fields + 1] = slot end
    local values = redis.call('HMGET', ring_key(s, r), unpack(fields))
    local between = 0
    for i = 2, #values - 1 do between = between + num(values[i], 0) end
    s[o], s[o + 1], s[o + 2] = r, first, last
    s[o + 3], s[o + 4], s[o + 5] = between, num(values[1], 0), num(values[#values], 0)
  end
  local whole = s[o + 3]
  if pending > 0 and pending_slot > first and pending_slot < last then
    whole = whole + pending
  end
  local numerator = (s[o + 4] + pending_first) * ((first + 1) * g - lo)
  local last_count = s[o + 5] + pending_last
  if hi >= evicted then
    whole = whole + last_count  -- every pushed-out occurrence is at or before hi
  else
    numerator = numerator + last_count * (hi - last * g + 1)
  end
  return exact + whole + floor((numerator + half) / g)
end

local function counts(s, at)
  return {count(s, 1, at), count(s, 2, at), count(s, 3, at), count(s, 4, at)}
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

-- Make a key live at least `seconds` more, never shortening it: keys several anomalies share
-- (a shard's indexes) must outlive the longest-lived anomaly that counts on them.
local function extend(name, seconds)
  if redis.call('TTL', name) < seconds then redis.call('EXPIRE', name, seconds) end
end

-- The shard's keys that anomalies are found by (search, chronic, rankings) and counted in:
-- each anomaly's state pushes their lifetime out to its own (extend).
local function extend_shard(meta, seconds)
  for _, name in ipairs(SHARD_LIVED) do extend(shard_key(meta, name), seconds) end
end

-- The server's clock, in ms. The live sets (below) compare their entries' ends with it, as the
-- keys' own lifetimes do, so that processes whose clocks differ agree on what has ended.
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
end

-- A shard's live set: each anomaly it holds (with occurrences, or known by a repair, a
-- disposition or a fix only), scored by when it ends (server ms): max_anomalies counts them.
local function live_key(meta)
  return shard_key(meta, 'live')
end

-- Forget the ended; then true when `member` (false: none) has a place in the live set, or the
-- set has room for `n` more within `share`.
local function has_room(live, member, clock, share, n)
  redis.call('ZREMRANGEBYSCORE', live, '-inf', '(' .. clock)
  if member and redis.call('ZSCORE', live, member) then return true end
  return redis.call('ZCARD', live) + n <= share
end

-- A new anomaly (its meta holds no state yet: is_new) takes a place in its shard's live set for
-- `seconds`, if there is room: false when there is none (then nothing may be written).
local function take_place(meta, member, share, seconds)
  local clock = server_ms()
  if not has_room(live_key(meta), member, clock, share, 1) then return false end
  redis.call('ZADD', live_key(meta), 'GT', clock + seconds * 1000, member)
  return true
end

local function is_new(meta)
  return redis.call('HEXISTS', meta, 'st') == 0
end

-- Keep the anomaly's place at least `seconds` more (never shortened: a fix keeps it longer).
local function keep_place(meta, member, seconds)
  redis.call('ZADD', live_key(meta), 'GT', server_ms() + seconds * 1000, member)
end

-- True the first time a write with this id (a digest, '' for none) reaches the anomaly whose
-- meta key is given; remembered with the occurrence ids, so a retried write applies once.
local function first_write(meta, write_id, now, ttl)
  if write_id == '' then return true end
  local ids = string.sub(meta, 1, -2) .. 'i'
  if redis.call('ZSCORE', ids, write_id) then return false end
  redis.call('ZADD', ids, now, write_id)
  extend(ids, ttl)
  return true
end

-- Whether an occurrence was counted before, by its mark (stores/write_marks.py says how the
-- marks are made and why each is exact); when not, the mark is noted. Marks:
--   ''                                   none: always counted
--   'i' digest                           an id the caller gave: remembered over the horizon
--                                        from its last sight (at most max_ids of them)
--   'w' writer ':' seq ':' floor         a write numbered by its writer (a spool): the
--                                        writer's numbers below floor are settled and dropped;
--                                        floor -1 (a replay) notes it apart, over the horizon
--   'r' spool ':' position '|' mark      replayed from a spool at a fixed-width position: at
--                                        or below the spool's highest replayed, counted before
-- Marks of writers and spools are kept in the hash 'w' as '<touched ms>,<lo-hi,...>' (a
-- writer's numbers as runs, fields 'w' and 'u' + writer) and '<touched ms>,<position>'.
-- Whether n is among the runs of `held` ('<touched>,lo-hi,...'), and, unless below < 0 (a
-- look-up), the runs to hold after it: those at or above `below`, and n (write_marks.py's
-- numbered_step).
local function runs_step(held, n, below)
  local ranges = {}
  for lo, hi in string.gmatch(held or '', ',(%d+)%-(%d+)') do
    lo, hi = tonumber(lo), tonumber(hi)
    if n >= lo and n <= hi then return true end
    if hi >= below then ranges[#ranges + 1] = {math.max(lo, below), hi} end
  end
  if below < 0 then return false end
  -- n among the ranges, in order, merged with its neighbours
  local kept, placed = {}, false
  for _, r in ipairs(ranges) do
    if not placed and n < r[1] then kept[#kept + 1] = {n, n}; placed = true end
    kept[#kept + 1] = r
  end
  if not placed then kept[#kept + 1] = {n, n} end
  local parts, last = {}, nil
  for _, r in ipairs(kept) do
    if last and r[1] <= last[2] + 1 then
      last[2] = math.max(last[2], r[2])
    else
      last = {r[1], r[2]}
      parts[#parts + 1] = last
    end
  end
  local text = {}
  for i = math.max(1, #parts - MARKS_HELD + 1), #parts do
    text[#text + 1] = string.format('%d-%d', parts[i][1], parts[i][2])
  end
  return false, table.concat(text, ',')
end

-- A writer's numbers: 'w' the unsettled ones (dropped below each write's floor), 'u' those
-- replayed (kept over the horizon: the first attempt of one may still land, late).
local function seen_numbered(marks, text, now_text, ttl)
  local writer, seq, floor = string.match(text, '^([^:]*):(%d+):(%-?%d+)$')
  local n, below = tonumber(seq), tonumber(floor)
  local late = redis.call('HGET', marks, 'u' .. writer)
  if late and runs_step(late, n, -1) then return true end
  local held = redis.call('HGET', marks, 'w' .. writer)
  local seen, kept = runs_step(held, n, below)
  if seen then return true end
  local field = 'w' .. writer
  if below < 0 then
    field = 'u' .. writer
    seen, kept = runs_step(late, n, 0)
  end
  redis.call('HSET', marks, field, now_text .. ',' .. kept)
  if not held and not late then extend(marks, ttl) end  -- (a new writer; then hourly)
  return false
end

local function seen_id(s, digest, now, horizon, max_ids, ttl)
  local ids = key_of(s, 'i')
  local seen = redis.call('ZSCORE', ids, digest)
  -- the horizon runs from the last sight: a long firing episode re-sent stays one
  redis.call('ZADD', ids, now, digest)
  if seen and tonumber(seen) >= now - horizon then return true end
  redis.call('ZREMRANGEBYSCORE', ids, '-inf', '(' .. (now - horizon))
  local n = redis.call('ZCARD', ids)
  -- bounded memory: past max_ids the oldest ids are forgotten early (documented)
  if n > max_ids then redis.call('ZREMRANGEBYRANK', ids, 0, n - max_ids - 1) end
  redis.call('EXPIRE', ids, math.max(ttl, floor(horizon / 1000)))
  return false
end

local function seen_before(s, mark, now, horizon, max_ids, ttl)
  if mark == '' then return false end
  local now_text = string.format('%d', now)
  local marks = key_of(s, 'w')
  local kind = string.sub(mark, 1, 1)
  if kind == 'r' then
    local spool, position, inner = string.match(mark, '^r([^:]*):(%d+)|(.*)$')
    local field = 'r' .. spool
    local held = redis.call('HGET', marks, field)
    if held and position <= string.match(held, ',(%d+)$') then return true end
    redis.call('HSET', marks, field, now_text .. ',' .. position)
    if not held then extend(marks, ttl) end
    if inner == '' then return false end
    mark, kind = inner, string.sub(inner, 1, 1)
  end
  if kind == 'w' then return seen_numbered(marks, string.sub(mark, 2), now_text, ttl) end
  return seen_id(s, string.sub(mark, 2), now, horizon, max_ids, ttl)
end

-- Forget the marks of writers and spools not heard from over the horizon (a process that
-- stopped: nothing of it can come again that is not older than that).
local function prune_marks(s, now, horizon)
  local marks = key_of(s, 'w')
  local all = redis.call('HGETALL', marks)
  for i = 1, #all, 2 do
    if tonumber(string.match(all[i + 1], '^(%d+)')) < now - horizon then
      redis.call('HDEL', marks, all[i])
    end
  end
end

-- The notices outbox of an anomaly's shard (anomaly_counter.outbox): the stream 'ob' of
-- notices, the hash 'obs' of each channel's cursor ('c' .. channel) and the overflow counts,
-- the lease 'obl', the dead letters 'obd'. No lifetimes: a notice waits until it is settled.
local function outbox_key(meta, name)
  return shard_key(meta, name)
end

-- Whether outbox entry id a ('<ms>-<seq>') comes after b ('' comes before all).
local function entry_after(a, b)
  if b == '' then return a ~= '' end
  if a == '' then return false end
  local ams, aseq = string.match(a, '^(%d+)%-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)%-(%d+)$')
  ams, aseq, bms, bseq = tonumber(ams), tonumber(aseq), tonumber(bms), tonumber(bseq)
  return ams > bms or (ams == bms and aseq > bseq)
end

-- Put a notice in the outbox in the same call as the occurrence that causes it; when the
-- shard's share of the outbox is full, count it instead (never silently).
local function post(meta, member, kind, level, at_text, c, now, bound)
  local stream = outbox_key(meta, 'ob')
  if redis.call('XLEN', stream) >= bound then
    redis.call('HINCRBY', outbox_key(meta, 'obs'), 'overflow', 1)
    return
  end
  redis.call('XADD', stream, '*', 'k', member, 'n', kind, 'l', level, 'a', at_text,
             'c', string.format('%d,%d,%d,%d', c[1], c[2], c[3], c[4]),
             'w', string.format('%d', now))
end

-- Note in the anomaly's state that it has day counters, so that replies read them.
local function mark_days(meta, ttl)
  local s = load_state(meta)
  if s[HAS_DAYS] == 0 then
    s[HAS_DAYS] = 1
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

-- The reply: {c1h, c24h, c7d, c30d, first, last, repairs, fix, named, signature, and the
-- count of each of DISPOSITIONS in its order when there are any}, `named` a flat list of
-- names and values: the caller's, and the fix in force ('regressed_at', 'fix_text', 'fix_by').
local function reply(s, c, now, retention_days, fix_validity, signature, named)
  local fix = s[FIX]
  if fix >= 0 and now - fix >= fix_validity then fix = -1 end
  if fix >= 0 then
    local record = redis.call('HMGET', key_of(s, 'm'), 'fixd', 'fixb')
    named = {unpack(named)}
    local n = #named
    named[n + 1], named[n + 2] = 'regressed_at', s[REGRESSED]
    named[n + 3], named[n + 4] = 'fix_text', record[1]
    named[n + 5], named[n + 6] = 'fix_by', record[2]
  end
  local out = {c[1], c[2], c[3], c[4], s[FIRST], s[NEWEST], 0, fix, named, signature}
  if s[HAS_DAYS] > 0 then
    local totals = day_totals(key_of(s, 'd'), now, retention_days)
    local repairs = 0
    for name, n in pairs(totals) do
      if string.sub(name, 1, 2) == 't:' then repairs = repairs + n end
    end
    out[7] = repairs
    for i, kind in ipairs(DISPOSITIONS) do out[10 + i] = totals['d:' .. kind] or 0 end
  end
  return out
end

-- The timeline: entries as anomaly_counter.timeline encodes them, newest first, in two parts
-- so that routine entries never push out the turning points: milestones (key '...k', at most
-- TL_MILESTONE_ENTRIES and TL_MILESTONE_BYTES of text) and the rest ('...l', TL_ROUTINE_*).
-- The meta hash keeps each part's byte count ('kb', 'lb').
local function tell(base, entry, ttl)
  local suffix, most, budget = 'l', TL_ROUTINE_ENTRIES, TL_ROUTINE_BYTES
  if TL_MILESTONE[string.sub(entry, 1, 1)] then
    suffix, most, budget = 'k', TL_MILESTONE_ENTRIES, TL_MILESTONE_BYTES
  end
  local key, meta, field = base .. suffix, base .. 'm', suffix .. 'b'
  local n = redis.call('LPUSH', key, entry)
  local bytes = #entry
  if n > 1 then
    local kept = redis.call('HGET', meta, field)
    if kept then
      bytes = bytes + tonumber(kept)
    else  -- the count was lost with its hash (an eviction): counted again, once
      bytes = 0
      for _, e in ipairs(redis.call('LRANGE', key, 0, -1)) do bytes = bytes + #e end
    end
  end
  while n > most or (bytes > budget and n > 1) do
    local dropped = redis.call('RPOP', key)
    if not dropped then break end
    bytes, n = bytes - #dropped, n - 1
  end
  redis.call('HSET', meta, field, bytes)
  if redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, ttl) end
end

-- Index a new anomaly under its search terms: the fingerprint terms, GROUP_SEP, the others
-- (TERM_SEP between terms); a fingerprint term is also indexed under its grams the first time
-- the shard meets it (see anomaly_counter.search: GRAM bytes from each byte, GRAM_PAD after).
-- The grams index's members of a fingerprint term: '<gram>\0<term>' for each byte's gram.
local function gram_members(term)
  local padded, members = term .. GRAM_PAD, {}
  for i = 1, #term do members[i] = string.sub(padded, i, i + GRAM - 1) .. '\0' .. term end
  return members
end

local function index_terms(meta, member, terms)
  local term_key, gram_key = shard_key(meta, 'terms'), shard_key(meta, 'grams')
  local cut = string.find(terms, GROUP_SEP, 1, true) or (#terms + 1)
  local pattern = '[^' .. TERM_SEP .. ']+'
  for term in string.gmatch(string.sub(terms, 1, cut - 1), pattern) do
    redis.call('ZADD', term_key, 0, term .. '\0' .. member)
    local members = gram_members(term)
    if #members > 0 and not redis.call('ZSCORE', gram_key, members[1]) then
      local args = {}
      for i, m in ipairs(members) do args[2 * i - 1], args[2 * i] = 0, m end
      redis.call('ZADD', gram_key, unpack(args))
    end
  end
  for term in string.gmatch(string.sub(terms, cut + 1), pattern) do
    redis.call('ZADD', term_key, 0, term .. '\0' .. member)
  end
end

local function level_for(c24, t1, t2, t3)
  if c24 >= t3 then return LEVEL_PERMANENT_FIX elseif c24 >= t2 then return LEVEL_ESCALATE
  elseif c24 >= t1 then return LEVEL_REPEAT end
  return LEVEL_NONE
end
