-- The fields of a bounded sample of a run's steps, for analysing a long run at every scrape
-- without reading its whole index: the first `head` steps, the last `tail` steps, and the steps
-- found at `points` evenly spaced ranks of the index (first and last entries included).
-- KEYS: 1 index (zset "step:rank" -> step). ARGV: 1 head, 2 tail, 3 points.
-- Returns every field ("step:rank") of the chosen steps, in step order. Read-only.
local index = KEYS[1]
local head, tail, points = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local n = redis.call('ZCARD', index)
local chosen = {}

-- The first (or last) `count` distinct steps; a step has one entry per rank.
local function edge(count, command)
  local seen, found, start = {}, 0, 0
  while found < count and start < n do
    local rows = redis.call(command, index, start, start + count - 1, 'WITHSCORES')
    for i = 2, #rows, 2 do
      local step = tonumber(rows[i])
      if not seen[step] and found < count then
        seen[step], found = true, found + 1
        chosen[step] = true
      end
    end
    start = start + count
  end
end

edge(head, 'ZRANGE')
edge(tail, 'ZREVRANGE')
if n > 0 and points > 0 then
  for i = 0, points - 1 do
    local pos = n - 1
    if points > 1 then pos = math.floor(i * (n - 1) / (points - 1) + 0.5) end
    local rows = redis.call('ZRANGE', index, pos, pos, 'WITHSCORES')
    if #rows == 2 then chosen[tonumber(rows[2])] = true end
  end
end

local steps = {}
for step in pairs(chosen) do steps[#steps + 1] = step end
table.sort(steps)
local fields = {}
for _, step in ipairs(steps) do
  for _, field in ipairs(redis.call('ZRANGEBYSCORE', index, step, step)) do
    fields[#fields + 1] = field
  end
end
return fields
