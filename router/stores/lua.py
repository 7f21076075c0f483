"""The Redis store's Lua scripts (``router.stores.redis`` registers and calls them).

Each runs atomically on the Redis that holds its keys. Rate-limit scripts read Redis's clock
(``TIME``), so replicas with skewed clocks agree. ``BEGIN`` (a request's whole admission) touches
keys in several hash slots, so it runs only on one Redis or behind Sentinel, never on a Cluster;
every other script touches one slot.
"""

__all__ = ["ACQUIRE", "ADJUST", "ADMIT", "BEGIN", "BUDGET", "FAILURE", "GET_OR_LOCK", "HOLD", "RELEASE"]

NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# GCRA over KEYS[k .. k+n-1]; ARGV[j+1], ARGV[j+2], ARGV[j+3] (j = a + 3(i-1)): the limit, cost and
# paced flag (1: no burst, admitted only once the bucket drained to now) of the i-th key.
# ``gcra`` checks (returns the retry wait in ms, 0 or less when all fit); ``gcra_out`` charges
# them when allowed and ``commit``, and returns {allowed, retry_ms, remaining_1, reset_ms_1, ...}.
GCRA = NOW_MS + """
local function gcra(k, n, a, period)
  local tats, news, retry = {}, {}, 0
  for i = 1, n do
    local j = a + 3 * (i - 1)
    local limit, cost, paced = tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]), ARGV[j + 3] == '1'
    local tat = tonumber(redis.call('GET', KEYS[k + i - 1]) or '0')
    if tat < now then tat = now end
    local new = tat + cost * period / limit
    tats[i], news[i] = tat, new
    local over = new - now - period
    if paced then over = tat - now end
    if over > retry then retry = over end
  end
  return retry, tats, news
end
local function gcra_out(k, n, a, period, retry, tats, news, commit)
  local allowed = retry <= 0
  local out = {allowed and 1 or 0, tostring(retry)}
  for i = 1, n do
    local limit = tonumber(ARGV[a + 3 * (i - 1) + 1])
    local t = tats[i]
    if allowed then
      t = news[i]
      if commit then
        redis.call('SET', KEYS[k + i - 1], string.format('%.3f', t), 'PX', math.ceil(t - now) + 1000)
      end
    end
    out[#out + 1] = math.max(0, math.floor((period - (t - now)) * limit / period))
    out[#out + 1] = tostring(t - now)
  end
  return out
end
"""

# Budget counters KEYS[k .. k+n-1]; ARGV[a+2i-1], ARGV[a+2i]: the limit and cost (micro-USD) of the
# i-th. ``budget_check``: the counters after, or nil when one would go past its limit;
# ``budget_commit`` adds the costs and sets the ttl (ms).
BUDGETS = """
local function budget_check(k, n, a)
  local after = {}
  for i = 1, n do
    local v = tonumber(redis.call('GET', KEYS[k + i - 1]) or '0') + tonumber(ARGV[a + 2 * i])
    if v > tonumber(ARGV[a + 2 * i - 1]) then return nil end
    after[i] = v
  end
  return after
end
local function budget_commit(k, n, a, ttl)
  for i = 1, n do
    redis.call('INCRBY', KEYS[k + i - 1], ARGV[a + 2 * i])
    redis.call('PEXPIRE', KEYS[k + i - 1], ttl)
  end
end
"""

# KEYS: limiter keys; ARGV[1]: period ms, then (limit, cost, paced) per key.
ACQUIRE = GCRA + """
local period = tonumber(ARGV[1])
local retry, tats, news = gcra(1, #KEYS, 1, period)
return gcra_out(1, #KEYS, 1, period, retry, tats, news, true)
"""

# KEYS: budget counters. ARGV: (limit, cost) per key, then the ttl ms. Returns false when any
# would go past its limit (nothing charged), else the counters after.
BUDGET = BUDGETS + """
local after = budget_check(1, #KEYS, 0)
if not after then return false end
budget_commit(1, #KEYS, 0, ARGV[2 * #KEYS + 1])
return after
"""

