-- The counting state of one anomaly, for its history, or nil when it has none.
-- KEYS: meta
-- Returns names and values: 'newest', 'evicted' (-1: none), then window_fields (window.lua):
-- 'tail', 'ring<r>', 'pending<r>'.
local packed = redis.call('HGET', KEYS[1], 'st')
if not packed then return nil end
local s = load_state(KEYS[1])
return window_fields(s, {'newest', s[NEWEST], 'evicted', s[EVICTED]})
