-- Compare-and-set of a run's control, with its audit entry, atomically.
-- KEYS: 1 control (string, JSON), 2 audit (list, newest last)
-- ARGV: 1 expected current version, 2 new control JSON, 3 audit entry JSON, 4 audit cap
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
return {1}
