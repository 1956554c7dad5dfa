-- force_release.lua: delete a lease whoever holds it, or only if a given lease id still holds
-- it (administrators only), and tell the waiters.
--
-- KEYS[1]  the lease key
-- ARGV[1]  the release channel, <lease key>:released (same hash tag as KEYS[1] on a cluster)
-- ARGV[2]  PUBLISH, or SPUBLISH on a cluster
-- ARGV[3]  the lease id the administrator was shown, or '' for whoever holds it
--
-- Returns  {1}                         deleted
--          {0}                         absent
--          {-1, pttl, {field, value, ...}}  ARGV[3] given and another lease id holds it now
--                                      (the lease changed hands): nothing deleted
--          WRONGTYPE / BADLEASE errors  the key is not a hash / is a hash without the lease
--                                      fields (leaseId, acquiredAt): someone else's data, kept
--
-- Atomic so the checks and the delete see the same key: a compare-and-delete, so an
-- administrator who confirmed a prompt removes the holder shown in it, never its successor.
-- The fencing counter is kept, so the next holder's token is still greater than every earlier
-- one. The notice is best effort, as in release.lua.
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then
  return {0}
end
if t ~= 'hash' then
  return redis.error_reply('WRONGTYPE key is not a lease hash')
end
local holder = redis.call('HGET', KEYS[1], 'leaseId')
if not holder or redis.call('HEXISTS', KEYS[1], 'acquiredAt') == 0 then
  return redis.error_reply('BADLEASE the key is a hash without the lease fields')
end
if ARGV[3] and ARGV[3] ~= '' and holder ~= ARGV[3] then
  return {-1, redis.call('PTTL', KEYS[1]), redis.call('HGETALL', KEYS[1])}
end
redis.call('DEL', KEYS[1])
if ARGV[1] then
  if ARGV[2] == 'SPUBLISH' then
    redis.pcall('SPUBLISH', ARGV[1], 'force_released')
  else
    redis.pcall('PUBLISH', ARGV[1], 'force_released')
  end
end
return {1}
