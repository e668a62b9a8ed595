-- Count occurrences, in order, atomically, in one call.
-- KEYS: for each occurrence, the meta key of its anomaly ('...:m'); the script names the
--       anomaly's other keys and its shard's project indexes from it (see load_state and
--       shard_key), and only when it uses them: a busy anomaly's call touches its meta and its
--       tail alone. On a cluster, the caller groups the occurrences of one slot.
-- ARGV: the policy (t_repeat t_escalate t_fix tail_capacity ttl_seconds dedup_horizon_ms
--       dedup_max_ids fix_validity_ms retention_days shard_share outbox_share: the shard's
--       share of the project's outbox, 0 for none; then the episodes' rules in one argument,
--       read only by a call with an episode: 'incidents (1/0),grouping_gap_ms,max_open,
--       open_ms,flap_slot_ms,flap_start,flap_stop'), then for each
--       occurrence: anomaly_key at now mark (see seen_before) signature search_terms episode
--       ('' for none, else '<ends>|<fingerprint>': an Alertmanager episode, and its
--       resolution's time, -1 while it fires)
-- Returns one reply() per occurrence, named: 'duplicate', 'escalated' (the level crossed into)
-- and 'newly_regressed' when set, 'joined' for an episode that joined the incident in
-- progress (not counted), and no signature (the caller has the one it sent); or named
-- 'refused' when it was not stored: it would have made a new anomaly in a shard that holds its
-- share of the project's max_anomalies (shard_share) already.
-- The first occurrence of an anomaly also indexes it for search and starts its timeline; a
-- crossing and a regression are told in the timeline (and a crossing counted for the project
-- by day) and put in the outbox for their notices, all in the same call.
local p = {}
for i = 1, 11 do p[i] = tonumber(ARGV[i]) end
local t1, t2, t3, cap, ttl, horizon, max_ids, fix_validity, retention, share, outbox =
  p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11]
-- The episodes' functions and rules, made by the first occurrence that has an episode (one
-- table each: a function may name at most 60 locals from outside it).
local E, rules = nil, nil
local function episodes()
  if not E then
    E = episodes_module()
    rules = E.rules(ARGV[12], outbox, ttl)
  end
  return E
end
local REFRESH_EVERY = 3600000  -- key lifetimes are pushed out at most hourly
local NO_NAMES = {}
local REFUSED = {'refused', 1}

local JOINED = {'joined', 1}
local NO_MARKS = {}

