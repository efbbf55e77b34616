from __future__ import annotations

import time
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from sandbox.zywave import seed as demo_data


class Command(BaseCommand):
    help = "Replace the sandbox's data with deterministic demo data (users, client, accounts, ...)."

    def add_arguments(self, parser: CommandParser) -> None:
        # Spread over four agencies (40/30/20/10%): 250,000 gives the first profile the 100,000
        # accounts the sync benchmark's memory run needs.
        parser.add_argument("--accounts", type=int, default=10_000, help="0 to 250,000")
        parser.add_argument("--seed", type=int, default=1, help="random seed")

    def handle(self, *args: Any, accounts: int, seed: int, **options: Any) -> None:
        if not 0 <= accounts <= 250_000:
            self.stderr.write("--accounts must be between 0 and 250,000")
            raise SystemExit(2)
        call_command("migrate", interactive=False, verbosity=0)
        started = time.perf_counter()
        counts = demo_data.seed(accounts=accounts, seed_value=seed)
        made = ", ".join(f"{count} {name}" for name, count in counts.items())
        self.stdout.write(f"Seeded {made} (seed {seed}) in {time.perf_counter() - started:.1f}s")
