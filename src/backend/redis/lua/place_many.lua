-- Place a batch of deliveries, each in its room's stream, and publish each: what
-- publish.lua does for one, for every delivery this node queued while its earlier calls
-- were out (see placer.rs). One Redis only: the rooms need not share a slot. `place`
-- is stream.lua's.
--
-- KEYS: `P pos:<room>`, `P hist:<room>` for each delivery, in order
-- ARGV[1]: 'PUBLISH'; ARGV[2]: deadline_ms (see too_late in stream.lua); then six per
--          delivery: size, ttl_ms, epoch, channel, header, unplaced (see stream.lua)
-- Returns { epoch1, offset1, epoch2, offset2, … }, or -1 (nothing done) after the
-- deadline.
if too_late(ARGV[2]) then return -1 end
local placed = {}
for i = 1, #KEYS / 2 do
  local a = 2 + (i - 1) * 6
  local p = place(KEYS[2 * i - 1], KEYS[2 * i], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3],
    ARGV[1], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6])
  placed[#placed + 1] = p[1]
  placed[#placed + 1] = p[2]
end
return placed
