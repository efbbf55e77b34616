from __future__ import annotations

import os
import sys
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from sandbox.keys import ensure_rsa_key
from sandbox.zywave.control import apply_rate_limit
from sandbox.zywave.models import Agency
from sandbox.zywave.seed import seed


class Command(BaseCommand):
    help = "Migrate, seed an empty database, then run the sandbox under gunicorn."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bind", default="127.0.0.1:8001")
        parser.add_argument("--workers", type=int, default=2)
        parser.add_argument("--threads", type=int, default=4)
        parser.add_argument(
            "--rate-limit",
            type=float,
            help="API requests a second for the whole app (SANDBOX_RATE_LIMIT; 0: none)",
        )
        parser.add_argument(
            "--rate-limit-burst",
            type=int,
            help="burst of the rate limit, in requests (SANDBOX_RATE_LIMIT_BURST; 0: 1 s worth)",
        )

    def handle(
        self,
        *args: Any,
        bind: str,
        workers: int,
        threads: int,
        rate_limit: float | None,
        rate_limit_burst: int | None,
        **options: Any,
    ) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        ensure_rsa_key(settings.RSA_KEY_PATH)
        if not Agency.objects.exists():
            counts = seed()
            self.stdout.write(f"Seeded {counts['accounts']} demo accounts")
        # The options are defaults of the runtime settings, as their variables are: set them
        # for gunicorn's processes too, and write the limit in force into the shared state (a
        # state file left by an earlier run must not outlive it).
        for name, value in (("rate_limit", rate_limit), ("rate_limit_burst", rate_limit_burst)):
            if value is not None:
                os.environ[f"SANDBOX_{name.upper()}"] = str(value)
                settings.SANDBOX_DEFAULTS[name] = value
        state = apply_rate_limit()
        if state.rate:
            self.stdout.write(
                f"App-wide rate limit: {state.rate:g} requests/s, bursts of "
                f"{state.effective_burst()}"
            )
        self.stdout.write(f"Zywave sandbox on http://{bind}/ (data in {settings.DATABASE_PATH})")
        sys.stdout.flush()
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "sandbox.wsgi:application",
            "--chdir",
            str(settings.REPO_ROOT),
            "--bind",
            bind,
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "--worker-class",
            "gthread",
            "--graceful-timeout",
            "5",
        ]
        # Replace this process, so that signals (Ctrl-C, terminate) reach gunicorn directly.
        os.execv(sys.executable, command)  # noqa: S606 (fixed argv, no shell)
