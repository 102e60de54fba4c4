"""The Lua source of the Redis quota ledger (:mod:`~cache_service.quota.redis_ledger`): one
script per operation, so each admission, settlement, renewal or reading is one atomic step
on the server, never a read in Python followed by a write.

Every script starts with the same prelude and the same first arguments::

    KEYS[1]  <tag>time           the ledger's clock: the latest time any script has used
    ARGV[1]  <tag>               key prefix, "{name}:": one hash tag, so every key of a
                                 ledger lives in one cluster slot and a script may touch all
    ARGV[2]  window              seconds of the rpm/tpm sliding window
    ARGV[3]  time                "" to use Redis TIME; a test clock's reading otherwise

Keys under the prefix (a scope's id ``sid`` is the JSON of ``[kind, name]``)::

    time         string  the latest time used; time never steps back below it
    scopes       set     every sid ever configured, reserved against or checked
    leases       zset    open reservation id -> lease expiry
    h:<id>       hash    an open reservation: s (sids, one per line), t (tokens), n (nano-$)
    l:<sid>      hash    limits: rpm tpm rpd tpd db mb (budgets in nano-$), json (as given);
                         cfg (json of the configuration's limits last applied), op ("1":
                         changed at run time since)
    s:<sid>      hash    rq tk (window sums), dk mk (UTC day / month number of the counts),
                         dr dt dn mn (settled requests, tokens, nano-$ of the day; nano-$ of
                         the month), inf ht hn (holds in flight and the tokens, nano-$ held)
    w:<sid>      zset    the sliding-window log: entry -> time taken. An entry is a
                         reservation id (one request) or "<id>+", tokens booked at a late
                         settlement after the reservation's own entry aged out (no request)
    a:<sid>      hash    entry -> tokens it charges

Numbers go to Redis as strings formatted with %.17g: Lua's own conversion keeps 14 digits,
which would round times and nano-dollar sums. Integers stay exact up to 2^53 (about nine
million dollars in nano-dollars per window).
"""

from __future__ import annotations

