-- acquire.lua: take a lease if nobody holds it.
--
-- KEYS[1]  the lease key, a hash (lease:<name>, or lease:{<name>} on a cluster)
-- KEYS[2]  the fencing counter (<lease key>:fence), a plain integer with no TTL
-- ARGV[1]  the new holder's lease id
-- ARGV[2]  the lease duration in milliseconds (the key's PEXPIRE)
-- ARGV[3]  acquiredAt, e.g. 2025-12-25T21:00:00.000Z
-- ARGV[4..] metadata as field/value pairs, fields already named meta_<key>
--
-- Returns  {1, fencingToken}           acquired (or already held by this same lease id: a retry
--                                      after a lost reply, which re-arms the TTL)
--          {0, pttl, {field, value, ...}}  held by someone else: the holder's whole hash and the
--                                      milliseconds it has left, in the same round trip
--          error BADFENCE              KEYS[2] is not an integer counter (someone else's data)
--
-- Atomic because a script runs alone on the server: no other client can take the lease between
-- the check and the write. Nothing is written before the key is known to be free, and a key of
-- another type fails with WRONGTYPE in the first read, so someone else's data is left untouched.
-- The counter is the only other key, and it is the first one written, so an INCR that fails
-- (a counter of another type, or not an integer) leaves everything untouched too; it gets its own
-- error so that the message names that key rather than the lease key.
if redis.call('EXISTS', KEYS[1]) == 1 then
  local holder = redis.call('HGET', KEYS[1], 'leaseId')
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, tonumber(redis.call('HGET', KEYS[1], 'fencingToken'))}
  end
  return {0, redis.call('PTTL', KEYS[1]), redis.call('HGETALL', KEYS[1])}
end
local token = redis.pcall('INCR', KEYS[2])
if type(token) == 'table' and token.err then
  return redis.error_reply('BADFENCE the fencing counter is not an integer')
end
local fields = {'leaseId', ARGV[1], 'acquiredAt', ARGV[3], 'fencingToken', token}
for i = 4, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, token}
