-- Add an entry to the timeline of a known anomaly (a notice sent, say).
-- KEYS: meta
-- ARGV: timeline_entry ttl_seconds
if redis.call('HEXISTS', KEYS[1], 'st') == 0 then return 0 end
tell(string.sub(KEYS[1], 1, -2), ARGV[1], tonumber(ARGV[2]))
return 1
