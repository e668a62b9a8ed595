-- Take back the permanent fix in force (and its regression). Told in the timeline.
-- KEYS: meta
-- ARGV: now fix_validity_ms write_id ttl_seconds timeline_entry
-- Returns 1 when a fix was undone (or this write already undid it: a retry), else 0. The write
-- id is remembered only with an undo that happened, so a retried refusal is refused again.
local meta, now, write_id = KEYS[1], tonumber(ARGV[1]), ARGV[3]
local ids = string.sub(meta, 1, -2) .. 'i'
if write_id ~= '' and redis.call('ZSCORE', ids, write_id) then return 1 end
if redis.call('HEXISTS', meta, 'st') == 0 then return 0 end
local s = load_state(meta)
if s[FIX] < 0 or now - s[FIX] >= tonumber(ARGV[2]) then return 0 end
s[FIX], s[REGRESSED] = -1, -1
redis.call('HSET', meta, 'st', pack_state(s))
redis.call('HDEL', meta, 'fixd', 'fixb')
first_write(meta, write_id, now, tonumber(ARGV[4]))
tell(s[BASE], ARGV[5], tonumber(ARGV[4]))
return 1
