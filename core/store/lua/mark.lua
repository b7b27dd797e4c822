--! keys: job
--! args: token
-- Record that the run of this claim reaches the device. Returns 1, -1 if the claim is
-- over, or 2 (not marked) if the job is canceled: that run must not start either.
local h = redis.call('HMGET', job, 'status', 'token', 'cancel')
if h[1] ~= 'running' or h[2] ~= token then return -1 end
if h[3] == '1' then return 2 end
redis.call('HSET', job, 'device', token)
return 1
