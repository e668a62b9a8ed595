-- A snapshot of one anomaly as of `at`, or nil when nothing is known of it.
-- KEYS: meta tail ring1h ring24h ring7d ring30d days signature
-- ARGV: at now retention_days fix_validity_ms
if redis.call('EXISTS', KEYS[1], KEYS[7]) == 0 then return nil end
local s = load_state(KEYS[1])
local rings = {KEYS[3], KEYS[4], KEYS[5], KEYS[6]}
local c = counts(s, KEYS[2], rings, tonumber(ARGV[1]))
return reply(s, c, KEYS[7], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), {},
             redis.call('GET', KEYS[8]) or '')
