--! keys: job
--! args:
-- Raise the cancel flag of a job that is not terminal. Returns 0 for an unknown job, else 1.
local s = redis.call('HGET', job, 'status')
if not s then return 0 end
if s ~= 'succeeded' and s ~= 'failed' and s ~= 'canceled' then
  redis.call('HSET', job, 'cancel', 1)
end
return 1
