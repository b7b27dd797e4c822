--! keys: job
--! args: token
-- Record that the run of this claim reaches the device. Returns 1, or -1 if the claim is
-- over.
if redis.call('HGET', job, 'status') ~= 'running'
    or redis.call('HGET', job, 'token') ~= token then return -1 end
redis.call('HSET', job, 'device', token)
return 1
