-- A snapshot of one anomaly as of `at`, or nil when nothing is known of it.
-- KEYS: meta tail ring1h ring24h ring7d ring30d days
-- ARGV: at now retention_days fix_validity_ms
if redis.call('EXISTS', KEYS[1], KEYS[7]) == 0 then return nil end
return snapshot(KEYS[1], KEYS[2], {KEYS[3], KEYS[4], KEYS[5], KEYS[6]}, KEYS[7],
                tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
