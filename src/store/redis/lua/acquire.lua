-- acquire.lua: take a lease if nobody holds it.
--
-- KEYS[1]  the lease key, a hash (lease:<name>, or lease:{<name>} on a cluster)
-- KEYS[2]  the fencing counter (<lease key>:fence), a plain integer with no TTL
-- ARGV[1]  the new holder's lease id (fresh from the OS's random source for every acquisition)
-- ARGV[2]  the lease duration in milliseconds (the key's PEXPIRE)
-- ARGV[3]  acquiredAt, e.g. 2025-12-25T21:00:00.000Z
-- ARGV[4]  '1' when this is the client's one retry of this very request after its reply was
--          lost with a dropped connection, '0' otherwise; prefixed with 'P' (PUBLISH) or 'S'
--          (SPUBLISH, on a cluster) when the acquisition is to be announced to observers (an
--          election's campaign): 'P0', 'S1'. A plain acquire ('0', '1') publishes nothing.
-- ARGV[5..] metadata as field/value pairs, fields already named meta_<key>
--
-- Returns  fencingToken                acquired (or, for a retry, already granted to this very
--                                      request: same lease id AND same acquiredAt; re-arms the TTL):
--                                      a bare integer >= 1, not a table: a table costs the server
--                                      4.5k instructions to build, convert and collect, 6% of an
--                                      acquire+release (bench/README.md, Redis-server CPU per cycle)
--          {fencingToken, {field, value, ...}}  acquired by taking over an orphan of the .NET
--                                      origin (see below): the orphan's whole hash, for the warning
--          {0, pttl, {field, value, ...}}  held by someone else: the holder's whole hash and the
--                                      milliseconds it has left, in the same round trip
--          error BADFENCE              KEYS[2] is not a non-negative integer counter
--          error BADLEASE              KEYS[1] is a hash without a leaseId that is not an orphan
--                                      (not a lease)
--
-- Atomic because a script runs alone on the server: no other client can take the lease between
-- the check and the write. Nothing is left changed unless the lease is granted: a lease key of
-- another type fails with WRONGTYPE, a hash without a leaseId (not an orphan) with BADLEASE,
-- before any write; a counter that is not a non-negative integer of at most 15 digits fails
-- with BADFENCE, either because INCR refuses it (another type, not an integer, overflow:
-- nothing written) or because the incremented value is out of range, which is then decremented
-- back within this script, so no client ever sees it changed. Someone else's data keeps its value and no lease is left
-- behind that nobody holds. (INCR first, rather than GET, validate, INCR: one command less for
-- every acquire.)
--
-- An orphan of the .NET origin is a hash whose every field is meta_* and that has no TTL: the
-- origin writes its meta_* fields in a second round trip, and when its key expired in between,
-- that write makes a hash nobody holds and that never expires. It is taken over: deleted and
-- replaced by the new lease, in this script, once the counter is incremented (so an error still
-- leaves it as it was). Any other hash without a leaseId is someone else's data: BADLEASE.
--
-- A matching lease id alone never re-admits: a process that presents a lease id that already
-- holds the lease (a forked child whose random generator was copied, say) is refused like any
-- other. Only the retry flag plus the same acquiredAt stamp identify the request that won.
local pttl = redis.call('PTTL', KEYS[1])
local orphan = false
if pttl ~= -2 then
  local holder = redis.call('HGET', KEYS[1], 'leaseId')
  if holder then
    if holder == ARGV[1] and string.sub(ARGV[4], -1) == '1'
        and redis.call('HGET', KEYS[1], 'acquiredAt') == ARGV[3] then
      redis.call('PEXPIRE', KEYS[1], ARGV[2])
      return tonumber(redis.call('HGET', KEYS[1], 'fencingToken'))
    end
    return {0, pttl, redis.call('HGETALL', KEYS[1])}
  end
  -- No leaseId: an orphan of the .NET origin (no TTL, every field meta_*), or not a lease.
  orphan = redis.call('HGETALL', KEYS[1])
  for i = 1, #orphan, 2 do
    if pttl ~= -1 or string.sub(orphan[i], 1, 5) ~= 'meta_' then
      return redis.error_reply('BADLEASE the key is a hash without a leaseId')
    end
  end
end
local token = redis.pcall('INCR', KEYS[2])
if type(token) == 'table' and token.err then
  if string.find(token.err, 'WRONGTYPE', 1, true) then
    return redis.error_reply('BADFENCE the fencing counter is not a string')
  end
  if string.find(token.err, 'not an integer', 1, true)
      or string.find(token.err, 'overflow', 1, true) then
    return redis.error_reply('BADFENCE the fencing counter is not a non-negative integer')
  end
  -- Any other error (a refusal by an ACL rule, say) as the server gave it: not a counter problem.
  return token
end
if token < 1 or token > 1e15 then
  -- The counter held a negative number or more than 15 digits (beyond what a Lua number carries
  -- exactly): put it back as it was before anybody can see it, and refuse.
  redis.call('DECR', KEYS[2])
  return redis.error_reply('BADFENCE the fencing counter is not a non-negative integer')
end
if orphan then
  redis.call('DEL', KEYS[1])
end
if #ARGV == 4 then
  -- No metadata: the fields as literal arguments, without a Lua table to build and unpack.
  redis.call('HSET', KEYS[1], 'leaseId', ARGV[1], 'acquiredAt', ARGV[3], 'fencingToken', token)
else
  local fields = {'leaseId', ARGV[1], 'acquiredAt', ARGV[3], 'fencingToken', token}
  for i = 5, #ARGV do
    fields[#fields + 1] = ARGV[i]
  end
  redis.call('HSET', KEYS[1], unpack(fields))
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if #ARGV[4] > 1 then
  -- Announced: observers of the name see the new holder without polling (best effort, as
  -- release.lua's notice; release waiters ignore it: none of them could win).
  if string.sub(ARGV[4], 1, 1) == 'S' then
    redis.pcall('SPUBLISH', KEYS[1] .. ':released', 'acquired')
  else
    redis.pcall('PUBLISH', KEYS[1] .. ':released', 'acquired')
  end
end
if orphan then
  return {token, orphan}
end
return token
