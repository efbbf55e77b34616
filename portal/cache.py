"""The shared cache: Redis, on the database the Celery broker uses.

Django's RedisCache.clear() is FLUSHDB, which would also drop every queued task. This one
clears only its own keys (those under KEY_PREFIX)."""

from __future__ import annotations

from django.core.cache.backends.redis import RedisCache


class SharedRedisCache(RedisCache):
    def clear(self) -> None:
        client = self._cache.get_client(write=True)  # type: ignore[attr-defined]
        keys = list(client.scan_iter(match=f"{self.key_prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
