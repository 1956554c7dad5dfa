-- renew.lua: extend a lease, only for its current holder.
--
-- KEYS[1]  the lease key (a hash)
-- ARGV[1]  the holder's lease id
-- ARGV[2]  the lease duration in milliseconds
--
-- Returns  1   renewed (TTL reset to ARGV[2])
--          0   the key is gone (expired, deleted, or the server lost its data)
--         -1   another lease id holds it
--
-- Atomic so that the owner check and the PEXPIRE cannot be split by an expiry and a new
-- acquire: the sample's bare `SET XX` could extend someone else's lease.
local holder = redis.call('HGET', KEYS[1], 'leaseId')
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder == false then
  return 0
end
return -1
