--! keys: job queued running events finished
--! args: id worker token if_status status output error finished_at owner_prefix events_ttl final*
-- Record a terminal status: only while the job is not terminal; with a worker, only while
-- that worker holds it; with a token, only under that claim; with if_status, only from
-- that status. Appends the final events (type, data pairs) and publishes the changed
-- fields on the finished channel. Returns 1, or 0 if it was not ours to finish.
local s = redis.call('HGET', job, 'status')
if not s or s == 'succeeded' or s == 'failed' or s == 'canceled' then return 0 end
if worker ~= '' and (s ~= 'running' or redis.call('HGET', job, 'worker') ~= worker) then
  return 0
end
if token ~= '' and (s ~= 'running' or redis.call('HGET', job, 'token') ~= token) then
  return 0
end
if if_status ~= '' and s ~= if_status then return 0 end
local owner = redis.call('HGET', job, 'owner')
  or cjson.decode(redis.call('HGET', job, 'fixed'))['owner']  -- a record of an older version
redis.call('HSET', job, 'status', status, 'output', output, 'error', error,
           'finished_at', finished_at)
redis.call('SREM', queued, id)
redis.call('SREM', owner_prefix .. owner, id)
redis.call('SREM', running, id)
for i = 1, #final, 2 do
  local n = redis.call('HINCRBY', job, 'seq', 1)
  redis.call('XADD', events, n .. '-1', 'type', final[i], 'data', final[i + 1])
end
redis.call('EXPIRE', events, events_ttl)
local all = redis.call('HGETALL', job)
local changed = {id}
for i = 1, #all, 2 do
  if all[i] ~= 'fixed' then
    changed[#changed + 1] = all[i]
    changed[#changed + 1] = all[i + 1]
  end
end
redis.call('PUBLISH', finished, cjson.encode(changed))
return 1
