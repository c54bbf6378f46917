"""The state backend shared by nodes: Redis (``--state redis://host:port/db``).

redis-py, the client the Redis project maintains, rather than a Twisted client (txredisapi has
had no release since 2021): its calls block, so the MTA makes them in threads of its own
(:class:`~mqtwisted.state.opening.OwnThread`), and the ``mqmta`` command calls it directly.
Every check-and-update is one Lua script, atomic in Redis, and every time in a script is
Redis's own clock (``TIME``), so nodes whose clocks differ slightly still share one schedule.

Keys start with a prefix, ``mqmta:`` unless the URL says ``?prefix=…`` (installations sharing a
Redis): ``version``, ``pauses``, ``suppressions``, ``holds``, ``days`` (hashes), and per
shaping key ``slots:<key>`` (a sorted set of leases by expiry) and ``tat:<key>`` (a GCRA's next
time).
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from mqtwisted.state.backend import Days, Holds
from mqtwisted.state.pauses import Pause
from mqtwisted.state.suppression import Suppression

#: remove a hash field; count a change when there was one
_REMOVE = """
local n = redis.call('HDEL', KEYS[1], ARGV[1])
if n > 0 then redis.call('INCR', KEYS[2]) end
return n
"""

#: keep the longer of each hold, drop the ended ones, return all
_HOLDS = """
for i = 1, #ARGV - 1, 3 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  if not current or tonumber(cjson.decode(current)[1]) < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], cjson.encode({tonumber(ARGV[i + 1]), ARGV[i + 2]}))
  end
end
local now = tonumber(ARGV[#ARGV])
local all = redis.call('HGETALL', KEYS[1])
local kept = {}
for i = 1, #all, 2 do
  if tonumber(cjson.decode(all[i + 1])[1]) <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    kept[#kept + 1] = all[i]
    kept[#kept + 1] = all[i + 1]
  end
end
return kept
"""

#: take one of ARGV[1] slots for ARGV[2] with a lease of ARGV[3] seconds: 1, or 0 when all are taken
_TAKE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 1)
  return 1
end
return 0
"""

#: extend the leases ARGV[2..] of KEYS[i] by ARGV[1] seconds; the indexes of those already gone
_RENEW = """
local t = redis.call('TIME')
local until_ = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
local lost = {}
for i = 1, #KEYS do
  if redis.call('ZSCORE', KEYS[i], ARGV[i + 1]) then
    redis.call('ZADD', KEYS[i], until_, ARGV[i + 1])
    redis.call('EXPIRE', KEYS[i], math.ceil(tonumber(ARGV[1])) + 1)
  else
    lost[#lost + 1] = i
  end
end
return lost
"""

#: GCRA without burst, as a reservation: the next turn is max(TAT, now); TAT moves on by the
#: interval ARGV[1]; returns the seconds from now until the turn (a string: Lua numbers
#: would come back truncated to integers)
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local start = tonumber(redis.call('GET', KEYS[1]) or '0')
if start < now then start = now end
redis.call('SET', KEYS[1], string.format('%.6f', start + interval),
           'PX', math.ceil((start + interval - now) * 1000) + 1000)
return string.format('%.6f', start - now)
"""


def split_url(url: str) -> tuple[str, str]:
    """(the URL redis-py reads, the key prefix): ``?prefix=`` is ours, not redis-py's."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    prefix = next((v for k, v in query if k == "prefix"), "mqmta:")
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment)), prefix


class RedisBackend:
    """:class:`~mqtwisted.state.backend.Backend` in Redis, plus the shared counters of
    :class:`~mqtwisted.state.redisstore.RedisStore` (slots and GCRA turns)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        import redis

        redis_url, self.prefix = split_url(url)
        self.url = url
        self.client = redis.Redis.from_url(redis_url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                           health_check_interval=30)
        self._remove = self.client.register_script(_REMOVE)
        self._holds = self.client.register_script(_HOLDS)
        self._take_slot = self.client.register_script(_TAKE_SLOT)
        self._renew = self.client.register_script(_RENEW)
        self._reserve = self.client.register_script(_RESERVE)

    def key(self, name: str) -> str:
        return self.prefix + name

    # -- pauses and suppressions ---------------------------------------------------------------

    def version(self) -> int:
        return int(self.client.get(self.key("version")) or 0)

    def _put(self, table: str, field: str, value: dict) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.key(table), field, json.dumps(value))
            pipe.incr(self.key("version"))
            pipe.execute()

    def put_pause(self, pause: Pause) -> None:
        self._put("pauses", pause.id, pause.to_json())

    def pauses(self) -> list[Pause]:
        return [Pause.from_json(json.loads(v)) for v in self.client.hvals(self.key("pauses"))]

    def remove_pause(self, pause_id: str) -> bool:
        return bool(self._remove(keys=[self.key("pauses"), self.key("version")], args=[pause_id]))

    def put_suppression(self, entry: Suppression) -> None:
        self._put("suppressions", entry.pattern, entry.to_json())

    def suppressions(self) -> list[Suppression]:
        return [Suppression.from_json(json.loads(v)) for v in self.client.hvals(self.key("suppressions"))]

    def remove_suppression(self, pattern: str) -> bool:
        return bool(self._remove(keys=[self.key("suppressions"), self.key("version")], args=[pattern]))

    # -- suspensions and warm-up days ----------------------------------------------------------

    def sync(self, holds: Holds, days: Days, now: float) -> tuple[Holds, Days]:
        args: list[str | float] = []
        for key, (until, reason) in holds.items():
            args += [key, repr(until), reason]
        kept = self._holds(keys=[self.key("holds")], args=[*args, repr(now)])
        with self.client.pipeline(transaction=True) as pipe:
            for (key, day), n in days.items():
                pipe.hincrby(self.key("days"), json.dumps([key, day]), n)
            pipe.hgetall(self.key("days"))
            all_days = pipe.execute()[-1]
        all_holds = {}
        for i in range(0, len(kept), 2):
            until, reason = json.loads(kept[i + 1])
            all_holds[kept[i].decode()] = (float(until), reason)
        return all_holds, {tuple(json.loads(k)): int(v) for k, v in all_days.items()}  # type: ignore[misc]

    # -- shared counters -----------------------------------------------------------------------

    def take_slot(self, key: str, limit: int, member: str, lease: float) -> bool:
        return bool(self._take_slot(keys=[self.key("slots:" + key)], args=[limit, member, lease]))

    def drop_slot(self, key: str, member: str) -> None:
        self.client.zrem(self.key("slots:" + key), member)

    def renew_slots(self, slots: list[tuple[str, str]], lease: float) -> list[int]:
        """Extend each (key, member) lease; the indexes of those that had expired."""
        if not slots:
            return []
        lost = self._renew(keys=[self.key("slots:" + k) for k, _ in slots], args=[lease, *(m for _, m in slots)])
        return [int(i) - 1 for i in lost]

    def slots_taken(self, key: str) -> int:
        return int(self.client.zcard(self.key("slots:" + key)))

    def reserve(self, key: str, interval: float) -> float:
        return float(self._reserve(keys=[self.key("tat:" + key)], args=[repr(interval)]))

    def close(self) -> None:
        self.client.close()
