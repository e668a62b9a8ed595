-- Mark a permanent fix; the next occurrence after it is a regression.
-- KEYS: meta
-- ARGV: at description ttl_seconds fix_validity_ms now
local at, now = tonumber(ARGV[1]), tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'fix', at, 'fixd', ARGV[2])
redis.call('HDEL', KEYS[1], 'reg')
local ttl = math.max(tonumber(ARGV[3]), floor((at + tonumber(ARGV[4]) - now) / 1000))
redis.call('EXPIRE', KEYS[1], ttl)
return 1
