-- Drop the search entry of an anomaly that is gone, and the grams of a term no anomaly of the
-- shard holds any more.
-- KEYS: the shard's terms and grams (see shard_key)
-- ARGV: term anomaly_key
local term = ARGV[1]
redis.call('ZREM', KEYS[1], term .. '\0' .. ARGV[2])
if #redis.call('ZRANGEBYLEX', KEYS[1], '[' .. term .. '\0', '[' .. term .. '\0\255',
               'LIMIT', 0, 1) > 0 then
  return 0
end
local members = gram_members(term)
if #members > 0 then redis.call('ZREM', KEYS[2], unpack(members)) end
return 1
