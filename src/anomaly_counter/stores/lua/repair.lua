-- Count one repair attempt, keep it in the last-100 history, and tell it in the timeline.
-- KEYS: days history meta
-- ARGV: action success(0|1) at now ttl_seconds retention_days history_length write_id
--       timeline_entry anomaly_key shard_share until (0: not verified; else the end of its
--       verification window: the anomaly's first occurrence after at and up to until, if one
--       arrived already, is noted as 'back'; later ones are noted by record.lua)
-- Returns 0 for a write already applied (a retry), -1 for one refused (a new anomaly past the
-- shard's share of max_anomalies: nothing written), else 1.
local action, success = ARGV[1], ARGV[2] == '1'
local at, now, ttl, retention = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]),
                                tonumber(ARGV[6])
if is_new(KEYS[3]) and not take_place(KEYS[3], ARGV[10], tonumber(ARGV[11]), ttl) then
  return -1
end
if not first_write(KEYS[3], ARGV[8], now, ttl) then return 0 end
day_add(KEYS[1], at, now, retention, 't:' .. action, 1)
if success then day_add(KEYS[1], at, now, retention, 's:' .. action, 1) end
local attempt = {action = action, success = success, at = at}
local deadline = tonumber(ARGV[12])  -- ('until' is a word of Lua's)
if deadline > 0 then
  attempt['until'] = deadline
  local s = load_state(KEYS[3])
  local back = first_occurrence_after(s, at)
  if back and back <= deadline then attempt['back'] = back end
  if not attempt['back'] and deadline > s[VERIFY_UNTIL] then
    redis.call('HSET', KEYS[3], 'vu', string.format('%d', deadline))
    extend(KEYS[3], ttl)  -- (its meta lives while it is watched)
  end
end
redis.call('LPUSH', KEYS[2], cjson.encode(attempt))
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[7]) - 1)
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
mark_days(KEYS[3], ttl)
tell(string.sub(KEYS[3], 1, -2), ARGV[9], ttl)
return 1
