-- semaphore_limit.lua: read a semaphore's config, or store its limit (an administrator's act).
--
-- KEYS[1]  the semaphore's config hash {limit, slots, top} (top: see permit.lua)
-- ARGV[1]  the new limit (1..2147483647), or '' to only read
--
-- Returns  {limit, slots} as they were ({} for a semaphore never used); with ARGV[1], the limit
--          is stored and slots raised to it (slots only ever comes down in permit.lua, once no
--          permit above the limit is left)
--          error BADSEMAPHORE  KEYS[1] is a hash that is not a semaphore's config (nothing written)
local conf = redis.call('HMGET', KEYS[1], 'limit', 'slots')
local limit, slots = tonumber(conf[1]), tonumber(conf[2])
if conf[1] == false and conf[2] == false then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    return redis.error_reply('BADSEMAPHORE the hash has no limit')
  end
  if ARGV[1] ~= '' then
    redis.call('HSET', KEYS[1], 'limit', ARGV[1], 'slots', ARGV[1])
  end
  return {}
end
if not limit or not slots or limit < 1 or limit > 2147483647 or slots < limit
    or slots > 2147483647 or limit % 1 ~= 0 or slots % 1 ~= 0 then
  return redis.error_reply('BADSEMAPHORE limit ' .. tostring(conf[1]) .. ' and slots '
    .. tostring(conf[2]) .. ' are not what distributed-leasing writes')
end
if ARGV[1] ~= '' then
  local new = tonumber(ARGV[1])
  redis.call('HSET', KEYS[1], 'limit', new, 'slots', math.max(slots, new))
end
return {limit, slots}
