-- The counting state's tail and rings as the state and export scripts return them, appended
-- to out: 'tail' (the tail's packed times, oldest first), then for each ring r (1..4)
-- 'ring<r>' (its hash as a flat list) and 'pending<r>' ({slot, count} not yet in the hash).
local function window_fields(s, out)
  local buffer, head = tail_buffer(s), s[HEAD]
  out[#out + 1] = 'tail'
  out[#out + 1] = string.sub(buffer, 8 * head + 1) .. string.sub(buffer, 1, 8 * head)
  for r = 1, 4 do
    out[#out + 1] = 'ring' .. r
    out[#out + 1] = redis.call('HGETALL', ring_key(s, r))
    out[#out + 1] = 'pending' .. r
    out[#out + 1] = {s[PENDING + 2 * r], s[PENDING + 2 * r + 1]}
  end
  return out
end
