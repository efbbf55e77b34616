"""The shared cache: Redis, on the database the Celery broker uses.

Django's RedisCache.clear() is FLUSHDB, which would also drop every queued task. This one
clears only its own keys (those under KEY_PREFIX)."""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.redis import RedisCache

_COALESCE = """
if redis.call('SET', KEYS[1], 1, 'NX', 'EX', ARGV[1]) then return 1 end
if redis.call('SET', KEYS[2], 1, 'NX', 'EX', ARGV[1]) then
  redis.call('SET', KEYS[1], 1, 'EX', ARGV[2])
  return 2
end
return 0
"""


class SharedRedisCache(RedisCache):
    def count(self, key: str, timeout: int) -> int:
        """Add one to a counter that lives `timeout` seconds from its first count: INCR and
        EXPIRE NX in one round trip (Django's add-then-incr takes three)."""
        client = self._cache.get_client(key, write=True)  # type: ignore[attr-defined]
        pipe = client.pipeline(transaction=False)
        name = self.make_and_validate_key(key)
        pipe.incr(name)
        pipe.expire(name, timeout, nx=True)
        return int(pipe.execute()[0])

    def coalesce(self, key: str, window: int) -> int:
        """`integrations.hooks.schedule_fetch`'s three steps in one round trip: 1 when `key`
        was added (the window's first: fetch now), 2 when `key:again` was (fetch at the
        window's end, which then lasts another window), 0 when both were there (ride along).
        Each add is Django's `add` (SET NX EX); the values are those `add(key, 1)` writes."""
        client = self._cache.get_client(key, write=True)  # type: ignore[attr-defined]
        names = [self.make_and_validate_key(key), self.make_and_validate_key(f"{key}:again")]
        if self._coalesce_script is None:
            self._coalesce_script = client.register_script(_COALESCE)
        return int(self._coalesce_script(keys=names, args=[window, 2 * window], client=client))

    _coalesce_script: Any = None

    def clear(self) -> None:
        client = self._cache.get_client(write=True)  # type: ignore[attr-defined]
        keys = list(client.scan_iter(match=f"{self.key_prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
