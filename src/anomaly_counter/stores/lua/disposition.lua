-- Count one disposition for the anomaly and for its project's shard summary, and tell it in
-- the timeline.
-- KEYS: days index_dispositions shard_summary meta
-- ARGV: anomaly_key type at now ttl_seconds retention_days write_id timeline_entry shard_share
-- Returns the anomaly's disposition total, -1 for a write already applied (a retry), or -2 for
-- one refused (a new anomaly past the shard's share of max_anomalies: nothing written).
local member, kind = ARGV[1], ARGV[2]
local at, now, ttl, retention = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]),
                                tonumber(ARGV[6])
if is_new(KEYS[4]) and not take_place(KEYS[4], member, tonumber(ARGV[9]), ttl) then
  return -2
end
if not first_write(KEYS[4], ARGV[7], now, ttl) then return -1 end
day_add(KEYS[1], at, now, retention, 'd:' .. kind, 1)
day_add(KEYS[3], at, now, retention, 'd:' .. kind, 1)
local total = 0
for name, n in pairs(day_totals(KEYS[1], now, retention)) do
  if string.sub(name, 1, 2) == 'd:' then total = total + n end
end
redis.call('ZADD', KEYS[2], total, member)
redis.call('EXPIRE', KEYS[1], ttl)
extend(KEYS[2], ttl)  -- (shard keys: never shortened)
extend(KEYS[3], ttl)
mark_days(KEYS[4], ttl)
tell(string.sub(KEYS[4], 1, -2), ARGV[8], ttl)
return total
