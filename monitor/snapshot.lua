-- Everything /metrics and GET /v1/runs need of one run, in one call (the caller runs many at
-- once): its meta, control, cached analysis gauges, first step, the latest step's reports
-- (the newest step the driver reported if it is at most ARGV[2] behind, as Store.latest) and
-- optionally their details, and the latest reports of each rank (Store.rank_status).
-- KEYS: 1 index, 2 scalars, 3 details, 4 meta, 5 control, 6 gauges, 7 thermostat
-- ARGV: 1 want details (1/0), 2 driver lag steps, 3 steps scanned per rank, 4 scan cap,
--   5 want rank reports (1/0)
-- Returns {meta, control|false, gauges, first step|false, latest docs, details docs,
--   {the last reports' fields, their docs} (or {}), the thermostat's status, settings, target,
--   error (each false when absent)}
local index, scalars, details = KEYS[1], KEYS[2], KEYS[3]
local lag, per_rank, scan_max = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local meta = redis.call('HGETALL', KEYS[4])
local control = redis.call('GET', KEYS[5])
local gauges = redis.call('HGETALL', KEYS[6])
local first = redis.call('ZRANGE', index, 0, 0, 'WITHSCORES')
local last = redis.call('ZREVRANGE', index, 0, 0, 'WITHSCORES')
local latest, hists, ranks = {}, {}, {}
if #last > 0 then
  local newest = tonumber(last[2])
  local step = newest
  for s = newest, math.max(0, newest - lag), -1 do
    if redis.call('ZSCORE', index, string.format('%d', s) .. ':-1') then
      step = s
      break
    end
  end
  local fields = redis.call('ZRANGEBYSCORE', index, step, step)
  latest = redis.call('HMGET', scalars, unpack(fields))
  if ARGV[1] == '1' then hists = redis.call('HMGET', details, unpack(fields)) end
  if ARGV[5] == '1' then
    local training = 0
    for _, f in ipairs(fields) do
      if string.sub(f, -3) ~= ':-1' then training = training + 1 end
    end
    local scan = math.min(scan_max, per_rank * (math.max(1, training) + 1))
    local recent, kept = redis.call('ZREVRANGE', index, 0, scan - 1), {}
    for _, f in ipairs(recent) do
      if string.sub(f, -3) ~= ':-1' then kept[#kept + 1] = f end
    end
    if #kept > 0 then ranks = {kept, redis.call('HMGET', scalars, unpack(kept))} end
  end
end
local thermostat = redis.call('HMGET', KEYS[7], 'status', 'settings', 'target', 'error')
return {meta, control or false, gauges, first[2] or false, latest, hists, ranks, thermostat}
