-- Store a batch of step reports of one run atomically and idempotently per (rank, step).
-- KEYS: 1 index (zset step:rank -> step), 2 scalars (hash), 3 details (hash), 4 meta (hash),
--   5 control (string, read only), 6 thermostat (hash, read only)
-- ARGV: 1 now, 2 retention_steps, then 8 per report:
--   field ("step:rank"), step, scalars JSON, details JSON, tokens, detached, penalised, drops
-- Returns {flags, control, new_run}: one flag per report (1 stored, 0 duplicate: already
-- stored, left untouched, 2 expired: older than the retention window, so not stored), the run's
-- control JSON (nil: defaults), so a request is one command, and 1 when this call created the
-- run (its meta hash was absent: the caller lists it), and the thermostat's status ('running':
-- the caller has it decide on the steps just stored; false when it has none).
local index, scalars, details, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, retention = ARGV[1], tonumber(ARGV[2])
local flags = {}
local new_run = redis.call('EXISTS', meta) == 0 and 1 or 0
-- Counters are summed here and written once per call: a batch costs Redis a few commands
-- per report (HSETNX, HSET, ZADD), not ten.
local reports, tokens, detached, penalised, drops = 0, 0, 0, 0, 0
local top = nil
-- A report at or below (newest step - retention), the batch's newest included, would be trimmed
-- at once: it is answered as expired rather than counted as stored.
local newest = tonumber(redis.call('HGET', meta, 'last_step'))
for i = 3, #ARGV, 8 do
  local step = tonumber(ARGV[i + 1])
  if newest == nil or step > newest then newest = step end
end
local expired_at = newest - retention
for i = 3, #ARGV, 8 do
  local field, step = ARGV[i], tonumber(ARGV[i + 1])
  if step <= expired_at then
    flags[#flags + 1] = 2
  elseif redis.call('HSETNX', scalars, field, ARGV[i + 2]) == 1 then
    redis.call('HSET', details, field, ARGV[i + 3])
    redis.call('ZADD', index, step, field)
    reports = reports + 1
    tokens = tokens + tonumber(ARGV[i + 4])
    detached = detached + tonumber(ARGV[i + 5])
    penalised = penalised + tonumber(ARGV[i + 6])
    drops = drops + tonumber(ARGV[i + 7])
    if top == nil or step > top then top = step end
    flags[#flags + 1] = 1
  else
    flags[#flags + 1] = 0
  end
end
if reports > 0 then
  -- Lua numbers are doubles: the schema bounds each count by 2^40 and a request by 1024
  -- reports, so these sums stay exact integers; %d keeps HINCRBY's argument an integer.
  redis.call('HINCRBY', meta, 'reports', reports)
  redis.call('HINCRBY', meta, 'tokens', string.format('%d', tokens))
  redis.call('HINCRBY', meta, 'detached', string.format('%d', detached))
  redis.call('HINCRBY', meta, 'penalised', string.format('%d', penalised))
  redis.call('HINCRBY', meta, 'client_drops', string.format('%d', drops))
  local last = tonumber(redis.call('HGET', meta, 'last_step'))
  if last == nil or top > last then redis.call('HSET', meta, 'last_step', string.format('%d', top)) end
end
redis.call('HSET', meta, 'last_report_time', now)
-- Retention: drop steps older than last_step - retention, a bounded slice per call.
local last = tonumber(redis.call('HGET', meta, 'last_step'))
if last ~= nil then
  local old = redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. (last - retention + 1), 'LIMIT', 0, 1000)
  if #old > 0 then
    redis.call('HDEL', scalars, unpack(old))
    redis.call('HDEL', details, unpack(old))
    redis.call('ZREM', index, unpack(old))
  end
end
-- false, not nil: a nil would end the table and drop the reply's second element
return {flags, redis.call('GET', KEYS[5]) or false, new_run,
  redis.call('HGET', KEYS[6], 'status') or false}
