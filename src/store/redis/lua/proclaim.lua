-- proclaim.lua: replace a lease's metadata, only for its current holder, and tell observers.
--
-- KEYS[1]  the lease key (a hash)
-- ARGV[1]  the holder's lease id
-- ARGV[2]  'S' on a cluster: announce with SPUBLISH (sharded); 'P' on a standalone server: PUBLISH
-- ARGV[3..] the new metadata as field/value pairs, fields already named meta_<key>
--
-- Returns  1 proclaimed: every meta_* field of the hash is replaced by ARGV[3..]; leaseId,
--            acquiredAt, fencingToken and the key's expiry stay as they were (never extended)
--          0 the key is gone (expired, released, force-released), or is a hash without a
--            leaseId (someone else's data)
--         -1 another lease id holds it
--         -2 the key holds something other than a hash
--          any other error (an ACL refusal) as the server gave it
--
-- Atomic so that the owner check and the write cannot be split by an expiry and a new acquire:
-- a leader that lost its term can never write its metadata into its successor's record. The
-- record keeps the hash format of the .NET origin (meta_<key> fields). The notice goes out on
-- `<lease key>:released` with the message 'proclaimed', which observers read as a change and
-- release waiters ignore (best effort, as release.lua's).
local holder = redis.pcall('HGET', KEYS[1], 'leaseId')
if holder == ARGV[1] then
  -- The hash is rewritten whole (its other fields kept, its meta_* fields replaced) and its
  -- time left put back: the commands of the library's ACL rule (README), no HDEL needed.
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl == 0 then
    -- Less than a millisecond left: as good as expired.
    return 0
  end
  local all = redis.call('HGETALL', KEYS[1])
  local fields = {}
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 5) ~= 'meta_' then
      fields[#fields + 1] = all[i]
      fields[#fields + 1] = all[i + 1]
    end
  end
  for i = 3, #ARGV do
    fields[#fields + 1] = ARGV[i]
  end
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(fields))
  if pttl > 0 then
    -- PTTL counts whole milliseconds down: the lease ends no later than it would have. (-1:
    -- no expiry, as the record had.)
    redis.call('PEXPIRE', KEYS[1], pttl)
  end
  if ARGV[2] == 'S' then
    redis.pcall('SPUBLISH', KEYS[1] .. ':released', 'proclaimed')
  else
    redis.pcall('PUBLISH', KEYS[1] .. ':released', 'proclaimed')
  end
  return 1
end
if holder == false then
  return 0
end
if type(holder) == 'table' and holder.err then
  if string.find(holder.err, 'WRONGTYPE', 1, true) then
    return -2
  end
  return holder
end
return -1
