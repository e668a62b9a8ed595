-- Lower (or drop) a stale index entry, only if no write moved it since it was read.
-- KEYS: index meta
-- ARGV: member score_read current_value (0 drops the entry) bound_index (1..4, or 0)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if tonumber(ARGV[3]) <= 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
end
-- the anomaly's own note of its index score must follow, or it would skip a needed update
local which = tonumber(ARGV[4])
if which > 0 and redis.call('HEXISTS', KEYS[2], 'st') == 1 then
  local s = load_state(KEYS[2])
  s[BOUND + which] = tonumber(ARGV[3])
  redis.call('HSET', KEYS[2], 'st', pack_state(s))
end
return 1
