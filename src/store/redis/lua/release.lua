-- release.lua: delete a lease, only for its current holder.
--
-- KEYS[1]  the lease key (a hash)
-- ARGV[1]  the holder's lease id
--
-- Returns  1 deleted, 0 not held by this lease id (already expired, released or taken over)
--
-- Atomic so that a holder whose lease expired can never delete its successor's lease, which the
-- sample's bare `DEL` would do.
if redis.call('HGET', KEYS[1], 'leaseId') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
