-- The writes of a shard's notices outbox (see post in common.lua), one operation per call.
-- KEYS: the shard's outbox stream ('...:x:ob'); the other outbox keys are named from it.
-- ARGV: the operation, then its arguments:
--   lease holder lease_ms          take or renew the lease: 0 while another holds it, else 1
--                                  (no notice waits) or 2 (some do)
--   settle holder lease_ms channel entry_id dead_field dead_letter dead_bound channels...
--                                  if holder holds the lease (renewed): the channel's cursor
--                                  moves to entry_id, a dead letter is kept (dead_field ''
--                                  for none), the entries all channels passed are deleted: 1;
--                                  else 0 and nothing done
--   release holder                 give the lease back
--   retry now field kind level at counts notice_id channel anomaly_key [field ...]
--                                  dead letters back in the outbox, for their channel
local stream = KEYS[1]
local cursors, lease, dead = stream .. 's', stream .. 'l', stream .. 'd'
local op = ARGV[1]

local function holds(holder, lease_ms)
  if redis.call('GET', lease) ~= holder then return false end
  redis.call('PEXPIRE', lease, lease_ms)
  return true
end

if op == 'lease' then
  if not redis.call('SET', lease, ARGV[2], 'NX', 'PX', ARGV[3]) and not holds(ARGV[2], ARGV[3])
  then
    return 0
  end
  if redis.call('XLEN', stream) > 0 then return 2 end
  return 1
elseif op == 'settle' then
  if not holds(ARGV[2], ARGV[3]) then return 0 end
  local field = 'c' .. ARGV[4]
  if entry_after(ARGV[5], redis.call('HGET', cursors, field) or '') then
    redis.call('HSET', cursors, field, ARGV[5])
  end
  if ARGV[6] ~= '' then
    if redis.call('HLEN', dead) >= tonumber(ARGV[8]) then
      redis.call('HINCRBY', cursors, 'dead_overflow', 1)
    else
      redis.call('HSET', dead, ARGV[6], ARGV[7])
    end
  end
  local passed = nil
  for i = 9, #ARGV do
    local cursor = redis.call('HGET', cursors, 'c' .. ARGV[i]) or ''
    if passed == nil or entry_after(passed, cursor) then passed = cursor end
  end
  if passed and passed ~= '' then
    local ms, seq = string.match(passed, '^(%d+)%-(%d+)$')
    redis.call('XTRIM', stream, 'MINID', ms .. '-' .. string.format('%d', tonumber(seq) + 1))
  end
  return 1
elseif op == 'release' then
  if redis.call('GET', lease) == ARGV[2] then redis.call('DEL', lease) end
  return 1
elseif op == 'retry' then
  local now = ARGV[2]
  local n = 0
  for i = 3, #ARGV, 8 do
    if redis.call('HDEL', dead, ARGV[i]) == 1 then
      redis.call('XADD', stream, '*', 'k', ARGV[i + 7], 'n', ARGV[i + 1], 'l', ARGV[i + 2],
                 'a', ARGV[i + 3], 'c', ARGV[i + 4], 'w', now, 'i', ARGV[i + 5],
                 'o', ARGV[i + 6])
      n = n + 1
    end
  end
  return n
end
return redis.error_reply('unknown outbox operation ' .. tostring(op))
