-- force_release.lua: delete a lease whoever holds it, or only if a given lease id still holds
-- it (administrators only), and tell the waiters.
--
-- KEYS[1]  the lease key
-- ARGV[1]  the release channel, <lease key>:released (same hash tag as KEYS[1] on a cluster)
-- ARGV[2]  PUBLISH, or SPUBLISH on a cluster
-- ARGV[3]  the lease id the administrator was shown, or '' for whoever holds it
-- ARGV[4]  '1' when ARGV[3] was shown even if it is '' (the lease id of an orphan, see below)
--
-- Returns  {1}                         deleted
--          {0}                         absent
--          {-1, pttl, {field, value, ...}}  a lease id was shown (ARGV[3], or ARGV[4] '1') and
--                                      another holds it now (the lease changed hands, an orphan
--                                      taken over, a lease become an orphan): nothing deleted
--          WRONGTYPE / BADLEASE errors  the key is not a hash / is a hash without the lease
--                                      fields (leaseId, acquiredAt) that is not an orphan:
--                                      someone else's data, kept
--
-- An orphan of the .NET origin (every field meta_*, no TTL: its meta_* fields written after its
-- key expired, see acquire.lua) is held by nobody; its lease id is '' here. It is deleted as a
-- lease is.
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
  local pttl = redis.call('PTTL', KEYS[1])
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if holder or pttl ~= -1 or string.sub(field, 1, 5) ~= 'meta_' then
      return redis.error_reply('BADLEASE the key is a hash without the lease fields')
    end
  end
  holder = ''
end
if (ARGV[3] ~= '' or ARGV[4] == '1') and holder ~= ARGV[3] then
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
