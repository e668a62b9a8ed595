-- Give back the places admit.lua held for a batch that was refused after all (another of its
-- calls found no room): a place still held until that very time is this batch's.
-- KEYS: the meta keys admit was given (a cluster declares more keys after them).
-- ARGV: held (admit's answer), then the anomaly key of each meta key.
local held = ARGV[1]
for i = 1, #ARGV - 1 do
  local live, member = live_key(KEYS[i]), ARGV[1 + i]
  if redis.call('ZSCORE', live, member) == held then redis.call('ZREM', live, member) end
end
return 1
