-- Keep the latest time an episode of a known anomaly was resolved ('rs' in its meta hash).
-- KEYS: meta
-- ARGV: at
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local at = tonumber(ARGV[1])
if at > num(redis.call('HGET', KEYS[1], 'rs'), -1) then redis.call('HSET', KEYS[1], 'rs', at) end
return 1
