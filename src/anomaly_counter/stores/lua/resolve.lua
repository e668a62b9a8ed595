-- An episode of a known anomaly resolved: keep the latest resolution time ('rs' in its meta
-- hash; a newer one than any before is told in the timeline, a re-sent one is not), close the
-- episode in its incident (fingerprint '': every open episode), and count the transition for
-- flapping when none of its episodes is open any more (see episodes.lua's incident_resolve
-- and flap_step).
-- KEYS: meta
-- ARGV: at timeline_entry ttl_seconds anomaly_key episode started now outbox_share rules
--       (the episodes' rules in one argument, see episodes.lua's rules_of)
if redis.call('HEXISTS', KEYS[1], 'st') == 0 then return 0 end
local s = load_state(KEYS[1])
if s[FIRST] < 0 then return 0 end
local at, ttl = tonumber(ARGV[1]), tonumber(ARGV[3])
if at > num(redis.call('HGET', KEYS[1], 'rs'), -1) then
  redis.call('HSET', KEYS[1], 'rs', at)
  tell(s[BASE], ARGV[2], ttl)
end
local E = episodes_module()
local marks = E.resolve(s, ARGV[5], tonumber(ARGV[6]), at, ttl)
if #marks == 0 then return 1 end  -- (still firing, or closed nothing)
E.step(s, ARGV[4], marks, tonumber(ARGV[7]), E.rules(ARGV[9], tonumber(ARGV[8]), ttl))
return 1
