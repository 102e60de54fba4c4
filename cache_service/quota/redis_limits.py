"""A scope's limits in the Redis quota ledger (:mod:`~cache_service.quota.redis_ledger`): the
one script that sets them, apart from the accounting scripts of ``redis_scripts.py`` (it
reads no clock and no counts, only the ``l:<sid>`` hash they read the limits from).

It carries the rule of ``QuotaLedger.configure``: a change made at run time (the admin API)
outlives the configuration's limits applied again by a replica's start, unless the
configuration now gives other limits than those it gave when the change was made. So the hash
keeps, beside the limits, ``cfg`` (the json of the configuration's limits last applied) and
``op`` ("1" once changed at run time since).
"""

from __future__ import annotations

CONFIGURE = r"""
-- KEYS[1] l:<sid>, KEYS[2] scopes. ARGV[1] sid, [2] "1" for a change at run time, [3] the
-- limits' json, [4..] field, value pairs of the hash (json included). No clock: limits do
-- not depend on time. Returns the json of the limits in force.
local key = KEYS[1]
local cfg = redis.call('HGET', key, 'cfg')
if ARGV[2] == '1' then
  redis.call('DEL', key)
  redis.call('HSET', key, 'op', '1', unpack(ARGV, 4))
  if cfg then
    redis.call('HSET', key, 'cfg', cfg)
  end
elseif redis.call('HGET', key, 'op') == '1' and (not cfg or cfg == ARGV[3]) then
  -- The operator's change is newer than these limits: kept, and the configuration noted,
  -- so that a configuration changed later wins.
  redis.call('HSET', key, 'cfg', ARGV[3])
else
  redis.call('DEL', key)
  redis.call('HSET', key, 'cfg', ARGV[3], unpack(ARGV, 4))
end
redis.call('SADD', KEYS[2], ARGV[1])
return redis.call('HGET', key, 'json')
"""
