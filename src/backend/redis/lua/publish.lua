-- Place one delivery in its room's stream and publish it (a delivery no commit
-- carries). `place` is stream.lua's.
--
-- KEYS[1]: `P pos:<room>`; KEYS[2]: `P hist:<room>`; KEYS[3] (Redis Cluster only): this
--          delivery's once-key, in the room's slot: the cluster client sends a command
--          again when its connection broke before the reply, though the first one may
--          have run; a once-key that exists holds the place it got, and it is not
--          placed twice
-- ARGV: size, ttl_ms, epoch, publish, channel, header, unplaced (see stream.lua), then
--       how long the once-key lives (ms), then deadline_ms (see too_late in stream.lua)
-- Returns { epoch, offset }, or -1 (nothing done) after the deadline. A once-key is
-- looked at first: a retry of a placement that ran answers with its place, however late.
local once = KEYS[3]
if once then
  local done = redis.call('GET', once)
  if done then
    local epoch, offset = string.match(done, '^(.*) (%d+)$')
    return { epoch, tonumber(offset) }
  end
end
if too_late(ARGV[9]) then return -1 end
local placed = place(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
if once then redis.call('SET', once, placed[1] .. ' ' .. placed[2], 'PX', ARGV[8]) end
return placed
