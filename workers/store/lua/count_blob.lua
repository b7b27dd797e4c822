--! keys: job
--! args: token usage_prefix bucket bucket_ttl size
-- Count the bytes a job writes to the blob store against its owner. With a token, only
-- while the job runs under that claim. Returns 1, or -1 if the claim is over.
if token ~= '' and (redis.call('HGET', job, 'status') ~= 'running'
    or redis.call('HGET', job, 'token') ~= token) then return -1 end
local owner = redis.call('HGET', job, 'owner')
if owner then
  local key = usage_prefix .. owner .. ':' .. bucket
  redis.call('INCRBY', key, size)
  redis.call('EXPIRE', key, bucket_ttl)
end
return 1
