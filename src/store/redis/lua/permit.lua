-- permit.lua: take a permit of a semaphore if it has room.
--
-- KEYS[1]  the semaphore's config, a hash {limit, slots, top} (<lease key of \x1e{<name>}>)
-- KEYS[2]  its fencing counter (<KEYS[1]>:fence), a plain integer with no TTL
-- ARGV[1], ARGV[2]  the key of slot i is ARGV[1] .. <i in 10 digits> .. ARGV[2]: a lease hash
--          (the sample's fields), in the same cluster slot as KEYS[1] (one hash tag). Slot keys
--          are built here, undeclared: the acquire must stop at the first free slot, and
--          which one that is is known only here.
-- ARGV[3]  the limit asked for (1..2147483647), or '' to use the stored one
-- ARGV[4]  the new permit's lease id
-- ARGV[5]  the permit's duration in milliseconds (the slot key's PEXPIRE: the server's clock)
-- ARGV[6]  acquiredAt
-- ARGV[7]  most holders to return on a refusal
-- ARGV[8]  '1' when this is the client's one retry of this very request after its reply was
--          lost with a dropped connection, '0' otherwise
-- ARGV[9..] metadata as field/value pairs, fields already named meta_<key>
--
-- Returns  {1, slot, fencingToken}          acquired (or, for a retry, already granted to this
--                                            very request: same lease id AND same acquiredAt in
--                                            a slot below `top`; re-arms its TTL)
--          {0, limit, {{slot, pttl, {field, value, ...}}, ...}}  full: the holders (at most ARGV[7])
--          {-1, limit}                       the stored limit differs from ARGV[3]: nothing written
--          {-2}                              no limit stored and none asked for: nothing written
--          error BADSEMAPHORE                KEYS[1] is a hash that is not a semaphore's config
--          error BADFENCE                    KEYS[2] is not a non-negative integer counter
--
-- `slots` is the highest limit since the last permit above the limit left. While it equals the
-- limit (never lowered), the first free slot below it proves there is room, so the scan stops
-- there: an acquire reads as many slots as are held before the first free one, never the limit
-- (2^31 - 1 stays cheap). After a lowering, every slot below `slots` is counted, so nobody is
-- admitted until fewer than `limit` are held; once none above the limit is left, `slots` comes
-- back down to the limit. An expired permit's key is gone (PTTL -2): its slot is free.
--
-- `top` is one above the highest slot ever granted (written only when a grant goes above it).
-- A retry whose first send won (its reply lost with the connection) finds its own slot below
-- `top` and keeps it, instead of taking a second slot and leaving the first held by nobody
-- until it expires. Only a retry reads that far: O(top), the most permits ever held at once.
local conf = redis.call('HMGET', KEYS[1], 'limit', 'slots', 'top')
local limit, slots
if conf[1] == false and conf[2] == false then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    return redis.error_reply('BADSEMAPHORE the hash has no limit')
  end
  if ARGV[3] == '' then
    return {-2}
  end
  limit = tonumber(ARGV[3])
  slots = limit
  redis.call('HSET', KEYS[1], 'limit', limit, 'slots', slots)
else
  limit = tonumber(conf[1])
  slots = tonumber(conf[2])
  if not limit or not slots or limit < 1 or limit > 2147483647 or slots < limit
      or slots > 2147483647 or limit % 1 ~= 0 or slots % 1 ~= 0 then
    return redis.error_reply('BADSEMAPHORE limit ' .. tostring(conf[1]) .. ' and slots '
      .. tostring(conf[2]) .. ' are not what distributed-leasing writes')
  end
  if ARGV[3] ~= '' and tonumber(ARGV[3]) ~= limit then
    return {-1, limit}
  end
end
if ARGV[8] == '1' then
  local top = tonumber(conf[3]) or 0
  for i = 0, math.min(top, slots) - 1 do
    local key = ARGV[1] .. string.format('%010d', i) .. ARGV[2]
    local mine = redis.call('HMGET', key, 'leaseId', 'acquiredAt', 'fencingToken')
    if mine[1] == ARGV[4] and mine[2] == ARGV[6] then
      redis.call('PEXPIRE', key, ARGV[5])
      return {1, i, tonumber(mine[3])}
    end
  end
end
local most = tonumber(ARGV[7])
local live, free, above = 0, nil, false
local holders = {}
for i = 0, slots - 1 do
  local key = ARGV[1] .. string.format('%010d', i) .. ARGV[2]
  local pttl = redis.call('PTTL', key)
  if pttl == -2 then
    if i < limit and not free then
      free = i
      if slots == limit then
        break
      end
    end
  else
    live = live + 1
    if i >= limit then
      above = true
    end
    if #holders < most then
      holders[#holders + 1] = {i, pttl, redis.call('HGETALL', key)}
    end
  end
end
if not free or live >= limit then
  return {0, limit, holders}
end
if slots > limit and not above then
  redis.call('HSET', KEYS[1], 'slots', limit)
end
local token = redis.pcall('INCR', KEYS[2])
if type(token) == 'table' and token.err then
  if string.find(token.err, 'WRONGTYPE', 1, true) or string.find(token.err, 'not an integer', 1, true)
      or string.find(token.err, 'overflow', 1, true) then
    return redis.error_reply('BADFENCE the fencing counter is not a non-negative integer')
  end
  return token
end
if token < 1 or token > 1e15 then
  redis.call('DECR', KEYS[2])
  return redis.error_reply('BADFENCE the fencing counter is not a non-negative integer')
end
local key = ARGV[1] .. string.format('%010d', free) .. ARGV[2]
local fields = {'leaseId', ARGV[4], 'acquiredAt', ARGV[6], 'fencingToken', token}
for i = 9, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', key, unpack(fields))
redis.call('PEXPIRE', key, ARGV[5])
if free >= (tonumber(conf[3]) or 0) then
  redis.call('HSET', KEYS[1], 'top', free + 1)
end
return {1, free, token}
