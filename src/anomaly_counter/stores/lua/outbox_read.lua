-- The reads of a shard's notices outbox (see outbox.lua for its keys).
-- KEYS: the shard's outbox stream ('...:x:ob').
-- ARGV: the operation, then its arguments:
--   read limit channels...   the cursors of the channels, then up to limit entries after the
--                            lowest: {cursors..., entries} with each entry {id, fields}
--   stats                    {entries, oldest entry's write time or -1, overflowed, dead,
--                            dead letters not kept}
--   dead                     the dead letters (their text)
local stream = KEYS[1]
local cursors, dead = stream .. 's', stream .. 'd'
local op = ARGV[1]

if op == 'read' then
  local limit = tonumber(ARGV[2])
  local out, lowest = {}, nil
  for i = 3, #ARGV do
    local cursor = redis.call('HGET', cursors, 'c' .. ARGV[i]) or ''
    out[#out + 1] = cursor
    if lowest == nil or entry_after(lowest, cursor) then lowest = cursor end
  end
  local start = '-'
  if lowest and lowest ~= '' then start = lowest end
  local entries = redis.call('XRANGE', stream, start, '+', 'COUNT', limit + 1)
  local kept = {}
  for _, e in ipairs(entries) do
    if e[1] ~= lowest and #kept < limit then kept[#kept + 1] = e end
  end
  out[#out + 1] = kept
  return out
elseif op == 'stats' then
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  local oldest = -1
  if first[1] then
    local f = first[1][2]
    for i = 1, #f, 2 do if f[i] == 'w' then oldest = tonumber(f[i + 1]) end end
  end
  return {redis.call('XLEN', stream), oldest,
          tonumber(redis.call('HGET', cursors, 'overflow') or '0'), redis.call('HLEN', dead),
          tonumber(redis.call('HGET', cursors, 'dead_overflow') or '0')}
elseif op == 'dead' then
  return redis.call('HVALS', dead)
end
return redis.error_reply('unknown outbox operation ' .. tostring(op))
