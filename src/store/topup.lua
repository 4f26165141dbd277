-- seckill top-up (SPEC §2 admin, POST .../goods/G/stock {"add": n}): n more
-- units for a goods mid-event, in one atomic step.
-- KEYS[1] stock, KEYS[2] added, KEYS[3] buyers (one hash tag: one slot).
-- ARGV[1] n (a positive integer), ARGV[2] the largest stock allowed.
-- Returns -3 when the goods has no stock key (not found), -4 when either
-- counter would pass the largest stock, else {stock_left, added, sold}.
--
-- Both counters are checked before the first write (as in deduct.lua), so
-- a bad key is an error with nothing written, never a stock raised without
-- its `added` (which every figure of the goods' stock adds to the
-- definition's).
local function integer(key)
  local raw = redis.pcall('GET', key)
  if type(raw) == 'table' and raw.err then
    return nil, redis.error_reply('ERR seckill: ' .. key .. ': ' .. raw.err)
  end
  if not raw then
    return false
  end
  if not (raw == '0' or string.match(raw, '^%-?[1-9]%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?$')) then
    return nil, redis.error_reply('ERR seckill: ' .. key .. ' is not an integer')
  end
  return tonumber(raw)
end

local n = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local left, bad = integer(KEYS[1])
if bad then
  return bad
end
if not left then
  return -3
end
local added
added, bad = integer(KEYS[2])
if bad then
  return bad
end
added = added or 0
if left + n > max or added + n > max then
  return -4
end
local sold = redis.pcall('HLEN', KEYS[3])
if type(sold) == 'table' and sold.err then
  return redis.error_reply('ERR seckill: ' .. KEYS[3] .. ': ' .. sold.err)
end
return {redis.call('INCRBY', KEYS[1], n), redis.call('INCRBY', KEYS[2], n), sold}
