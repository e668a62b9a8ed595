-- Mark a permanent fix; the next occurrence after it is a regression.
-- KEYS: meta
-- ARGV: at description ttl_seconds fix_validity_ms now
local at, now = tonumber(ARGV[1]), tonumber(ARGV[5])
local s = load_state(KEYS[1])
s[FIX], s[REGRESSED] = at, -1
redis.call('HSET', KEYS[1], 'st', pack_state(s), 'fixd', ARGV[2])
local ttl = math.max(tonumber(ARGV[3]), floor((at + tonumber(ARGV[4]) - now) / 1000))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', s[TAIL_KEY], ttl)  -- it lives as long as the state that counts on it
return 1
