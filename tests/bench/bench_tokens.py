"""Refresh storm: 500 connections whose access tokens all expired, eight concurrent worker
processes each using every connection, against the sandbox with one-time refresh tokens.

    .venv/bin/python tests/bench/bench_tokens.py [--connections 500] [--workers 8]

Side by side in one run, the same storm driven through
- the portal: `integrations.tokens.access_token_for` (row lock, re-read, refresh once), and
- python-social-auth's stock `UserSocialAuth.get_access_token` / `refresh_token`, with a
  stock backend that keeps tokens in `extra_data` (no lock).
Reported: token-endpoint calls, duplicate refreshes, grants lost (a connection whose stored
refresh token Zywave no longer honours), and the wall time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from common import bench_database, setup_django
from social_core.backends.oauth import BaseOAuth2

from integrations.backends import ZywaveOAuth2
from tests.sandboxserver import Sandbox, start_sandbox, stop_sandbox


class StockZywave(ZywaveOAuth2):
    """The same provider, configured the way python-social-auth stores tokens by default."""

    name = "zywave-stock"
    EXTRA_DATA = None

    def extra_data(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return BaseOAuth2.extra_data(self, *args, **kwargs)


def enable_stock_backend() -> None:
    from django.conf import settings
    from social_core.backends import utils

    settings.AUTHENTICATION_BACKENDS = [
        *settings.AUTHENTICATION_BACKENDS,
        "bench_tokens.StockZywave",
    ]
    settings.SOCIAL_AUTH_ZYWAVE_STOCK_KEY = settings.ZYWAVE_CLIENT_ID
    settings.SOCIAL_AUTH_ZYWAVE_STOCK_SECRET = settings.ZYWAVE_CLIENT_SECRET
    utils.BACKENDSCACHE.clear()


def grants(sandbox: Sandbox, count: int) -> list[dict[str, Any]]:
    """`count` separate grants for the demo agent, each through the whole code flow."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda _: sandbox.obtain_tokens(), range(count)))


def worker(kind: str, ids: list[int], start_at: float, env: dict[str, str], out: Any) -> None:
    os.environ.update(env)
    import django

    django.setup()
    from social_django.models import UserSocialAuth
    from social_django.utils import load_strategy

    from integrations.models import Connection
    from integrations.tokens import access_token_for

    if kind == "stock":
        enable_stock_backend()
    errors = 0
    while time.time() < start_at:
        time.sleep(0.001)
    for pk in ids:
        try:
            if kind == "portal":
                access_token_for(Connection.objects.get(pk=pk))
            else:
                UserSocialAuth.objects.get(pk=pk).get_access_token(load_strategy())
        except Exception as exc:  # noqa: BLE001  (counted: a failed use is what the storm measures)
            errors += 1
            if errors == 1 and os.environ.get("BENCH_DEBUG"):
                import traceback

                traceback.print_exception(exc)
    out.put(errors)


def storm(kind: str, ids: list[int], workers: int, env: dict[str, str]) -> tuple[float, int]:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    start_at = time.time() + 5  # let every process finish importing Django first
    processes = [
        context.Process(target=worker, args=(kind, ids, start_at, env, out)) for _ in range(workers)
    ]
    for process in processes:
        process.start()
    errors = sum(out.get(timeout=900) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    return time.time() - start_at, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    n = args.connections

    with tempfile.TemporaryDirectory(prefix="token-bench-") as tmp:
        var_dir = Path(tmp)
        sandbox, process = start_sandbox(var_dir / "sandbox", accounts=100)
        try:
            sandbox.ensure_test_redirect_uri()
            database = bench_database("portal_bench_tokens", var_dir)
            setup_django(database, sandbox.url, var_dir)
            enable_stock_backend()
            from django.contrib.auth.models import User
            from django.utils import timezone
            from social_django.models import UserSocialAuth

            from integrations.models import Connection

            issued = grants(sandbox, 2 * n)
            expired = timezone.now() - timedelta(minutes=1)
            users = User.objects.bulk_create([User(username=f"storm-{i}") for i in range(2 * n)])
            portal_ids, stock_ids = [], []
            for i, (user, tokens) in enumerate(zip(users, issued, strict=True)):
                if i < n:
                    conn = Connection(user=user, zywave_subject=f"storm-{i}")
                    conn.set_tokens(tokens)
                    conn.access_token_expires_at = expired
                    conn.authorized_at = timezone.now()
                    conn.save()
                    portal_ids.append(conn.pk)
                else:
                    social = UserSocialAuth.objects.create(
                        user=user,
                        provider="zywave-stock",
                        uid=f"storm-{i}",
                        extra_data={
                            "access_token": tokens["access_token"],
                            "refresh_token": tokens["refresh_token"],
                            "token_type": "Bearer",
                            "expires": 3600,
                            "auth_time": int(time.time()) - 7200,
                        },
                    )
                    stock_ids.append(social.pk)
            env = dict(os.environ)  # the settings setup_django chose, keys included
            env["PYTHONPATH"] = os.pathsep.join(sys.path)
            results = {}
            for kind, ids in (("portal", portal_ids), ("stock", stock_ids)):
                sandbox.control("POST", "counters/reset")
                elapsed, errors = storm(kind, ids, args.workers, env)
                counts = sandbox.counters()["token"]
                if kind == "portal":
                    stored = [c.refresh_token for c in Connection.objects.filter(pk__in=ids)]
                    broken = Connection.objects.filter(pk__in=ids).exclude(status="active").count()
                else:
                    stored = [
                        s.extra_data.get("refresh_token")
                        for s in UserSocialAuth.objects.filter(pk__in=ids)
                    ]
                    broken = 0
                dead = sum(
                    1
                    for token in stored
                    if not token or not sandbox.control("GET", f"tokens/{token}")["active"]
                )
                results[kind] = {
                    "calls": sum(v for k, v in counts.items() if k.startswith("refresh_token")),
                    "success": counts.get("refresh_token:success", 0),
                    "invalid_grant": counts.get("refresh_token:invalid_grant", 0),
                    "lost": max(dead, broken),
                    "errors": errors,
                    "seconds": elapsed,
                }
        finally:
            stop_sandbox(process)

    print(
        f"\nRefresh storm: {n} expired connections, {args.workers} worker processes each "
        "using every connection, one-time refresh tokens\n"
    )
    print("| | token-endpoint calls | duplicate refreshes | grants lost | failed uses | time (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind, label in (
        ("portal", "portal (`access_token_for`)"),
        ("stock", "python-social-auth stock"),
    ):
        r = results[kind]
        print(
            f"| {label} | {r['calls']} | {r['calls'] - n if r['calls'] > n else 0} | "
            f"{r['lost']} | {r['errors']} | {r['seconds']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
