-- The counting state of one anomaly, for its history, or nil when it has none.
-- KEYS: meta
-- Returns names and values: 'newest', 'evicted' (-1: none), 'tail' (the tail's packed times,
-- oldest first), then for each ring r (1..4) 'ring<r>' (its hash as a flat list) and
-- 'pending<r>' ({slot, count} not yet added to the hash).
local packed = redis.call('HGET', KEYS[1], 'st')
if not packed then return nil end
local s = load_state(KEYS[1])
local buffer, head = tail_buffer(s), s[HEAD]
local tail = string.sub(buffer, 8 * head + 1) .. string.sub(buffer, 1, 8 * head)
local out = {'newest', s[NEWEST], 'evicted', s[EVICTED], 'tail', tail}
for r = 1, 4 do
  out[#out + 1] = 'ring' .. r
  out[#out + 1] = redis.call('HGETALL', ring_key(s, r))
  out[#out + 1] = 'pending' .. r
  out[#out + 1] = {s[PENDING + 2 * r], s[PENDING + 2 * r + 1]}
end
return out