# A request's admission in one step (``AdmitAsk``; one Redis, keys in any slots). KEYS: the
# caller's limiters (n1), its budgets (n2), the cache entry and its lock (nc: 0 or 2), the first
# target's limiters (n3) and budgets (n4). ARGV[1..9]: period ms, n1, n2, nc, n3, n4, lock ttl ms,
# budget ttl ms, target budget ttl ms; then (limit, cost, paced) per caller limiter, (limit, cost)
# per budget, (limit, cost, paced) per target limiter, (limit, cost) per target budget.
# Returns {limits, budgets, cache, target, target budgets}: ``gcra_out`` results; budgets {1,
# after...} or {0} (over; nothing charged); cache {1, entry}, {2} (missed, locked for us) or {3}
# (missed, someone else holds the lock); {} for a step not reached.
BEGIN = GCRA + BUDGETS + """
local period = tonumber(ARGV[1])
local n1, n2, nc, n3, n4 = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local k2 = 1 + n1
local kc = k2 + n2
local k3 = kc + nc
local k4 = k3 + n3
local a1 = 9
local a2 = a1 + 3 * n1
local a3 = a2 + 2 * n2
local a4 = a3 + 3 * n3
local retry, tats, news = gcra(1, n1, a1, period)
if retry > 0 then return {gcra_out(1, n1, a1, period, retry, tats, news, false)} end
local after = budget_check(k2, n2, a2)
if not after then return {gcra_out(1, n1, a1, period, retry, tats, news, false), {0}} end
local lim = gcra_out(1, n1, a1, period, retry, tats, news, true)
budget_commit(k2, n2, a2, ARGV[8])
local bud = {1}
for i = 1, n2 do bud[i + 1] = after[i] end
local cache = {}
if nc > 0 then
  local v = redis.call('GET', KEYS[kc])
  if v then return {lim, bud, {1, v}} end
  if not redis.call('SET', KEYS[kc + 1], '1', 'NX', 'PX', ARGV[7]) then return {lim, bud, {3}} end
  cache = {2}
end
if n3 + n4 == 0 then return {lim, bud, cache} end
local tretry, ttats, tnews = gcra(k3, n3, a3, period)
if tretry > 0 then return {lim, bud, cache, gcra_out(k3, n3, a3, period, tretry, ttats, tnews, false)} end
local tafter = budget_check(k4, n4, a4)
if not tafter then return {lim, bud, cache, gcra_out(k3, n3, a3, period, tretry, ttats, tnews, false), {0}} end
local tlim = gcra_out(k3, n3, a3, period, tretry, ttats, tnews, true)
budget_commit(k4, n4, a4, ARGV[9])
local tbud = {1}
for i = 1, n4 do tbud[i + 1] = tafter[i] end
return {lim, bud, cache, tlim, tbud}
"""

# KEYS[1]; ARGV: period ms, limit, delta units (negative refunds).
ADJUST = NOW_MS + """
local period, limit, delta = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new = tat + delta * period / limit
if new <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%.3f', new), 'PX', math.ceil(new - now) + 1000)
end
return 1
"""

# KEYS[1]; ARGV: now, probe lease (seconds).
ADMIT = """
local v = redis.call('HMGET', KEYS[1], 'ou', 'pu', 'f')
local ou, pu = tonumber(v[1] or '0'), tonumber(v[2] or '0')
if ou == 0 then
  if tonumber(v[3] or '0') > 0 then return 'failing' end
  return 'closed'
end
local now = tonumber(ARGV[1])
if now < ou or now < pu then return 'open' end
redis.call('HSET', KEYS[1], 'pu', now + tonumber(ARGV[2]))
return 'probe'
"""

# KEYS[1]; ARGV: now, failures, window, duration, max_duration, backoff. Returns 1 when it tripped.
FAILURE = """
local k = KEYS[1]
local now, n, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local duration, maxd, backoff = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local v = redis.call('HMGET', k, 'f', 'ff', 'tr', 'ou')
local f, ff, tr, ou = tonumber(v[1] or '0'), tonumber(v[2] or '0'), tonumber(v[3] or '0'), tonumber(v[4] or '0')
if ou > 0 then
  if now < ou then return 0 end
  tr = tr + 1
else
  if f > 0 and now - ff > window then f = 0 end
  if f == 0 then ff = now end
  f = f + 1
  if f < n then
    redis.call('HSET', k, 'f', f, 'ff', ff)
    redis.call('EXPIRE', k, math.ceil(window) + 1)
    return 0
  end
  tr = 1
end
local dur = math.min(maxd, duration * backoff ^ (tr - 1))
redis.call('HSET', k, 'f', 0, 'ff', 0, 'tr', tr, 'ou', now + dur, 'pu', 0)
redis.call('EXPIRE', k, math.ceil(dur + 2 * maxd + window))
return 1
"""

# KEYS[1]; ARGV: now, until. The circuit stays open until `until` at least (a quota's reset).
HOLD = """
local ou = tonumber(redis.call('HGET', KEYS[1], 'ou') or '0')
local tr = tonumber(redis.call('HGET', KEYS[1], 'tr') or '0')
local now, untl = tonumber(ARGV[1]), tonumber(ARGV[2])
if untl > ou then ou = untl end
if tr < 1 then tr = 1 end
redis.call('HSET', KEYS[1], 'ou', ou, 'pu', 0, 'f', 0, 'ff', 0, 'tr', tr)
redis.call('EXPIRE', KEYS[1], math.ceil(ou - now) + 3600)
return 0
"""

# KEYS[1]: a probe's lease ends (the breaker, when it still exists, lets the next request probe).
RELEASE = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'pu', 0) end
return 0
"""

# The cache entry, or else its lock: KEYS[1] the entry, KEYS[2] its lock (one hash slot);
# ARGV[1] the lock's lifetime (ms). Returns the entry, 1 (locked for us) or 0 (someone holds it).
GET_OR_LOCK = """
local v = redis.call('GET', KEYS[1])
if v then return v end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 1 end
return 0
"""
