-- Keep the latest time an episode of a known anomaly was resolved ('rs' in its meta hash); a
-- newer one than any before is told in the timeline (a re-sent resolution is not).
-- KEYS: meta
-- ARGV: at timeline_entry ttl_seconds
if redis.call('HEXISTS', KEYS[1], 'st') == 0 or load_state(KEYS[1])[FIRST] < 0 then return 0 end
local at = tonumber(ARGV[1])
if at <= num(redis.call('HGET', KEYS[1], 'rs'), -1) then return 0 end
redis.call('HSET', KEYS[1], 'rs', at)
tell(string.sub(KEYS[1], 1, -2), ARGV[2], tonumber(ARGV[3]))
return 1
