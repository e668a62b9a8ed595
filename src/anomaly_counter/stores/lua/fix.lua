-- Mark a permanent fix; the next occurrence after it is a regression. Told in the timeline.
-- KEYS: meta
-- ARGV: at description ttl_seconds fix_validity_ms now write_id by timeline_entry anomaly_key
--       shard_share
-- Returns 0 for a write already applied (a retry), -1 for one refused (a new anomaly past the
-- shard's share of max_anomalies: nothing written), else 1.
local at, now, ttl = tonumber(ARGV[1]), tonumber(ARGV[5]), tonumber(ARGV[3])
local member = ARGV[9]
if is_new(KEYS[1]) and not take_place(KEYS[1], member, tonumber(ARGV[10]), ttl) then
  return -1
end
if not first_write(KEYS[1], ARGV[6], now, ttl) then return 0 end
local s = load_state(KEYS[1])
s[FIX], s[REGRESSED] = at, -1
redis.call('HSET', KEYS[1], 'st', pack_state(s), 'fixd', ARGV[2], 'fixb', ARGV[7])
local keep = math.max(ttl, floor((at + tonumber(ARGV[4]) - now) / 1000))
tell(s[BASE], ARGV[8], keep)
-- what the state counts on, is shown with and is found by lives as long as it does
for _, name in ipairs({KEYS[1], s[TAIL_KEY], key_of(s, 'k'), key_of(s, 'l'), key_of(s, 's')}) do
  redis.call('EXPIRE', name, keep)
end
extend_shard(KEYS[1], keep)
keep_place(KEYS[1], member, keep)  -- (a fixed anomaly lives longer: it keeps its place as long)
return 1
