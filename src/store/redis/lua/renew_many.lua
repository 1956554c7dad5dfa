-- renew_many.lua: renew a batch of leases, each only for its current holder.
--
-- KEYS[i]      the lease key (a hash) of lease i
-- ARGV[2i-1]   lease i's holder's lease id
-- ARGV[2i]     lease i's duration in milliseconds
--
-- Returns  one integer per lease, as renew.lua's: 1 renewed, 0 gone (or a hash without a
--          leaseId), -1 held by another lease id, -2 the key holds something other than a hash
--          (left untouched); any other error (an ACL refusal) fails the whole batch with the
--          server's error
--
-- Each lease is checked and extended atomically as in renew.lua (a script runs alone on the
-- server); batching them saves round trips when a client holds many leases. Standalone
-- servers only: on a cluster the keys of different leases live in different slots.
local out = {}
for i = 1, #KEYS do
  local holder = redis.pcall('HGET', KEYS[i], 'leaseId')
  if type(holder) == 'table' and holder.err and not string.find(holder.err, 'WRONGTYPE', 1, true) then
    -- Not about this key (a refusal by an ACL rule, say): the whole batch fails with it, as
    -- the server gave it; renewals done so far stand (a renewal may be repeated).
    return holder
  elseif type(holder) == 'table' and holder.err then
    out[i] = -2
  elseif holder == ARGV[2 * i - 1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2 * i])
    out[i] = 1
  elseif holder == false then
    out[i] = 0
  else
    out[i] = -1
  end
end
return out
