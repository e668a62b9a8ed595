-- Make room for the new anomalies of a batch before any of it is written, or refuse it: so that
-- a batch that runs in many calls (record.lua) is refused whole, never in part.
-- KEYS: the meta keys of the batch's anomalies, each once (of one slot on a cluster; a cluster
--       declares more keys after them).
-- ARGV: shard_share hold_ms, then the anomaly key (its live set member) of each meta key.
-- Returns the time (server ms) until which a place is held for each new one in its shard's
-- live set (its first occurrence then keeps it for good), or 0, holding nothing, when a shard
-- would pass its share.
local share, hold = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = server_ms()
local new, shards = {}, {}
for i = 1, #ARGV - 2 do
  local meta = KEYS[i]
  if is_new(meta) then
    local live = live_key(meta)
    if new[live] == nil then
      redis.call('ZREMRANGEBYSCORE', live, '-inf', '(' .. clock)  -- (forget the ended first)
      new[live] = {}
      shards[#shards + 1] = live
    end
    local member = ARGV[2 + i]
    if not redis.call('ZSCORE', live, member) then
      local members = new[live]
      members[#members + 1] = member
    end
  end
end
for _, live in ipairs(shards) do
  if redis.call('ZCARD', live) + #new[live] > share then return 0 end
end
local held = clock + hold
for _, live in ipairs(shards) do
  for _, member in ipairs(new[live]) do redis.call('ZADD', live, 'GT', held, member) end
  extend(live, floor(hold / 1000) + 1)
end
return held
