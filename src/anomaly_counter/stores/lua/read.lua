-- A snapshot of one anomaly as of `at`, or nil when nothing is known of it.
-- KEYS: meta ring1h ring24h ring7d ring30d days signature
-- ARGV: at now retention_days fix_validity_ms
if redis.call('EXISTS', KEYS[1], KEYS[6]) == 0 then return nil end
local s = load_state(KEYS[1])
local rings = {KEYS[2], KEYS[3], KEYS[4], KEYS[5]}
local c = counts(s, rings, tonumber(ARGV[1]))
return reply(s, c, KEYS[6], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), {},
             redis.call('GET', KEYS[7]) or '')
