-- Commit one thermostat decision on one merged step, exactly once across service processes:
-- only if the thermostat is unchanged since it was read (its `rev`), still running, and the step
-- is newer than the last one decided. A knob change is a compare-and-set of the control with its
-- audit entry, in the same step.
-- KEYS: 1 thermostat (hash), 2 decisions (list, newest last), 3 control, 4 audit
-- ARGV: 1 expected rev, 2 step, 3 law state JSON, 4 status, 5 reason, 6 decision JSON,
--   7 decisions cap, 8 target, 9 error, 10 expected control version ('': no change),
--   11 new control JSON, 12 audit entry JSON, 13 audit cap
-- Returns 1 committed, 0 taken (changed since read, not running, or the step already decided),
--   -1 the control changed since read.
local t = KEYS[1]
local rev = tonumber(redis.call('HGET', t, 'rev') or '0')
if rev ~= tonumber(ARGV[1]) or redis.call('HGET', t, 'status') ~= 'running' then
  return 0
end
local last = redis.call('HGET', t, 'last_step')
if last and last ~= '' and tonumber(last) >= tonumber(ARGV[2]) then
  return 0
end
if ARGV[10] ~= '' then
  local current = redis.call('GET', KEYS[3])
  local version = 0
  if current then version = cjson.decode(current)['version'] end
  if version ~= tonumber(ARGV[10]) then return -1 end
  redis.call('SET', KEYS[3], ARGV[11])
  redis.call('RPUSH', KEYS[4], ARGV[12])
  redis.call('LTRIM', KEYS[4], -tonumber(ARGV[13]), -1)
end
redis.call('HSET', t, 'state', ARGV[3], 'status', ARGV[4], 'reason', ARGV[5],
  'last_step', ARGV[2], 'target', ARGV[8], 'error', ARGV[9], 'rev', rev + 1)
redis.call('RPUSH', KEYS[2], ARGV[6])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[7]), -1)
return 1
