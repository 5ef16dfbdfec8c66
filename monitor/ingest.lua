-- Store a batch of step reports of one run atomically and idempotently per (rank, step).
-- KEYS: 1 index (zset step:rank -> step), 2 scalars (hash), 3 details (hash), 4 meta (hash)
-- ARGV: 1 now, 2 retention_steps, then 8 per report:
--   field ("step:rank"), step, scalars JSON, details JSON, tokens, detached, penalised, drops
-- Returns one flag per report: 1 stored, 0 duplicate (already stored, left untouched).
local index, scalars, details, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, retention = ARGV[1], tonumber(ARGV[2])
local flags = {}
for i = 3, #ARGV, 8 do
  local field, step = ARGV[i], tonumber(ARGV[i + 1])
  if redis.call('HSETNX', scalars, field, ARGV[i + 2]) == 1 then
    redis.call('HSET', details, field, ARGV[i + 3])
    redis.call('ZADD', index, step, field)
    redis.call('HINCRBY', meta, 'reports', 1)
    redis.call('HINCRBY', meta, 'tokens', ARGV[i + 4])
    redis.call('HINCRBY', meta, 'detached', ARGV[i + 5])
    redis.call('HINCRBY', meta, 'penalised', ARGV[i + 6])
    redis.call('HINCRBY', meta, 'client_drops', ARGV[i + 7])
    local last = tonumber(redis.call('HGET', meta, 'last_step'))
    if last == nil or step > last then redis.call('HSET', meta, 'last_step', step) end
    flags[#flags + 1] = 1
  else
    flags[#flags + 1] = 0
  end
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
return flags
