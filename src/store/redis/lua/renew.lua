-- renew.lua: extend a lease, only for its current holder.
--
-- KEYS[1]  the lease key (a hash)
-- ARGV[1]  the holder's lease id
-- ARGV[2]  the lease duration in milliseconds
--
-- Returns  1   renewed (TTL reset to ARGV[2])
--          0   the key is gone (expired, deleted, or the server lost its data), or is a hash
--              without a leaseId (someone else's data written over it)
--         -1   another lease id holds it
--         -2   the key holds something other than a hash (someone else's data written over
--              it), left untouched
--          any other error (an ACL refusal) as the server gave it
--
-- Atomic so that the owner check and the PEXPIRE cannot be split by an expiry and a new
-- acquire: the sample's bare `SET XX` could extend someone else's lease. A key overwritten by
-- other data is answered at once (0 or -2: the lease is gone), not as a failure to retry.
local holder = redis.pcall('HGET', KEYS[1], 'leaseId')
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
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
