-- force_release.lua: delete a lease whoever holds it (administrators only), and tell the waiters.
--
-- KEYS[1]  the lease key
-- ARGV[1]  the release channel, <lease key>:released (same hash tag as KEYS[1] on a cluster)
-- ARGV[2]  PUBLISH, or SPUBLISH on a cluster
--
-- Returns  1 deleted, 0 absent; a key that is not a hash fails with WRONGTYPE and is kept.
--
-- Atomic so the type check and the delete see the same key. The fencing counter is kept, so
-- the next holder's token is still greater than every earlier one. The notice is best effort,
-- as in release.lua.
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then
  return 0
end
if t ~= 'hash' then
  return redis.error_reply('WRONGTYPE key is not a lease hash')
end
redis.call('DEL', KEYS[1])
if ARGV[1] then
  if ARGV[2] == 'SPUBLISH' then
    redis.pcall('SPUBLISH', ARGV[1], 'force_released')
  else
    redis.pcall('PUBLISH', ARGV[1], 'force_released')
  end
end
return 1
