-- seckill reset (SPEC §2 admin, "reset": true): a goods starts a new sale.
-- KEYS[1] stock, KEYS[2] buyers, KEYS[3] orders, KEYS[4] reset, KEYS[5]
-- added, KEYS[6] used (the sliding-lock strategy's count) (one hash tag:
-- one slot). The sliding-lock's `lock:N` keys, which a script cannot
-- name in advance, are removed by the caller right after.
-- ARGV[1] the new stock, ARGV[2] the lowest epoch the caller wants (ms).
-- Returns the reset's epoch E: every order of the new sale has a stream id
-- above E-0, every order of the old sale one below it.
--
-- One script, so no deduct runs in the middle: the old stream's last id is
-- read, the old buyers, orders and top-ups go, the stock is set, and the new stream
-- is made with the sink's group at 0 and its last id set to E-0, so the
-- first new order (XADD *) gets an id above E-0 whatever Redis' clock says.
-- E is also left in the goods' reset key, so the sink learns of it from
-- the goods itself, in the same step as the new stream; it keeps nothing
-- below E-0 for this goods once it knows of E.
local epoch = tonumber(ARGV[2])
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
if last[1] then
  local ms = tonumber(string.match(last[1][1], '^(%d+)-'))
  if ms and ms + 1 > epoch then
    epoch = ms + 1
  end
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[5], KEYS[6])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('XGROUP', 'CREATE', KEYS[3], 'seckill-sink', '0', 'MKSTREAM')
redis.call('XSETID', KEYS[3], epoch .. '-0')
redis.call('SET', KEYS[4], epoch)
return epoch
