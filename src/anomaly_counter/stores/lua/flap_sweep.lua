-- Look again, as of now, at flapping anomalies whose stop time has come (the sweep): each that
-- went quiet stops flapping (timeline, outbox, index; see episodes.lua's flap_step).
-- KEYS: the meta key of each anomaly (all of one shard's slot on a cluster)
-- ARGV: now outbox_share rules (see episodes.lua's rules_of) ttl_seconds, then each anomaly
--       key
-- Returns how many stopped.
local now = tonumber(ARGV[1])
local E = episodes_module()
local rules = E.rules(ARGV[3], tonumber(ARGV[2]), tonumber(ARGV[4]))
local stopped = 0
for i = 1, #ARGV - 4 do  -- (on a cluster, KEYS goes on with the keys the calls may touch)
  local meta, member = KEYS[i], ARGV[4 + i]
  if redis.call('HEXISTS', meta, 'st') == 0 then  -- forgotten since: out of the index
    redis.call('ZREM', shard_key(meta, 'flapping'), member)
  elseif E.step(load_state(meta), member, {}, now, rules) == 0 then
    stopped = stopped + 1
  end
end
return stopped
