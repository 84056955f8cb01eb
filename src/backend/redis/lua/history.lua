-- A room's position, and its deliveries after an offset.
--
-- KEYS[1]: `P pos:<room>`; KEYS[2]: `P hist:<room>`
-- ARGV[1]: after (an offset; 0 for the whole history)
-- ARGV[2]: limit (most entries returned; 0 for the position alone)
-- ARGV[3]: ttl_ms (entries older than this are gone, whatever the stream still holds)
-- ARGV[4]: a fresh random epoch, used if the room has none (its old history, if any,
--          is dropped: it belongs to a lost epoch) or went back in time
-- ARGV[5]: the epoch `after` was handed out in ("" if unknown). A room in that epoch
--          whose head is behind `after` lost deliveries someone already saw (a failover
--          before they replicated): it moves to the fresh epoch at its head, so the
--          offsets it hands out next are never taken for ones already delivered.
-- Returns { epoch, head, complete, offset1, frame1, offset2, frame2, ... }: `complete`
-- is 1 when nothing between `after` and min(head, after + limit) is missing.
local pos, hist = KEYS[1], KEYS[2]
local after, limit, ttl_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local epoch = ARGV[4]
if redis.call('HSETNX', pos, 'epoch', epoch) == 1 then
  redis.call('HSETNX', pos, 'offset', 0)
  redis.call('DEL', hist)
  -- A position read creates the room's epoch; it lives as a publish would keep it.
  redis.call('PEXPIRE', pos, ttl_ms + 86400000)
else
  epoch = redis.call('HGET', pos, 'epoch')
end
local head = tonumber(redis.call('HGET', pos, 'offset') or '0')
if ARGV[5] ~= '' and ARGV[5] == epoch and after > head then
  epoch = ARGV[4]
  redis.call('HSET', pos, 'epoch', epoch)
end
local out = { epoch, head, 1 }
if after >= head or limit == 0 then return out end
local now = redis.call('TIME')
local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - ttl_ms
local entries = redis.call('XRANGE', hist, (after + 1) .. '-0', '+', 'COUNT', limit)
local expect = after + 1
for _, e in ipairs(entries) do
  local offset = tonumber(string.match(e[1], '^(%d+)'))
  local t, f = nil, nil
  for i = 1, #e[2], 2 do
    if e[2][i] == 't' then t = tonumber(e[2][i + 1]) elseif e[2][i] == 'f' then f = e[2][i + 1] end
  end
  if offset ~= expect or t == nil or t < oldest or f == nil then
    out[3] = 0
    return out
  end
  out[#out + 1] = offset
  out[#out + 1] = f
  expect = expect + 1
end
local wanted = math.min(head, after + limit)
if expect <= wanted then out[3] = 0 end
return out
