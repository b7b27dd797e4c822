--! keys: job counter owner_jobs queued owner_queued events
--! args: id owner fixed ttl first_type first_data size usage_prefix bucket buckets usage_ttl max_mine max_all max_bytes
-- Record a submitted job (queued, with its first event) unless a limit is reached. The
-- owner's stored-bytes buckets are usage_prefix .. owner .. ':' .. b for the ``buckets``
-- numbers from ``bucket`` (the current one) down, read in one MGET. Returns 1 if created;
-- 'owner', 'all', 'size' or 'bytes' at a limit; else the fields of the job that holds
-- the id.
if redis.call('EXISTS', job) == 1 then return redis.call('HGETALL', job) end
if redis.call('SCARD', owner_queued) >= tonumber(max_mine) then return 'owner' end
if redis.call('SCARD', queued) >= tonumber(max_all) then return 'all' end
local bound = tonumber(max_bytes)
if bound > 0 then
  if tonumber(size) > bound then return 'size' end
  local keys = {}
  for i = 0, tonumber(buckets) - 1 do keys[#keys + 1] = usage_prefix .. owner .. ':' .. (bucket - i) end
  local used = tonumber(size)
  for _, v in ipairs(redis.call('MGET', unpack(keys))) do if v then used = used + tonumber(v) end end
  if used > bound then return 'bytes' end
end
local n = redis.call('INCR', counter)
redis.call('HSET', job, 'fixed', fixed, 'status', 'queued', 'attempts', 0, 'seq', 1, 'n', n,
           'cancel', 0, 'owner', owner)
redis.call('EXPIRE', job, ttl)
redis.call('ZADD', owner_jobs, n, id)
redis.call('SADD', queued, id)
redis.call('SADD', owner_queued, id)
local current = usage_prefix .. owner .. ':' .. bucket
redis.call('INCRBY', current, size)
redis.call('EXPIRE', current, usage_ttl)
redis.call('XADD', events, '1-1', 'type', first_type, 'data', first_data)
redis.call('EXPIRE', events, ttl)
return 1