_PRELUDE = r"""
local P = ARGV[1]
local WINDOW = tonumber(ARGV[2])
local TIME_ARG = ARGV[3]

local function fmt(x)
  return string.format('%.17g', x)
end

-- The time of this call: Redis TIME (or the test clock), never below the last one used, so
-- every sliding-window log stays sorted and calendar windows only roll forward.
local function clock()
  local t
  if TIME_ARG ~= '' then
    t = tonumber(TIME_ARG)
  else
    local r = redis.call('TIME')
    t = tonumber(r[1]) + tonumber(r[2]) / 1000000
  end
  local last = tonumber(redis.call('GET', KEYS[1]))
  if last and last > t then
    t = last
  end
  redis.call('SET', KEYS[1], fmt(t))
  return t
end

-- Months since year 0 of a day number (days since 1970-01-01): H. Hinnant's civil_from_days.
local function month_of(day)
  local z = day + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor(
    (doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then
    y = y + 1
  end
  return y * 12 + m - 1
end

local FIELDS = {'rq', 'tk', 'dk', 'mk', 'dr', 'dt', 'dn', 'mn', 'inf', 'ht', 'hn'}

-- A scope's state at time t, calendar counts rolled to t's UTC day and month; with its
-- limits unless `no_limits` (closing a reservation checks none).
local function load(sid, t, no_limits)
  local v = redis.call('HMGET', P .. 's:' .. sid, unpack(FIELDS))
  local st = {sid = sid, exists = v[3] ~= false, was = {}}
  for i, f in ipairs(FIELDS) do
    st[f] = tonumber(v[i]) or 0
    st.was[f] = st.exists and st[f] or nil
  end
  local day = math.floor(t / 86400)
  if not st.exists or day > st.dk then
    st.dk = day
    st.dr = 0
    st.dt = 0
    st.dn = 0
  end
  local month = month_of(day)
  if not st.exists or month > st.mk then
    st.mk = month
    st.mn = 0
  end
  if no_limits then
    return st
  end
  local l = redis.call('HMGET', P .. 'l:' .. sid, 'rpm', 'tpm', 'rpd', 'tpd', 'db', 'mb', 'json')
  st.rpm, st.tpm, st.rpd, st.tpd = tonumber(l[1]), tonumber(l[2]), tonumber(l[3]), tonumber(l[4])
  st.db, st.mb, st.json = tonumber(l[5]), tonumber(l[6]), l[7] or ''
  return st
end

-- Writes the fields that changed (a reserve changes five of eleven).
local function save(st)
  local args = {}
  for _, f in ipairs(FIELDS) do
    if st[f] ~= st.was[f] then
      args[#args + 1] = f
      args[#args + 1] = fmt(st[f])
      st.was[f] = st[f]
    end
  end
  if #args > 0 then
    redis.call('HSET', P .. 's:' .. st.sid, unpack(args))
  end
end

-- Count `entry` (one request and its tokens) in a scope's sliding window at t.
local function take(st, entry, tokens, t)
  redis.call('ZADD', P .. 'w:' .. st.sid, fmt(t), entry)
  redis.call('HSET', P .. 'a:' .. st.sid, entry, fmt(tokens))
  st.rq = st.rq + 1
  st.tk = st.tk + tokens
end

local function is_overrun(entry)
  return string.sub(entry, -1) == '+'
end

-- Drop the log entries that no longer count at t (taken at or before t - WINDOW, tested
-- as the in-process window does: at + WINDOW <= t, in the same floating point).
local function prune(st, t)
  local w, a = P .. 'w:' .. st.sid, P .. 'a:' .. st.sid
  while true do
    -- Small batches: a call usually ages out none or one or two entries, and reading more
    -- of a full window each time is most of a reserve's cost.
    local batch = redis.call('ZRANGE', w, 0, 3, 'WITHSCORES')
    for i = 1, #batch, 2 do
      if tonumber(batch[i + 1]) + WINDOW > t then
        return
      end
      local entry = batch[i]
      redis.call('ZREM', w, entry)
      st.tk = st.tk - (tonumber(redis.call('HGET', a, entry)) or 0)
      redis.call('HDEL', a, entry)
      if not is_overrun(entry) then
        st.rq = st.rq - 1
      end
    end
    if #batch < 8 then
      return
    end
  end
end

local function entry_amount(a, entry, tokens)
  if tokens then
    return tonumber(redis.call('HGET', a, entry)) or 0
  end
  return is_overrun(entry) and 0 or 1
end

-- When `amount` fits under `cap` if nothing else is taken: the time the oldest entries
-- that must age out to make room stop counting. Only called on the deny path.
local function deadline(st, tokens, used, amount, cap, t)
  local w, a = P .. 'w:' .. st.sid, P .. 'a:' .. st.sid
  local excess = used + amount - cap
  local freed, start = 0, 0
  while true do
    local batch = redis.call('ZRANGE', w, start, start + 63, 'WITHSCORES')
    if #batch == 0 then
      -- Unreachable while the sums match the log; never fail after writes (a script error
      -- does not undo them): a full window is the safe answer.
      return t + WINDOW
    end
    for i = 1, #batch, 2 do
      freed = freed + entry_amount(a, batch[i], tokens)
      if freed >= excess then
        return tonumber(batch[i + 1]) + WINDOW
      end
    end
    start = start + 64
  end
end

local function fits(limit, used, amount)
  return limit == nil or (used < limit and used + amount <= limit)
end

-- Close a reservation: `requests` 1 settles it at (tokens, nano), 0 releases it. Returns
-- 0 if it is not open (closed already, or reaped), which makes closing idempotent. A
-- settlement given `out` appends, per scope, what alerts read: sid, the settled counts of
-- the day (dr dt dn) and month (mn), and the limits rpd tpd db mb ("" where none).
local function close(id, tokens, nano, requests, t, out)
  local hk = P .. 'h:' .. id
  local h = redis.call('HMGET', hk, 's', 't', 'n')
  if not h[1] then
    return 0
  end
  local est_t, est_n = tonumber(h[2]), tonumber(h[3])
  for sid in string.gmatch(h[1], '[^\n]+') do
    local st = load(sid, t, out == nil)
    prune(st, t)
    local w, a = P .. 'w:' .. sid, P .. 'a:' .. sid
    local live = redis.call('ZSCORE', w, id)
    if requests == 0 then
      if live then
        redis.call('ZREM', w, id)
        st.tk = st.tk - (tonumber(redis.call('HGET', a, id)) or 0)
        redis.call('HDEL', a, id)
        st.rq = st.rq - 1
      end
    elseif live then
      -- Still in the window: corrected in place, at its original time.
      st.tk = st.tk + tokens - (tonumber(redis.call('HGET', a, id)) or 0)
      redis.call('HSET', a, id, fmt(tokens))
    elseif tokens > est_t then
      -- Aged out: a shrink no longer matters, growth is booked now (SlidingWindow.adjust).
      redis.call('ZADD', w, fmt(t), id .. '+')
      redis.call('HSET', a, id .. '+', fmt(tokens - est_t))
      st.tk = st.tk + tokens - est_t
    end
    st.inf = st.inf - 1
    st.ht = st.ht - est_t
    st.hn = st.hn - est_n
    if st.inf <= 0 then
      st.inf, st.ht, st.hn = 0, 0, 0
    end
    if requests == 1 then
      st.dr = st.dr + 1
      if tokens > 0 then
        st.dt = st.dt + tokens
      end
      if nano > 0 then
        st.dn = st.dn + nano
        st.mn = st.mn + nano
      end
    end
    save(st)
    if out and requests == 1 then
      for _, v in ipairs({sid, fmt(st.dr), fmt(st.dt), fmt(st.dn), fmt(st.mn)}) do
        out[#out + 1] = v
      end
      for _, f in ipairs({'rpd', 'tpd', 'db', 'mb'}) do
        out[#out + 1] = st[f] and fmt(st[f]) or ''
      end
    end
  end
  redis.call('DEL', hk)
  redis.call('ZREM', P .. 'leases', id)
  return 1
end

-- Holds whose lease ran out belong to a replica that died (or stalled past its lease): they
-- are charged as spent at their estimate, since upstream may have billed them.
local function reap(t)
  local ids = redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', fmt(t), 'LIMIT', 0, 256)
  for _, id in ipairs(ids) do
    local h = redis.call('HMGET', P .. 'h:' .. id, 't', 'n')
    if h[1] then
      close(id, tonumber(h[1]), tonumber(h[2]), 1, t)
    else
      redis.call('ZREM', P .. 'leases', id)
    end
  end
end
"""

