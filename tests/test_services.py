"""tests/services.py: what `make test` runs on, wherever it runs."""

from __future__ import annotations

import os

import psycopg
import pytest
import redis

from tests import services


@pytest.mark.slow
def test_a_private_postgres_cluster_starts_answers_and_is_removed() -> None:
    with services.private_postgres() as admin:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            version = conn.execute("SHOW server_version_num").fetchone()
        assert version is not None and int(version[0]) >= 130000
        port = int(admin.rsplit(":", 1)[1].split("/")[0])
    assert not services.answers("127.0.0.1", port)


@pytest.mark.slow
def test_a_private_redis_starts_and_answers() -> None:
    with services.private_redis() as url:
        assert redis.Redis.from_url(url).ping()


def test_two_runs_on_one_redis_get_different_databases_each_flushed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379").rsplit("/", 1)[0]
    if not server.startswith("redis://") or not services.answers(
        *server.removeprefix("redis://").split(":")  # type: ignore[arg-type]
    ):
        pytest.fail(f"this test needs the Redis server the run uses ({server})")
    monkeypatch.setenv("REDIS_URL", server)
    with services.redis_database() as first:
        redis.Redis.from_url(first).set("left-over", "1")
        with services.redis_database() as second:
            assert first != second
            assert redis.Redis.from_url(second).dbsize() == 0
        assert redis.Redis.from_url(first).get("left-over") == b"1"
    assert redis.Redis.from_url(first).dbsize() == 0  # flushed at the end
    lock = redis.Redis.from_url(f"{server}/0").get(f"portal-tests:db:{first.rsplit('/', 1)[1]}")
    assert lock is None  # and given back
