-- A snapshot of one anomaly as of `at`, or nil when nothing is known of it.
-- KEYS: meta (the script names the anomaly's other keys from it, see load_state)
-- ARGV: at now retention_days fix_validity_ms
-- The reply() is named 'resolved', 'firing' (open episodes), 'instances' (of the current or
-- last incident) and 'flap' (the flapping state as stored) besides the fix in force.
local meta = KEYS[1]
if redis.call('EXISTS', meta, string.sub(meta, 1, -2) .. 'd') == 0 then return nil end
local s = load_state(meta)
local c = counts(s, tonumber(ARGV[1]))
local got = redis.call('HMGET', meta, 'rs', 'in', 'fl')
local instances = 0  -- (the third of the incident's four numbers, see episodes.lua)
if got[2] then instances = tonumber(string.match(got[2], '^[^,]*,[^,]*,([^,]*),')) or 0 end
return reply(s, c, tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]),
             redis.call('GET', key_of(s, 's')) or '',
             {'resolved', num(got[1], -1), 'instances', instances,
              'firing', redis.call('HLEN', key_of(s, 'o')), 'flap', got[3] or ''})