RESERVE = (
    _PRELUDE
    + r"""
-- ARGV[4] mode ("take" or "check"), [5] id, [6] tokens, [7] nano-$, [8] lease seconds,
-- [9..] sids (distinct). Returns {1, t} when it fits (taken in "take" mode), {0, t,
-- denials...} when it does not (nothing taken), {-1} if the id is in use. Each denial is six
-- values: scope index (from 1), limit name, kind ("at": wait until the deadline; "inf":
-- never; "reset": until the calendar window resets; "held": until holds settle), deadline,
-- used (calendar limits: settled plus held), the limit.
local mode, id = ARGV[4], ARGV[5]
local tokens, nano, lease = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
if mode == 'take' and redis.call('EXISTS', P .. 'h:' .. id) == 1 then
  return {-1}
end
local t = clock()
reap(t)

local out = {}
local function deny(index, name, kind, at, used, limit)
  for _, v in ipairs({index, name, kind, at, fmt(used), fmt(limit)}) do
    out[#out + 1] = v
  end
end
local function rate(st, index, name, tokens_mode, used, amount, cap)
  if cap == nil or used + amount <= cap then
    return
  end
  if amount > cap then
    deny(index, name, 'inf', '', 0, cap)
  else
    deny(index, name, 'at', fmt(deadline(st, tokens_mode, used, amount, cap, t)), 0, cap)
  end
end
local function calendar(index, name, limit, spent, held, amount, holds_shrink)
  if fits(limit, spent + held, amount) then
    return
  end
  local kind = 'reset'
  if not fits(limit, 0, amount) then
    kind = 'inf'
  elseif holds_shrink and fits(limit, spent, amount) then
    kind = 'held'
  end
  deny(index, name, kind, '', spent + held, limit)
end

local states = {}
for i = 9, #ARGV do
  local index = i - 8
  local st = load(ARGV[i], t)
  prune(st, t)
  states[index] = st
  rate(st, index, 'rpm', false, st.rq, 1, st.rpm)
  rate(st, index, 'tpm', true, st.tk, tokens, st.tpm)
  -- A held request settles as exactly one request, so only its release frees room.
  calendar(index, 'rpd', st.rpd, st.dr, st.inf, 1, false)
  calendar(index, 'tpd', st.tpd, st.dt, st.ht, tokens, true)
  calendar(index, 'daily_budget', st.db, st.dn, st.hn, nano, true)
  calendar(index, 'monthly_budget', st.mb, st.mn, st.hn, nano, true)
  redis.call('SADD', P .. 'scopes', ARGV[i])
end

if #out > 0 or mode ~= 'take' then
  for _, st in ipairs(states) do
    save(st)
  end
  local reply = {#out > 0 and 0 or 1, fmt(t)}
  for _, v in ipairs(out) do
    reply[#reply + 1] = v
  end
  return reply
end

local sids = {}
for _, st in ipairs(states) do
  take(st, id, tokens, t)
  st.inf = st.inf + 1
  st.ht = st.ht + tokens
  st.hn = st.hn + nano
  save(st)
  sids[#sids + 1] = st.sid
end
redis.call('HSET', P .. 'h:' .. id, 's', table.concat(sids, '\n'), 't', fmt(tokens), 'n', fmt(nano))
redis.call('ZADD', P .. 'leases', fmt(t + lease), id)
return {1, fmt(t)}
"""
)

