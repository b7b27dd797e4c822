--! keys: job queued running events
--! args: id worker started_at owner_prefix events_ttl
-- queued -> running for the worker (attempts + 1, token + 1), with the status event of the
-- start. Returns the job's fields, or why not: its status, or 'missing'.
-- The owner's queued set is named from the job's owner here (one round trip instead of a
-- read first): this needs a single Redis, not a cluster.
local s = redis.call('HGET', job, 'status')
if not s then return 'missing' end
if s ~= 'queued' then return s end
local owner = redis.call('HGET', job, 'owner')
  or cjson.decode(redis.call('HGET', job, 'fixed'))['owner']  -- a record of an older version
redis.call('HSET', job, 'status', 'running', 'worker', worker, 'started_at', started_at)
local attempt = redis.call('HINCRBY', job, 'attempts', 1)
redis.call('HINCRBY', job, 'token', 1)
redis.call('SREM', queued, id)
redis.call('SREM', owner_prefix .. owner, id)
redis.call('SADD', running, id)
local n = redis.call('HINCRBY', job, 'seq', 1)
redis.call('XADD', events, n .. '-1', 'type', 'status',
           'data', cjson.encode({status = 'running', attempt = attempt}))
redis.call('EXPIRE', events, events_ttl)
return redis.call('HGETALL', job)
