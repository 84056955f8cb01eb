-- Shared by commit.lua and publish.lua (prepended to each): place one delivery in its
-- room's stream and publish it.
--
-- pos_key   `P pos:<room>`  hash: `epoch`, `offset` (the last offset given)
-- hist_key  `P hist:<room>` stream: one entry per delivery, id `<offset>-0`, fields
--           `t` (Redis time in ms when appended) and `f` (the complete frame)
-- size, ttl_ms   the room's history policy
-- epoch          a fresh random epoch, used only if the room has none (new, or its
--                position was lost: then its old history is dropped with it), or if
--                its history and position disagree
-- publish        'PUBLISH', or 'SPUBLISH' on a Redis Cluster (the channel shares the
--                room's hash tag, so it lives in the slot this script runs on)
-- channel        where to publish ('' for nobody but this node)
-- header         the message up to the epoch: `origin \n exclude \n target \n`
-- unplaced       the frame up to its offset: `{"event":…,"data":…,"room":…,"offset":`
-- Returns { epoch, offset }.
--
-- too_late(deadline_ms): whether Redis' clock is past `deadline_ms` (its own ms; '0'
-- for no deadline). A commit whose node stopped waiting for it (and told its client
-- `unavailable`) may still arrive, from a stalled server's socket buffer or a TCP
-- retransmission after packets were dropped: it must change nothing then.
local function too_late(deadline_ms)
  local limit = tonumber(deadline_ms) or 0
  if limit <= 0 then return false end
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > limit
end

local function place(pos_key, hist_key, size, ttl_ms, epoch, publish, channel, header, unplaced)
  local new_epoch = epoch
  if redis.call('HSETNX', pos_key, 'epoch', epoch) == 1 then
    redis.call('DEL', hist_key)
  else
    epoch = redis.call('HGET', pos_key, 'epoch')
  end
  local offset = redis.call('HINCRBY', pos_key, 'offset', 1)
  local frame = unplaced .. offset .. '}'
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local added = redis.pcall('XADD', hist_key, 'MAXLEN', size, offset .. '-0', 't', ms, 'f', frame)
  if type(added) == 'table' and added.err then
    -- The history is ahead of the position (they disagree after a hand edit or a
    -- partial restore): neither can be trusted, so the room starts a new epoch here
    -- rather than refusing every delivery from now on.
    epoch = new_epoch
    redis.call('HSET', pos_key, 'epoch', epoch)
    redis.call('DEL', hist_key)
    redis.call('XADD', hist_key, 'MAXLEN', size, offset .. '-0', 't', ms, 'f', frame)
  end
  redis.call('PEXPIRE', hist_key, ttl_ms)
  -- The position outlives the history by a day, so a client of a room that went quiet
  -- resumes with nothing missed rather than with a new epoch.
  redis.call('PEXPIRE', pos_key, ttl_ms + 86400000)
  if channel ~= '' then
    redis.call(publish, channel, header .. epoch .. '\n' .. offset .. '\n' .. frame)
  end
  return { epoch, offset }
end
