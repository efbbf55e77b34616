from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from integrations.models import Connection, SyncRun
from integrations.sync import sync_now


class Command(BaseCommand):
    help = "Sync Zywave accounts and contacts now, in this process (no broker needed)."

    def add_arguments(self, parser: Any) -> None:
        who = parser.add_mutually_exclusive_group(required=True)
        who.add_argument("--user", help="the portal username whose connection to sync")
        who.add_argument("--all", action="store_true", help="every active connection")
        parser.add_argument("--full", action="store_true", help="full resync (removes deleted)")

    def handle(self, *args: Any, user: str | None, all: bool, full: bool, **options: Any) -> None:
        connections = Connection.objects.select_related("user").order_by("pk")
        if user:
            connections = connections.filter(user__username=user)
            if not connections.exists():
                raise CommandError(f"{user} has no Zywave connection")
        failed = 0
        for connection in tqdm(list(connections), desc="connections", disable=None):
            name = connection.user.get_username()
            if not connection.can_sync:
                self.stdout.write(
                    f"{name}: skipped (status {connection.status}, profile needed "
                    f"{connection.chosen_profile_id is None})"
                )
                continue
            with tqdm(desc=name, unit=" records", disable=None, leave=False) as bar:

                def progress(run: SyncRun, bar: Any = bar) -> None:
                    bar.total = run.total_reported
                    bar.update(run.records_done - bar.n)

                run = sync_now(connection, full=full, on_page=progress)
            if run is None:
                self.stdout.write(f"{name}: a sync is already running")
                continue
            self.stdout.write(
                f"{name}: {run.state}, {run.pages_done} pages, {run.records_done} records"
                + (f" ({run.error})" if run.error else "")
            )
            failed += run.state != "succeeded"
        if failed:
            raise CommandError(f"{failed} sync(s) did not succeed")
