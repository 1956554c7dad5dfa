-- release.lua: delete a lease, only for its current holder, and tell the waiters.
--
-- KEYS[1]  the lease key (a hash)
-- ARGV[1]  the holder's lease id
-- ARGV[2]  the release channel, <lease key>:released (same hash tag as KEYS[1] on a cluster)
-- ARGV[3]  PUBLISH, or SPUBLISH on a cluster (sharded: the message stays in the key's shard)
--
-- Returns  1 deleted
--          0 the key is gone (expired, force-released, or the server lost its data)
--         -1 another lease id holds it (taken over after our lease ended)
--
-- Atomic so that a holder whose lease expired can never delete its successor's lease, which the
-- sample's bare `DEL` would do; 0 and -1 tell the holder it had lost the lease before it let go,
-- so work it did meanwhile was not protected. The notice goes out in the same script, so no
-- waiter can see the key gone without the notice on its way. It is best effort (pcall): a user
-- without rights on the channel, or a server without SPUBLISH, still releases; its waiters then
-- find out by polling or at the TTL. Callers that pass no channel publish nothing.
local holder = redis.call('HGET', KEYS[1], 'leaseId')
if holder == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[2] then
    if ARGV[3] == 'SPUBLISH' then
      redis.pcall('SPUBLISH', ARGV[2], 'released')
    else
      redis.pcall('PUBLISH', ARGV[2], 'released')
    end
  end
  return 1
end
if holder == false then
  return 0
end
return -1
