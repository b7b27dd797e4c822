--! keys: job events
--! args: type data events_ttl progress token
-- Append an event (and set the job's progress, if given). With a token, only while the
-- job runs under that claim. Returns the event's sequence number, 0 if the job is gone,
-- -1 if the claim is over.
if redis.call('EXISTS', job) == 0 then return 0 end
if token ~= '' and (redis.call('HGET', job, 'status') ~= 'running'
    or redis.call('HGET', job, 'token') ~= token) then return -1 end
if progress ~= '' then redis.call('HSET', job, 'progress', progress) end
local n = redis.call('HINCRBY', job, 'seq', 1)
redis.call('XADD', events, n .. '-1', 'type', type, 'data', data)
redis.call('EXPIRE', events, events_ttl)
return n
