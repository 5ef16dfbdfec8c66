-- Compare-and-set of a run's control, with its audit entry, atomically.
-- A person's change while the run's thermostat is running overrides it, in the same step: its
-- status becomes 'overridden' (it decides nothing until enabled again) and its audit says so.
-- KEYS: 1 control (string, JSON), 2 audit (list, newest last), 3 thermostat (hash),
--   4 thermostat audit (list)
-- ARGV: 1 expected current version, 2 new control JSON, 3 audit entry JSON, 4 audit cap,
--   5 the thermostat's reason when overridden, 6 its audit entry JSON
-- Returns {1} when stored, {0, current JSON or ""} when the version is stale.
local current = redis.call('GET', KEYS[1])
local version = 0
if current then version = cjson.decode(current)['version'] end
if version ~= tonumber(ARGV[1]) then
  return {0, current or ''}
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
if redis.call('HGET', KEYS[3], 'status') == 'running' then
  redis.call('HSET', KEYS[3], 'status', 'overridden', 'reason', ARGV[5])
  redis.call('HINCRBY', KEYS[3], 'rev', 1)
  redis.call('RPUSH', KEYS[4], ARGV[6])
  redis.call('LTRIM', KEYS[4], -tonumber(ARGV[4]), -1)
end
return {1}
