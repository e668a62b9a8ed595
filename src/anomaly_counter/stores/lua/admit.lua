-- Make room for the new anomalies of a batch before any of it is written, or refuse it: so that
-- a batch that runs in many calls (record.lua) is refused whole, never in part.
-- KEYS: the meta keys of the batch's anomalies, each once (of one slot on a cluster; a cluster
--       declares more keys after them).
-- ARGV: shard_share now hold_ms, then the anomaly key (its index member) of each meta key.
-- Returns 1 and holds a place for each new one in its shard's live set for hold_ms (until its
-- first occurrence keeps it there for good), or returns 0 and holds nothing when a shard
-- would pass its share.
local share, now, hold = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local new, shards = {}, {}
for i = 1, #ARGV - 3 do
  local meta = KEYS[i]
  local packed = redis.call('HGET', meta, 'st')
  -- (the state's first number is the first occurrence's time, -1 before it)
  if not packed or struct.unpack('<d', packed) < 0 then
    local live, member = shard_key(meta, 'live'), ARGV[3 + i]
    if not redis.call('ZSCORE', live, member) then
      if new[live] == nil then
        new[live] = {}
        shards[#shards + 1] = live
      end
      local members = new[live]
      members[#members + 1] = member
    end
  end
end
for _, live in ipairs(shards) do
  if not has_room(live, false, now, share, #new[live]) then return 0 end
end
for _, live in ipairs(shards) do
  for _, member in ipairs(new[live]) do redis.call('ZADD', live, now + hold, member) end
  extend(live, floor(hold / 1000) + 1)
end
return 1
