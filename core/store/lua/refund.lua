--! keys: buckets*
--! args: sizes*
-- Give back bytes an owner deleted: take sizes[i] from the stored-bytes bucket buckets[i].
-- A bucket keeps its TTL and never drops below zero; a missing one stays missing.
for i, key in ipairs(buckets) do
  local take = math.min(tonumber(redis.call('GET', key) or '0'), tonumber(sizes[i]))
  if take > 0 then redis.call('DECRBY', key, take) end
end
return 1
