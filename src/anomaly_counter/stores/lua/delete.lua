-- Delete one anomaly and every trace of it in its project's shard, atomically (docs/delete.md):
-- its keys; its entries in the shard's indexes, its place in the live set (max_anomalies), its
-- search entries and the grams of its fingerprint terms that no other anomaly of the shard
-- holds; its notices in the outbox and its dead letters; and what the shard's day summary
-- counted of it (anomaly_counter/deletion.py says what, and why it is known): its dispositions,
-- from its own day counters, and the crossings its milestones tell, never below zero.
-- KEYS: meta (the script names the anomaly's other keys and its shard's keys from it)
-- ARGV: anomaly_key, signature (as the caller read it, '' for none), search_terms (made from
--       that signature, as record.lua was given them), then the suffixes of the anomaly's keys
-- Returns 1 when anything of it was there, 0 when nothing was, -1 when its signature is not the
-- one read (its first occurrence came meanwhile: the caller reads it again, and calls again).
local meta, member = KEYS[1], ARGV[1]
local base = string.sub(meta, 1, -2)
if (redis.call('GET', base .. 's') or '') ~= ARGV[2] then return -1 end
local found = 0
local CHUNK = 1000  -- (unpack has a bound on the values it passes)

local function remove(command, key, members)
  for i = 1, #members, CHUNK do
    found = found + redis.call(command, key, unpack(members, i, math.min(i + CHUNK - 1, #members)))
  end
end

-- the day summary: what it counted of this anomaly, taken back
local summary = shard_key(meta, 'summary')
local function take_back(field, n)
  local held = tonumber(redis.call('HGET', summary, field))
  if not held then return end  -- (a day pruned since)
  if held <= n then
    redis.call('HDEL', summary, field)
  else
    redis.call('HINCRBY', summary, field, -n)
  end
end
local days = redis.call('HGETALL', base .. 'd')
for i = 1, #days, 2 do
  local bar = string.find(days[i], '|', 1, true)
  if bar and string.sub(days[i], bar + 1, bar + 2) == 'd:' then
    take_back(days[i], tonumber(days[i + 1]))
  end
end
local crossing = '^' .. TL_ESCALATED .. TL_SEP .. '(%d+)' .. TL_SEP .. '(%d+)'
for _, entry in ipairs(redis.call('LRANGE', base .. 'k', 0, -1)) do
  local at, level = string.match(entry, crossing)
  if at then take_back(floor(tonumber(at) / DAY) .. '|e:' .. level, 1) end
end

-- search: its entries, and the grams of a fingerprint term no anomaly of the shard holds now
local terms_key, grams_key = shard_key(meta, 'terms'), shard_key(meta, 'grams')
local terms = ARGV[3]
local cut = string.find(terms, GROUP_SEP, 1, true) or (#terms + 1)
local pattern = '[^' .. TERM_SEP .. ']+'
for term in string.gmatch(string.sub(terms, 1, cut - 1), pattern) do
  found = found + redis.call('ZREM', terms_key, term .. '\0' .. member)
  if #redis.call('ZRANGEBYLEX', terms_key, '[' .. term .. '\0', '[' .. term .. '\0\255',
                 'LIMIT', 0, 1) == 0 then
    remove('ZREM', grams_key, gram_members(term))
  end
end
for term in string.gmatch(string.sub(terms, cut + 1), pattern) do
  found = found + redis.call('ZREM', terms_key, term .. '\0' .. member)
end

-- the shard's indexes by anomaly (rankings, chronic, live, flapping)
for _, name in ipairs(SHARD_KEYS) do
  if name ~= 'terms' and name ~= 'grams' and name ~= 'summary' then
    found = found + redis.call('ZREM', shard_key(meta, name), member)
  end
end

-- its notices waiting in the outbox, and its dead letters
local stream, notices = outbox_key(meta, 'ob'), {}
for _, e in ipairs(redis.call('XRANGE', stream, '-', '+')) do
  local fields = e[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'k' then
      if fields[i + 1] == member then notices[#notices + 1] = e[1] end
      break
    end
  end
end
remove('XDEL', stream, notices)
local dead, letters = outbox_key(meta, 'obd'), {}
local flat = redis.call('HGETALL', dead)
for i = 1, #flat, 2 do
  local ok, letter = pcall(cjson.decode, flat[i + 1])
  if ok and type(letter) == 'table' and type(letter.entry) == 'table'
     and letter.entry.anomaly_key == member then
    letters[#letters + 1] = flat[i]
  end
end
remove('HDEL', dead, letters)

-- its own keys, last: the summary's share was read from them
local names = {}
for i = 4, #ARGV do names[#names + 1] = base .. ARGV[i] end
found = found + redis.call('DEL', unpack(names))
if found > 0 then return 1 end
return 0
