-- A person's change of the thermostat's settings: compare-and-set on its settings `version`
-- (the ETag), and on its `rev` (a decision committed since the caller read its state: the
-- caller reads again and retries), with the audit entry in the same step.
-- KEYS: 1 thermostat (hash), 2 thermostat audit (list)
-- ARGV: 1 expected version, 2 expected rev, 3 settings JSON, 4 enabled (1/0), 5 status,
--   6 law state JSON, 7 audit entry JSON, 8 audit cap
-- Returns {1, new version}, {0, current version} (stale version: 412) or {-1, version} (retry).
local t = KEYS[1]
local version = tonumber(redis.call('HGET', t, 'version') or '0')
if version ~= tonumber(ARGV[1]) then return {0, version} end
local rev = tonumber(redis.call('HGET', t, 'rev') or '0')
if rev ~= tonumber(ARGV[2]) then return {-1, version} end
redis.call('HSET', t, 'version', version + 1, 'rev', rev + 1, 'settings', ARGV[3],
  'enabled', ARGV[4], 'status', ARGV[5], 'reason', '', 'state', ARGV[6])
redis.call('RPUSH', KEYS[2], ARGV[7])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[8]), -1)
return {1, version + 1}
