-- Look again, as of now, at flapping anomalies whose stop time has come (the sweep): each that
-- went quiet stops flapping (timeline, outbox, index; see episodes.lua's flap_step).
-- KEYS: the meta key of each anomaly (all of one shard's slot on a cluster)
-- ARGV: now outbox_share flap_slot_ms flap_start flap_stop ttl_seconds, then each anomaly key
-- Returns how many stopped.
local now = tonumber(ARGV[1])
local rules = {outbox = tonumber(ARGV[2]), slot_ms = tonumber(ARGV[3]), start = tonumber(ARGV[4]),
               stop = tonumber(ARGV[5]), ttl = tonumber(ARGV[6])}
local E = episodes_module()
local stopped = 0
for i = 1, #ARGV - 6 do  -- (on a cluster, KEYS goes on with the keys the calls may touch)
  local meta, member = KEYS[i], ARGV[6 + i]
  if redis.call('HEXISTS', meta, 'st') == 0 then  -- forgotten since: out of the index
    redis.call('ZREM', shard_key(meta, 'flapping'), member)
  elseif E.step(load_state(meta), member, {}, now, rules) == 0 then
    stopped = stopped + 1
  end
end
return stopped
