--! keys: job queued running events
--! args: id worker owner_prefix events_ttl
-- running (held by worker) -> queued, with a queued status event. A run that never reached
-- the device is not charged: the claim's attempt is given back. Returns 1, or 0 if the job
-- moved on meanwhile.
if redis.call('HGET', job, 'status') ~= 'running' then return 0 end
if redis.call('HGET', job, 'worker') ~= worker then return 0 end
if redis.call('HGET', job, 'device') ~= redis.call('HGET', job, 'token') then
  redis.call('HINCRBY', job, 'attempts', -1)
end
local owner = redis.call('HGET', job, 'owner')
  or cjson.decode(redis.call('HGET', job, 'fixed'))['owner']  -- a record of an older version
redis.call('HSET', job, 'status', 'queued', 'worker', '', 'progress', 'null')
redis.call('SREM', running, id)
redis.call('SADD', queued, id)
redis.call('SADD', owner_prefix .. owner, id)
local n = redis.call('HINCRBY', job, 'seq', 1)
redis.call('XADD', events, n .. '-1', 'type', 'status', 'data', '{"status": "queued"}')
redis.call('EXPIRE', events, events_ttl)
return 1
