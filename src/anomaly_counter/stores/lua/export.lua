-- One anomaly whole, for export (anomaly_counter.transfer), or nil when it holds no state.
-- KEYS: meta
-- ARGV: anomaly_key (its member in the shard's indexes)
-- Returns names and values: 'st' (its packed state's fields: first, newest, evicted, has_days,
-- level, fix, regressed, in that order), then window_fields (window.lua): 'tail', 'ring<r>',
-- 'pending<r>' (r = 1..4); then 'meta' (its meta hash, the state left out), 'signature' ('' for none),
-- 'ids', 'marks', 'days', 'history', 'milestones', 'routine', 'open', and 'scores': its
-- entries in INDEX_NAMES, 'dispositions', 'chronic' and 'flapping' (-1: none).
local meta = KEYS[1]
if redis.call('HEXISTS', meta, 'st') == 0 then return nil end
local s = load_state(meta)
local out = window_fields(
  s, {'st', {s[FIRST], s[NEWEST], s[EVICTED], s[HAS_DAYS], s[LEVEL], s[FIX], s[REGRESSED]}})
local hash = redis.call('HGETALL', meta)
local fields = {}
for i = 1, #hash, 2 do
  if hash[i] ~= 'st' then fields[#fields + 1] = hash[i]; fields[#fields + 1] = hash[i + 1] end
end
local scores = {}
local names = {unpack(INDEX_NAMES)}
names[#names + 1], names[#names + 2], names[#names + 3] = 'dispositions', 'chronic', 'flapping'
for _, name in ipairs(names) do
  scores[#scores + 1] = name
  scores[#scores + 1] = redis.call('ZSCORE', shard_key(meta, name), ARGV[1]) or '-1'
end
local rest = {
  'meta', fields,
  'signature', redis.call('GET', key_of(s, 's')) or '',
  'ids', redis.call('ZRANGE', key_of(s, 'i'), 0, -1, 'WITHSCORES'),
  'marks', redis.call('HGETALL', key_of(s, 'w')),
  'days', redis.call('HGETALL', key_of(s, 'd')),
  'history', redis.call('LRANGE', key_of(s, 'h'), 0, -1),
  'milestones', redis.call('LRANGE', key_of(s, 'k'), 0, -1),
  'routine', redis.call('LRANGE', key_of(s, 'l'), 0, -1),
  'open', redis.call('HGETALL', key_of(s, 'o')),
  'scores', scores,
}
for _, value in ipairs(rest) do out[#out + 1] = value end
return out
