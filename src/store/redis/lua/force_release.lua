-- force_release.lua: delete a lease whoever holds it (administrators only).
--
-- KEYS[1]  the lease key
--
-- Returns  1 deleted, 0 absent; a key that is not a hash fails with WRONGTYPE and is kept.
--
-- Atomic so the type check and the delete see the same key. The fencing counter is kept, so
-- the next holder's token is still greater than every earlier one.
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then
  return 0
end
if t ~= 'hash' then
  return redis.error_reply('WRONGTYPE key is not a lease hash')
end
redis.call('DEL', KEYS[1])
return 1
