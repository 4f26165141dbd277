-- seckill deduct (SPEC §3): one atomic step per attempt.
-- KEYS[1] stock (string), KEYS[2] buyers (hash uid -> order_id),
-- KEYS[3] orders (stream). ARGV: uid, event_id, goods_id, ts_ms.
-- Returns -2 already purchased, -3 not found, -1 no stock,
-- or {stock_left, order_id}. The sale (DECR), its order (XADD) and the
-- buyer record (HSET) happen together or not at all.
--
-- Redis does not roll a script back when a command in it fails, so
-- everything that could make a write fail is found out before the first
-- write, and a bad key is an error reply with nothing written, never a
-- unit gone without its order:
-- - `buyers` and `stock` of the wrong type: HEXISTS and GET refuse them;
-- - a stock DECR would refuse: checked to be an integer as Redis writes one;
-- - `orders` of the wrong type, or a stream whose last id is the largest
--   there is: XADD refuses it, and XADD is the first write.
-- After that, DECR and HSET run on keys already proven good.
-- (No TYPE calls: each read or write that could fail is its own check.)
local function refused(reply, key)
  if type(reply) == 'table' and reply.err then
    return redis.error_reply('ERR seckill: ' .. key .. ': ' .. reply.err)
  end
end

local bought = redis.pcall('HEXISTS', KEYS[2], ARGV[1])
local bad = refused(bought, KEYS[2])
if bad then
  return bad
end
if bought == 1 then
  return -2
end
local raw = redis.pcall('GET', KEYS[1])
bad = refused(raw, KEYS[1])
if bad then
  return bad
end
if not raw then
  return -3
end
-- Written as Redis writes integers (no leading zero, no "+", no "-0": DECR
-- refuses "05"), at most 15 digits: exact in Lua's doubles, and far inside
-- DECR's range.
if not (raw == '0' or string.match(raw, '^%-?[1-9]%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?$')) then
  return redis.error_reply('ERR seckill: ' .. KEYS[1] .. ' is not an integer')
end
if tonumber(raw) <= 0 then
  return -1
end
local order_id = redis.pcall('XADD', KEYS[3], '*',
  'uid', ARGV[1], 'event_id', ARGV[2], 'goods_id', ARGV[3], 'ts_ms', ARGV[4])
bad = refused(order_id, KEYS[3])
if bad then
  return bad
end
local left = redis.call('DECR', KEYS[1])
redis.call('HSET', KEYS[2], ARGV[1], order_id)
return {left, order_id}
