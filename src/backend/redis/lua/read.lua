-- Read several state keys, each with its version, as one consistent snapshot.
--
-- KEYS: pairs `P v:<key>`, `P s:<key>` (the version, then the value), repeated.
-- ARGV: none.
-- Returns one `{ version, type, items }` per pair: `type` as Redis' TYPE names it
-- ('string', 'hash', 'set', 'list' or 'none'), `items` the value's elements in that
-- type's read order (HGETALL, SMEMBERS, LRANGE 0 -1; a string is one item).
local out = {}
for i = 1, #KEYS, 2 do
  local version = redis.call('GET', KEYS[i]) or '0'
  local key = KEYS[i + 1]
  local kind = redis.call('TYPE', key)['ok']
  local data
  if kind == 'string' then data = { redis.call('GET', key) }
  elseif kind == 'hash' then data = redis.call('HGETALL', key)
  elseif kind == 'set' then data = redis.call('SMEMBERS', key)
  elseif kind == 'list' then data = redis.call('LRANGE', key, 0, -1)
  else data = {} end
  out[#out + 1] = { version, kind, data }
end
return out
