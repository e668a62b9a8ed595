-- Write one anomaly as an export's image has it (anomaly_counter.transfer), atomically: what
-- it held is replaced, then its entries in its shard's indexes are set as a write would have
-- left them (windows, dispositions, chronic, flapping, search, its place in the live set).
-- KEYS: meta
-- ARGV: anomaly_key image ttl_seconds fix_validity_ms now shard_share dedup_horizon_ms tail
--       search_terms ('' for none). The image is JSON (redis.py's _image_json): its times
--       -1 for none; 'tail' (ARGV) the tail's times as packed doubles, oldest first.
-- Returns 1, or 0 (nothing written) for a new anomaly in a shard that holds its share of the
-- project's max_anomalies already.
local meta, member, image = KEYS[1], ARGV[1], cjson.decode(ARGV[2])
local ttl, fix_validity, now = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local share, horizon, tail, terms = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8], ARGV[9]
if is_new(meta) and not take_place(meta, member, share, ttl) then return 0 end

local base = string.sub(meta, 1, -2)
local siblings = {'t', 's', 'i', 'w', 'd', 'h', 'k', 'l', 'o', 'r0', 'r1', 'r2', 'r3'}
local gone = {meta}
for _, suffix in ipairs(siblings) do gone[#gone + 1] = base .. suffix end
redis.call('DEL', unpack(gone))

-- the state: a new one, its fields set (no pending ring counts, no cached sums: read afresh)
local s = load_state(meta)
local size = #tail / 8
s[FIRST], s[NEWEST], s[EVICTED] = image.first, image.newest, image.evicted
s[HAS_DAYS], s[LEVEL], s[SIZE], s[REFRESHED] = image.has_days, image.level, size, now
for w = 1, 4 do s[BOUND + w] = image.scores[w] end
if size > 0 then s[OLDEST] = (struct.unpack(DOUBLE, tail, 1)) end
s[FIX], s[REGRESSED], s[HEAD] = image.fix, image.regressed, 0
local fields = {'st', pack_state(s)}
for name, value in pairs(image.meta) do
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end
redis.call('HSET', meta, unpack(fields))
if size > 0 then redis.call('SET', base .. 't', tail) end
if image.signature ~= '' then redis.call('SET', base .. 's', image.signature) end

local function put(command, key, flat)
  for i = 1, #flat, 1000 do  -- (in steps: Lua's unpack has a bound)
    redis.call(command, key, unpack(flat, i, math.min(#flat, i + 999)))
  end
end
for r = 1, 4 do put('HSET', base .. RING_SUFFIX[r], image.rings[r]) end
put('ZADD', base .. 'i', image.ids)
put('HSET', base .. 'w', image.marks)
put('HSET', base .. 'd', image.days)
put('RPUSH', base .. 'h', image.history)
put('RPUSH', base .. 'k', image.milestones)
put('RPUSH', base .. 'l', image.routine)
put('HSET', base .. 'o', image.open)

-- its lifetime: as a write leaves it (a fix in force keeps it longer)
local meta_ttl = ttl
if image.fix >= 0 then meta_ttl = math.max(ttl, floor((image.fix + fix_validity - now) / 1000)) end
for _, suffix in ipairs({'m', 't', 'k', 'l', 's'}) do redis.call('EXPIRE', base .. suffix, meta_ttl) end
for _, suffix in ipairs({'w', 'd', 'h', 'o', 'r0', 'r1', 'r2', 'r3'}) do
  redis.call('EXPIRE', base .. suffix, ttl)
end
redis.call('EXPIRE', base .. 'i', math.max(ttl, floor(horizon / 1000)))

-- its index entries
local function set_entry(name, score)
  local key = shard_key(meta, name)
  if score > 0 then
    redis.call('ZADD', key, score, member)
    extend(key, meta_ttl)
  else
    redis.call('ZREM', key, member)
  end
end
for w = 1, 4 do set_entry(INDEX_NAMES[w], image.scores[w]) end
set_entry('dispositions', image.scores[5])
set_entry('chronic', image.level)
if image.flap_leave >= 0 then
  local flapping = shard_key(meta, 'flapping')
  redis.call('ZADD', flapping, image.flap_leave, member)
  extend(flapping, ttl)
else
  redis.call('ZREM', shard_key(meta, 'flapping'), member)
end
if terms ~= '' then index_terms(meta, member, terms) end
keep_place(meta, member, meta_ttl)
extend_shard(meta, meta_ttl)
return 1
