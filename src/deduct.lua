-- seckill deduct (SPEC §3): one atomic step per attempt.
-- KEYS[1] stock (string), KEYS[2] buyers (hash uid -> order_id),
-- KEYS[3] orders (stream). ARGV: uid, event_id, goods_id, ts_ms.
-- Returns -2 already purchased, -3 not found, -1 no stock,
-- or {stock_left, order_id}. The sale (DECR), its order (XADD) and the
-- buyer record (HSET) happen together or not at all.
--
-- Redis does not roll a script back when a command in it fails, so
-- everything that could make a write fail is checked before the first
-- write: a key of the wrong type, or a stock that is not an integer DECR
-- accepts. The one write that can still fail (XADD, on a stream whose last
-- id is the largest there is) goes first, so it fails with nothing written;
-- DECR and HSET on keys checked above cannot. Such a goods answers an
-- error, never a unit gone without its order.
local function expect(key, want)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= want and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE seckill: ' .. key .. ' is a ' .. kind .. ', not a ' .. want)
  end
end
local bad = expect(KEYS[1], 'string') or expect(KEYS[2], 'hash') or expect(KEYS[3], 'stream')
if bad then
  return bad
end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return -2
end
local raw = redis.call('GET', KEYS[1])
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
if type(order_id) == 'table' and order_id.err then
  return redis.error_reply('ERR seckill: ' .. KEYS[3] .. ' refused the order: ' .. order_id.err)
end
local left = redis.call('DECR', KEYS[1])
redis.call('HSET', KEYS[2], ARGV[1], order_id)
return {left, order_id}