CLOSE = (
    _PRELUDE
    + r"""
-- ARGV[4] id, [5] tokens, [6] nano-$, [7] 1 to settle, 0 to release. Returns {1, t, what
-- alerts read (nine values per scope, see close)} if it was open, {0, t} if not (a no-op).
local t = clock()
local out = {}
local reply = {close(ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), t, out),
               fmt(t)}
for _, v in ipairs(out) do
  reply[#reply + 1] = v
end
return reply
"""
)

RENEW = (
    _PRELUDE
    + r"""
-- ARGV[4] lease seconds, [5..] ids of open reservations. Extends the lease of each still
-- open; returns the ids that are not (reaped, or closed by another caller).
local t = clock()
local expiry = fmt(t + tonumber(ARGV[4]))
local gone = {}
for i = 5, #ARGV do
  if redis.call('ZSCORE', P .. 'leases', ARGV[i]) then
    redis.call('ZADD', P .. 'leases', expiry, ARGV[i])
  else
    gone[#gone + 1] = ARGV[i]
  end
end
return gone
"""
)

READ = (
    _PRELUDE
    + r"""
-- ARGV[4] "all" (every known scope) or "some" (the sids in [5..]). Returns {t, holds in
-- flight, then per scope: sid, json of its limits ("" if none), rq, tk, dr, dt, dn, mn, inf,
-- ht, hn, and the deadlines at which the newest request and the newest tokens in the
-- window stop counting ("" if none)}.
local t = clock()
reap(t)
local sids
if ARGV[4] == 'all' then
  sids = redis.call('SMEMBERS', P .. 'scopes')
else
  sids = {}
  for i = 5, #ARGV do
    sids[#sids + 1] = ARGV[i]
  end
end
local reply = {fmt(t), redis.call('ZCARD', P .. 'leases')}
for _, sid in ipairs(sids) do
  local st = load(sid, t)
  prune(st, t)
  if st.exists then
    -- Reading a scope nobody has used must not create it.
    save(st)
  end
  local w, a = P .. 'w:' .. sid, P .. 'a:' .. sid
  local req_at, tok_at, start = '', '', 0
  while req_at == '' or tok_at == '' do
    local batch = redis.call('ZREVRANGE', w, start, start + 63, 'WITHSCORES')
    if #batch == 0 then
      break
    end
    for i = 1, #batch, 2 do
      local stops = fmt(tonumber(batch[i + 1]) + WINDOW)
      if req_at == '' and not is_overrun(batch[i]) then
        req_at = stops
      end
      if tok_at == '' and (tonumber(redis.call('HGET', a, batch[i])) or 0) > 0 then
        tok_at = stops
      end
    end
    start = start + 64
  end
  for _, v in ipairs({sid, st.json, fmt(st.rq), fmt(st.tk), fmt(st.dr), fmt(st.dt), fmt(st.dn),
                      fmt(st.mn), fmt(st.inf), fmt(st.ht), fmt(st.hn), req_at, tok_at}) do
    reply[#reply + 1] = v
  end
end
return reply
"""
)

BOOK = (
    _PRELUDE
    + r"""
-- ARGV[4] id, [5] tokens, [6] nano-$, [7..] sids (distinct). A request settled elsewhere
-- (by a replica's own ledger while Redis was away) is charged as if admitted and settled
-- now: one request and its tokens in the sliding windows, and in the calendar counts. Once
-- per id: returns 1 if booked, 0 if that id was booked before.
local id, tokens, nano = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local booked = P .. 'booked'
if redis.call('SADD', booked, id) == 0 then
  return 0
end
-- Ids are kept two days: long enough for any retry of the same booking, and calendar
-- counts older than a day no longer matter to rpd/tpd (a month's budget is then counted
-- by the day's own sums).
redis.call('EXPIRE', booked, 172800)
local t = clock()
local entry = 'b:' .. id
for i = 7, #ARGV do
  local st = load(ARGV[i], t)
  prune(st, t)
  take(st, entry, tokens, t)
  st.dr = st.dr + 1
  st.dt = st.dt + tokens
  st.dn = st.dn + nano
  st.mn = st.mn + nano
  save(st)
  redis.call('SADD', P .. 'scopes', ARGV[i])
end
return 1
"""
)
