-- Episodes: incidents and flapping, as anomaly_counter/episodes.py defines them (the tests
-- hold both to one model). The incident's head is in the meta hash ('in': start, end,
-- instances, unlisted), its open episodes in the hash 'o' (fingerprint -> 'start,seen'), the
-- flapping state in the meta hash ('fl': slot width, newest slot, mask of the last FLAP_SLOTS
-- slots with a change (bit k: k slots before the newest), flag).
--
-- In a function, made only by the calls that need it: a script's chunk makes a closure of
-- every local function on each call, and most record calls carry no episode.
local function episodes_module()
  local NO_END = -1

  local function numbers(text, n)
    local out = {}
    for part in string.gmatch(text, '[^,]+') do out[#out + 1] = tonumber(part) end
    if #out ~= n then return nil end
    return out
  end

  local function incident_load(s)
    local head = redis.call('HGET', key_of(s, 'm'), 'in')
    local h = head and numbers(head, 4) or {-1, NO_END, 0, 0}
    local inc = {start = h[1], finish = h[2], instances = h[3], unlisted = h[4], n = 0, open = {}}
    local flat = redis.call('HGETALL', key_of(s, 'o'))
    for i = 1, #flat, 2 do
      local e = numbers(flat[i + 1], 2)
      if e then inc.open[flat[i]] = e; inc.n = inc.n + 1 end
    end
    return inc
  end

  local function incident_save(s, inc, ttl)
    redis.call('HSET', key_of(s, 'm'), 'in', string.format('%d,%d,%d,%d', inc.start, inc.finish,
               inc.instances, inc.unlisted))
    -- (its lifetime is the anomaly's: set once, then pushed out with the others, hourly)
    if inc.n > 0 and redis.call('TTL', key_of(s, 'o')) < 0 then
      redis.call('EXPIRE', key_of(s, 'o'), ttl)
    end
  end

  local function incident_drop(s, inc, fp)
    redis.call('HDEL', key_of(s, 'o'), fp)
    inc.open[fp] = nil
    inc.n = inc.n - 1
  end

  local function incident_add(s, inc, fp, start, finish, now, max_open)
    if finish ~= NO_END then
      inc.finish = math.max(inc.finish, finish)
    elseif inc.n < max_open then
      redis.call('HSET', key_of(s, 'o'), fp, string.format('%d,%d', start, now))
      inc.open[fp] = {start, now}
      inc.n = inc.n + 1
    else
      inc.unlisted = inc.unlisted + 1
    end
  end

  -- A new episode (finish NO_END while it fires); true when it starts an incident (a
  -- recurrence), false when it joins the one in progress; and its changes for flapping (a
  -- list of times). (episodes.IncidentState.fire)
  local function incident_fire(s, fp, start, finish, now, rules)
    local gap, max_open, open_ms, ttl = rules.gap, rules.max_open, rules.open_ms, rules.ttl
    local inc = incident_load(s)
    for other, e in pairs(inc.open) do  -- not re-sent for open_ms: over when last seen
      if now - e[2] > open_ms then
        inc.finish = math.max(inc.finish, e[2])
        incident_drop(s, inc, other)
      end
    end
    local prior = inc.open[fp]
    if prior then
      if prior[1] < start then
        incident_drop(s, inc, fp)
        inc.finish = math.max(inc.finish, start - 1)
      elseif prior[1] > start then
        if finish == NO_END then finish = prior[1] - 1 else finish = math.min(finish, prior[1] - 1) end
      else
        redis.call('HSET', key_of(s, 'o'), fp, string.format('%d,%d', prior[1], math.max(prior[2], now)))
        incident_save(s, inc, ttl)
        return false, {}
      end
    end
    local firing = inc.n > 0
    local joins = inc.start >= 0 and (firing or start <= inc.finish + gap)
                  and (finish == NO_END or finish >= inc.start - gap)
    local marks = {}
    if joins then
      if start < inc.start then marks[1] = start end  -- (it started earlier than seen so far)
      inc.instances = inc.instances + 1
      inc.start = math.min(inc.start, start)
      incident_add(s, inc, fp, start, finish, now, max_open)
    else
      marks[1] = start
      if inc.start < 0 or (not firing and start > inc.finish + gap) then
        inc.start, inc.finish, inc.instances, inc.unlisted = start, NO_END, 1, 0
        incident_add(s, inc, fp, start, finish, now, max_open)
      end
    end
    if finish ~= NO_END and inc.n == 0 and inc.finish ~= NO_END then
      if joins or inc.start == start then
        marks[#marks + 1] = inc.finish
      else
        marks[#marks + 1] = finish
      end
    end
    incident_save(s, inc, ttl)
    return not joins, marks
  end

  -- An open episode sent again (Alertmanager repeats firing alerts): still open.
  local function episode_seen(s, fp, now)
    local o = key_of(s, 'o')
    local held = redis.call('HGET', o, fp)
    local e = held and numbers(held, 2)
    if e and e[2] < now then redis.call('HSET', o, fp, string.format('%d,%d', e[1], now)) end
  end

  -- An open episode resolved (fp '': the anomaly as a whole, every open episode); one not open
  -- changes nothing. Its changes for flapping: the incident's end, when it closed the last
  -- open episode. (episodes.IncidentState.resolve)
  local function incident_resolve(s, fp, started, at, ttl)
    local inc = incident_load(s)
    if fp == '' then
      if inc.n == 0 then return {} end
      redis.call('DEL', key_of(s, 'o'))
      inc.n = 0
    else
      local prior = inc.open[fp]
      if not prior or prior[1] > started then return {} end
      incident_drop(s, inc, fp)
    end
    inc.finish = math.max(inc.finish, at)
    incident_save(s, inc, ttl)
    if inc.n > 0 then return {} end
    return {inc.finish}
  end

  local function flap_load(s)
    local text = redis.call('HGET', key_of(s, 'm'), 'fl')
    local f = text and numbers(text, 4) or {0, -1, 0, 0}
    return {slot = f[1], newest = f[2], mask = f[3], flag = f[4]}
  end

  local function flap_units(f, at_slot)
    if f.newest < 0 then return 0 end
    local shift = math.max(0, at_slot - f.newest)
    local total = 0
    for k = 0, FLAP_SLOTS - 1 - shift do
      if bit.band(bit.rshift(f.mask, k), 1) == 1 then total = total + 120 - 2 * (k + shift) end
    end
    return total
  end

  local function flap_mark(f, at, slot_ms)
    local slot = floor(at / slot_ms)
    if f.slot ~= slot_ms or f.newest < 0 then
      f.slot, f.newest, f.mask = slot_ms, slot, 1
    elseif slot > f.newest then
      local shift = slot - f.newest
      if shift < FLAP_SLOTS then
        f.mask = bit.bor(bit.band(bit.lshift(f.mask, shift), FLAP_MASK), 1)
      else
        f.mask = 1
      end
      f.newest = slot
    elseif f.newest - slot < FLAP_SLOTS then
      f.mask = bit.bor(f.mask, bit.lshift(1, f.newest - slot))
    end
  end

  -- Changes at the times `marks` lists (none: the sweep's look as of now), then the
  -- thresholds: starting or stopping to flap is told in the timeline and the outbox (at the
  -- latest change, or now), and the shard's flapping index (scored by when it would stop)
  -- follows. Returns the change: 1 started, 0 stopped, nil none. (episodes.FlapState; the
  -- SQLite store's _flap_step) rules: slot_ms, start, stop (percent), outbox (the shard's
  -- share), ttl.
  local function flap_step(s, member, marks, now, rules)
    local slot_ms, start, stop, outbox, ttl = rules.slot_ms, rules.start, rules.stop, rules.outbox,
                                              rules.ttl
    local f = flap_load(s)
    local when = now
    for i, at in ipairs(marks) do
      flap_mark(f, at, slot_ms)
      if i == 1 or at > when then when = at end
    end
    local change = nil
    local units = 0
    if f.newest >= 0 and f.slot > 0 then
      units = flap_units(f, math.max(f.newest, floor(now / f.slot)))
      if f.flag == 0 and units > start * FLAP_SLOTS then
        f.flag, change = 1, 1
      elseif f.flag == 1 and units < stop * FLAP_SLOTS then
        f.flag, change = 0, 0
      end
    end
    local meta = key_of(s, 'm')
    redis.call('HSET', meta, 'fl', string.format('%d,%d,%d,%d', f.slot, f.newest, f.mask, f.flag))
    local index = shard_key(meta, 'flapping')
    if f.flag == 1 then
      local leave = (f.newest + FLAP_SLOTS) * f.slot
      for slot = f.newest + 1, f.newest + FLAP_SLOTS do
        if flap_units(f, slot) < stop * FLAP_SLOTS then leave = slot * f.slot; break end
      end
      redis.call('ZADD', index, leave, member)
      extend(index, ttl)
    elseif change == 0 then
      redis.call('ZREM', index, member)
    end
    if change == nil then return nil end
    local when_text = string.format('%d', when)
    local percent = string.format('%.1f', units / FLAP_SLOTS)
    tell(s[BASE], TL_FLAPPING .. TL_SEP .. when_text .. TL_SEP .. change .. TL_SEP .. percent, ttl)
    if outbox > 0 then
      local kind = 's'
      if change == 1 then kind = 'f' end
      post(meta, member, kind, floor(tonumber(percent) * 10 + 0.5), when_text, counts(s, when), now,
           outbox)
    end
    return change
  end

  -- The rules a call applies, from their one argument (episodes.EpisodeRules.store_args:
  -- 'incidents (1/0),grouping_gap_ms,max_open,open_ms,flap_slot_ms,flap_start,flap_stop'),
  -- the shard's share of the outbox and the keys' lifetime.
  local function rules_of(packed, outbox, ttl)
    local r = numbers(packed, 7)
    return {incidents = r[1] == 1, gap = r[2], max_open = r[3], open_ms = r[4],
            slot_ms = r[5], start = r[6], stop = r[7], outbox = outbox, ttl = ttl}
  end

  return {fire = incident_fire, seen = episode_seen, resolve = incident_resolve,
          step = flap_step, rules = rules_of}
end
