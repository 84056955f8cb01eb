-- Commit a transaction: check every read version, apply the writes, place and publish
-- the deliveries, all in one atomic step (or nothing at all). `place` is stream.lua's.
--
-- KEYS: pairs `P v:<key>`, `P s:<key>` for every key read or written, then pairs
--       `P pos:<room>`, `P hist:<room>` for every room with history delivered to.
-- ARGV[1]: JSON `{ "r": [[v_index, version], ...],
--                  "w": [[v_index, s_index, kind, items, ttl_ms], ...],
--                  "p": [[channel, message], ...],
--                  "s": [[pos_index, hist_index, size, ttl_ms, epoch, channel, header,
--                         unplaced], ...] }`
--          (on a Redis Cluster "p" and "s" are empty: deliveries live in other slots
--          and are published after the commit)
--          indexes into KEYS (1-based); kind is 'json', 'hash', 'set', 'list' or 'del';
--          items as the kind's write command takes them; ttl_ms 0 for none; "p" plain
--          deliveries, "s" deliveries to rooms with history (see stream.lua).
-- ARGV[2]: how many items one write command may take (Lua's `unpack` stack limit).
-- ARGV[3]: '1' to skip the version check (the lost-update demonstration only).
-- ARGV[4]: on a Redis Cluster, the index in KEYS of this commit's once-key (in its
--          keys' slot), else 0. The cluster client sends a command again when its
--          connection broke before the reply, though the first one may have run: a
--          once-key that exists means it did, and the commit is not applied twice.
-- ARGV[5]: how long the once-key lives (ms).
-- ARGV[6]: the deadline in Redis' ms, '0' for none (see too_late in stream.lua).
-- Returns -1 after the deadline and 0 when a read version changed (nothing written
-- either way), else { 1, { epoch, offset } per "s" entry, in order }.
-- A once-key is looked at before the deadline: a retry of a commit that ran answers
-- as it did, however late.
local once = KEYS[tonumber(ARGV[4] or '0')]
if once and redis.call('EXISTS', once) == 1 then return { 1 } end
if too_late(ARGV[6]) then return -1 end
local spec = cjson.decode(ARGV[1])
if ARGV[3] ~= '1' then
  for _, r in ipairs(spec.r) do
    if tonumber(redis.call('GET', KEYS[r[1]]) or '0') ~= r[2] then return 0 end
  end
end
local chunk = tonumber(ARGV[2])
local function each_chunk(items, f)
  for i = 1, #items, chunk do f(unpack(items, i, math.min(i + chunk - 1, #items))) end
end
for _, w in ipairs(spec.w) do
  redis.call('INCR', KEYS[w[1]])
  local key, kind, items, ttl = KEYS[w[2]], w[3], w[4], w[5]
  redis.call('DEL', key)
  if kind == 'json' then redis.call('SET', key, items[1])
  elseif kind == 'hash' then each_chunk(items, function(...) redis.call('HSET', key, ...) end)
  elseif kind == 'set' then each_chunk(items, function(...) redis.call('SADD', key, ...) end)
  elseif kind == 'list' then each_chunk(items, function(...) redis.call('RPUSH', key, ...) end)
  end
  if ttl > 0 and kind ~= 'del' then redis.call('PEXPIRE', key, ttl) end
end
if once then redis.call('SET', once, '1', 'PX', ARGV[5]) end
for _, p in ipairs(spec.p) do redis.call('PUBLISH', p[1], p[2]) end
local placed = { 1 }
for _, s in ipairs(spec.s or {}) do
  placed[#placed + 1] = place(KEYS[s[1]], KEYS[s[2]], s[3], s[4], s[5], 'PUBLISH', s[6], s[7], s[8])
end
return placed
