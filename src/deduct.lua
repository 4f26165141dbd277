-- seckill deduct (SPEC §3): one atomic step per attempt.
-- KEYS[1] stock (string), KEYS[2] buyers (hash uid -> order_id),
-- KEYS[3] orders (stream). ARGV: uid, event_id, goods_id, ts_ms.
-- Returns -2 already purchased, -3 not found, -1 no stock,
-- or {stock_left, order_id}. The sale (DECR), its order (XADD) and the
-- buyer record (HSET) happen together or not at all.
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return -2
end
local stock = tonumber(redis.call('GET', KEYS[1]))
if not stock then
  return -3
end
if stock <= 0 then
  return -1
end
local left = redis.call('DECR', KEYS[1])
local order_id = redis.call('XADD', KEYS[3], '*',
  'uid', ARGV[1], 'event_id', ARGV[2], 'goods_id', ARGV[3], 'ts_ms', ARGV[4])
redis.call('HSET', KEYS[2], ARGV[1], order_id)
return {left, order_id}
