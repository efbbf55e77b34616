from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from integrations.doctor import connection_to_diagnose, diagnose, render_text
from integrations.models import ConnectionEvent

HELP = """What Zywave actually does for one real connection, and what to set (read-only).

It never refreshes a token and never writes to Zywave. It makes at most these calls, each
once: GET {ZYWAVE_AUTH_URL}/.well-known/openid-configuration; and on ZYWAVE_API_URL with the
stored access token: GET /profiles/V2.0/Profile/{TypeCode}, .../{id} (the chosen profile),
/profiles/V2.1/Profile/{TypeCode}/current, /accounts/v2.0/account?$top=1 and
/accounts/v2.0/contact?$top=1 under the chosen profile, and the accounts page once more without
the Profile header. Exit status: 0 when no check fails, 1 when one does, 2 when there is no
connection to diagnose."""


class Command(BaseCommand):
    help = HELP

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--user", help="the portal username (default: the first active one)")
        parser.add_argument(
            "--json",
            action="store_true",
            dest="as_json",
            help="one JSON object on standard output, nothing else (progress on standard error)",
        )
        parser.add_argument(
            "--record",
            metavar="FILE",
            help="write the shapes Zywave answered in (no values) to FILE, for the sandbox "
            "(SANDBOX_SHAPES_FILE) or a bug report",
        )

    def handle(
        self, *args: Any, user: str | None, as_json: bool, record: str | None, **options: Any
    ) -> None:
        connection = connection_to_diagnose(user)
        if connection is None:
            who = f"{user} has" if user else "there is"
            raise CommandError(f"{who} no Zywave connection to diagnose", returncode=2)

        def progress(step: str, done: int, total: int) -> None:
            if step != "done":
                self.stderr.write(f"[{done + 1}/{total}] {step}…")

        found = diagnose(connection, progress)
        connection.record(
            ConnectionEvent.Kind.DOCTOR_RUN, via="command", worst=found.worst, calls=found.calls
        )
        if record:
            Path(record).write_text(dumps(found.shapes) + "\n")
            self.stderr.write(f"shapes written to {record}")
        self.stderr.write(f"{found.calls} calls made, none of them a refresh")
        if as_json:
            self.stdout.write(dumps(found.report))
        else:
            self.stdout.write(render_text(found.report))
        if found.worst == "fail":
            failed = sum(check["verdict"] == "fail" for check in found.report["checks"])
            raise CommandError(f"{failed} check(s) failed", returncode=1)


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2)
