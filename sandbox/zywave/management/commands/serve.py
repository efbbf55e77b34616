from __future__ import annotations

import os
import sys
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from sandbox.keys import ensure_rsa_key
from sandbox.zywave.models import Agency
from sandbox.zywave.seed import seed


class Command(BaseCommand):
    help = "Migrate, seed an empty database, then run the sandbox under gunicorn."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bind", default="127.0.0.1:8001")
        parser.add_argument("--workers", type=int, default=2)
        parser.add_argument("--threads", type=int, default=4)

    def handle(self, *args: Any, bind: str, workers: int, threads: int, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        ensure_rsa_key(settings.RSA_KEY_PATH)
        if not Agency.objects.exists():
            counts = seed()
            self.stdout.write(f"Seeded {counts['accounts']} demo accounts")
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
