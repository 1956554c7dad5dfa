-- inspect.lua: read a lease and its remaining time together.
--
-- KEYS[1]  the lease key (a hash)
--
-- Returns  nil when absent, else {pttl, {field, value, ...}}
--
-- One script so the fields and the TTL describe the same moment.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return nil
end
return {redis.call('PTTL', KEYS[1]), redis.call('HGETALL', KEYS[1])}