local function record_one(meta, member, at_text, now, mark, signature, terms, episode_arg)
  local at = tonumber(at_text)
  local episode, ends = '', -1
  if episode_arg ~= '' then
    local bar = string.find(episode_arg, '|', 1, true)
    ends, episode = tonumber(string.sub(episode_arg, 1, bar - 1)), string.sub(episode_arg, bar + 1)
  end
  local s = load_state(meta)
  if s[FRESH] and not take_place(meta, member, share, ttl) then
    return reply(s, {0, 0, 0, 0}, now, retention, fix_validity, '', REFUSED)
  end

  if seen_before(s, mark, now, horizon, max_ids, ttl) then
    if episode ~= '' then episodes().seen(s, episode, now) end  -- sent again: still open
    return reply(s, counts(s, at), now, retention, fix_validity, '', {'duplicate', 1})
  end

  local marks = NO_MARKS  -- its changes for flapping
  if episode ~= '' then
    local starts
    starts, marks = episodes().fire(s, episode, at, ends, now, rules)
    if not starts and rules.incidents then  -- joined the incident in progress: no recurrence
      if #marks > 0 then E.step(s, member, marks, now, rules) end
      return reply(s, counts(s, at), now, retention, fix_validity, '', JOINED)
    end
  end

  local first_ever = s[FIRST] < 0
  if first_ever then
    s[FIRST] = at
    redis.call('SET', key_of(s, 's'), signature)
  elseif at < s[FIRST] then
    s[FIRST] = at
  end
  add_occurrence(s, at, cap)
  -- a repair verified until at least now: this occurrence may be its recurrence
  if at <= s[VERIFY_UNTIL] then note_recurrence(meta, key_of(s, 'h'), at) end

  local now_counts = counts(s, s[NEWEST])
  local at_counts = now_counts
  if at ~= s[NEWEST] then at_counts = counts(s, at) end

  -- Escalation is judged on the current 24 h count, so a late occurrence can complete a
  -- crossing but a cooled-off anomaly is not re-announced by one.
  local level = level_for(now_counts[2], t1, t2, t3)
  local escalated = 0
  if level > s[LEVEL] then escalated = level end
  if level ~= s[LEVEL] then
    -- the shard's chronic anomalies (at REPEAT or above at their latest occurrence)
    if level > 0 then
      local chronic = shard_key(meta, 'chronic')
      redis.call('ZADD', chronic, level, member)
      extend(chronic, ttl)
    else
      redis.call('ZREM', shard_key(meta, 'chronic'), member)
    end
  end
  s[LEVEL] = level

  for w = 1, 4 do
    if now_counts[w] > s[BOUND + w] then
      s[BOUND + w] = index_bound(now_counts[w])
      redis.call('ZADD', index_key(meta, w), s[BOUND + w], member)
    end
  end

  local newly = 0
  local fix = s[FIX]
  if fix >= 0 and at >= fix and now - fix < fix_validity and s[REGRESSED] < 0 then
    newly = 1
    s[REGRESSED] = at
  end

  local refresh = now - s[REFRESHED] >= REFRESH_EVERY
  if refresh then s[REFRESHED] = now end
  redis.call('HSET', meta, 'st', pack_state(s))

  -- the story
  local base = s[BASE]
  if first_ever then
    index_terms(meta, member, terms)
    redis.call('HSET', meta, 'ix', 1)
    tell(base, TL_FIRST_SEEN .. TL_SEP .. at_text, ttl)
  elseif refresh and redis.call('HSETNX', meta, 'ix', 1) == 1 then
    -- first seen by a version without search: indexed now, by this occurrence's labels
    index_terms(meta, member, terms)
  end
  if escalated > 0 then
    tell(base, TL_ESCALATED .. TL_SEP .. at_text .. TL_SEP .. escalated .. TL_SEP
         .. string.format('%d', now_counts[2]), ttl)
    local summary = shard_key(meta, 'summary')
    day_add(summary, at, now, retention, 'e:' .. escalated, 1)
    extend(summary, ttl)
  end
  if newly > 0 then tell(base, TL_REGRESSED .. TL_SEP .. at_text, ttl) end
  if outbox > 0 then
    if escalated > 0 then post(meta, member, 'e', escalated, at_text, at_counts, now, outbox) end
    if newly > 0 then post(meta, member, 'r', 0, at_text, at_counts, now, outbox) end
  end
  if #marks > 0 then E.step(s, member, marks, now, rules) end

  if refresh then
    local meta_ttl = ttl
    if fix >= 0 then meta_ttl = math.max(ttl, floor((fix + fix_validity - now) / 1000)) end
    -- the tail, the timeline and the signature live as long as the state (the state counts on
    -- its tail, keeps the timeline's size, and is shown with its signature)
    for _, name in ipairs({meta, s[TAIL_KEY], key_of(s, 'k'), key_of(s, 'l'), key_of(s, 's')}) do
      redis.call('EXPIRE', name, meta_ttl)
    end
    keep_place(meta, member, meta_ttl)  -- (and a place for one stored by an earlier version)
    if level > 0 then  -- (also written by versions before the index: it heals within the hour)
      redis.call('ZADD', shard_key(meta, 'chronic'), level, member)
    end
    local names = {key_of(s, 'd'), key_of(s, 'h'), key_of(s, 'w'), key_of(s, 'o')}
    for w = 1, 4 do names[#names + 1] = ring_key(s, w) end
    for _, name in ipairs(names) do redis.call('EXPIRE', name, ttl) end
    extend_shard(meta, meta_ttl)
    prune_marks(s, now, horizon)
  end
  local named = NO_NAMES
  if escalated > 0 or newly > 0 then
    named = {}
    if escalated > 0 then named = {'escalated', escalated} end
    if newly > 0 then named[#named + 1] = 'newly_regressed'; named[#named + 1] = 1 end
  end
  return reply(s, at_counts, now, retention, fix_validity, '', named)
end

local out = {}
local k = 1
for a = 13, #ARGV, 7 do
  out[k] = record_one(KEYS[k], ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3],
                      ARGV[a + 4], ARGV[a + 5], ARGV[a + 6])
  k = k + 1
end
return out
