"""The shared cache: Redis, on the database the Celery broker uses.

Django's RedisCache.clear() is FLUSHDB, which would also drop every queued task. This one
clears only its own keys (those under KEY_PREFIX)."""

from __future__ import annotations

from django.core.cache.backends.redis import RedisCache


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

    def clear(self) -> None:
        client = self._cache.get_client(write=True)  # type: ignore[attr-defined]
        keys = list(client.scan_iter(match=f"{self.key_prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
