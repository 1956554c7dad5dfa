-- release.lua: delete a lease, only for its current holder, and tell the waiters.
--
-- KEYS[1]  the lease key (a hash)
-- ARGV[1]  the holder's lease id
-- ARGV[2]  'S' on a cluster: announce with SPUBLISH (sharded: the message stays in the key's
--          shard); absent (or 'P') on a standalone server: PUBLISH
-- ARGV[3]  (a semaphore's permit only) the semaphore's channel, in the key's cluster slot: a
--          permit's release wakes the waiters of its semaphore, not of its slot
--
-- Returns  1 deleted
--          0 the key is gone (expired, force-released, or the server lost its data)
--         -1 another lease id holds it (taken over after our lease ended)
--
-- Atomic so that a holder whose lease expired can never delete its successor's lease, which the
-- sample's bare `DEL` would do; 0 and -1 tell the holder it had lost the lease before it let go,
-- so work it did meanwhile was not protected. The notice goes out in the same script, on
-- `<lease key>:released` (so on a cluster it carries the key's hash tag), so no waiter can see
-- the key gone without the notice on its way. It is best effort (pcall): a user without rights
-- on the channel, or a server without SPUBLISH, still releases; its waiters then find out by
-- polling or at the TTL. The channel is derived here rather than passed: every argument costs
-- the server a Lua string per call.
local holder = redis.call('HGET', KEYS[1], 'leaseId')
if holder == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[3] then
    redis.pcall(ARGV[2] == 'S' and 'SPUBLISH' or 'PUBLISH', ARGV[3], 'released')
  elseif ARGV[2] == 'S' then
    redis.pcall('SPUBLISH', KEYS[1] .. ':released', 'released')
  else
    redis.pcall('PUBLISH', KEYS[1] .. ':released', 'released')
  end
  return 1
end
if holder == false then
  return 0
end
return -1
