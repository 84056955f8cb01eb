-- Place one delivery in its room's stream and publish it (a delivery no commit
-- carries). `place` is stream.lua's.
--
-- KEYS[1]: `P pos:<room>`; KEYS[2]: `P hist:<room>`
-- ARGV: size, ttl_ms, epoch, publish, channel, header, unplaced (see stream.lua),
--       deadline_ms (see too_late in stream.lua)
-- Returns { epoch, offset }, or -1 (nothing done) after the deadline.
if too_late(ARGV[8]) then return -1 end
return place(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
