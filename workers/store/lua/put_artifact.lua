--! keys: job artifacts
--! args: token ttl usage_prefix bucket bucket_ttl size fields*
-- Store an artifact's fields (field, value pairs) and count its bytes against the job's
-- owner. With a token, only while the job runs under that claim. Returns 1, or -1 if the
-- claim is over.
if token ~= '' and (redis.call('HGET', job, 'status') ~= 'running'
    or redis.call('HGET', job, 'token') ~= token) then return -1 end
for i = 1, #fields, 2 do redis.call('HSET', artifacts, fields[i], fields[i + 1]) end
redis.call('EXPIRE', artifacts, ttl)
local owner = redis.call('HGET', job, 'owner')
if owner then
  local key = usage_prefix .. owner .. ':' .. bucket
  redis.call('INCRBY', key, size)
  redis.call('EXPIRE', key, bucket_ttl)
end
return 1
