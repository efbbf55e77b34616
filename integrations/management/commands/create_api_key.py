from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from integrations.api.keys import SCOPES, issue

# As on the page: how far ahead an expiry may be set.
MAX_EXPIRY_DAYS = 3650


class Command(BaseCommand):
    help = (
        "Create an API key for a portal user. The key is printed once, alone on the last line "
        "of standard output (`... | tail -n 1`); the portal keeps only its hash."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username", help="the portal user the key acts as")
        parser.add_argument("--name", required=True, help="what will use the key")
        parser.add_argument(
            "--scope",
            action="append",
            dest="scopes",
            default=[],
            metavar="SCOPE",
            help=f"a scope of the key, repeatable: {', '.join(SCOPES)}",
        )
        parser.add_argument(
            "--expires-days",
            type=int,
            metavar="N",
            help="the key expires N days from now (default: never)",
        )

    def handle(
        self,
        *args: Any,
        username: str,
        name: str,
        scopes: list[str],
        expires_days: int | None,
        **options: Any,
    ) -> None:
        unknown = [scope for scope in scopes if scope not in SCOPES]
        if unknown:
            raise CommandError(
                f"unknown scope {', '.join(map(repr, unknown))}: choose among {', '.join(SCOPES)}"
            )
        if not scopes:
            raise CommandError(f"give at least one --scope, among {', '.join(SCOPES)}")
        if not name.strip():
            raise CommandError("--name must not be empty")
        expires_at = None
        if expires_days is not None:
            if not 1 <= expires_days <= MAX_EXPIRY_DAYS:
                raise CommandError(f"--expires-days must be between 1 and {MAX_EXPIRY_DAYS}")
            expires_at = timezone.now() + timedelta(days=expires_days)
        User = get_user_model()
        owner = User._default_manager.filter(**{User.USERNAME_FIELD: username}).first()
        if owner is None:
            raise CommandError(f"no portal user is named {username!r}")
        if not owner.is_active:
            raise CommandError(f"{username} is deactivated: the API refuses the keys of such users")
        api_key, key = issue(owner, name, scopes, expires_at=expires_at)
        expiry = f"expires {expires_at:%Y-%m-%d %H:%M %Z}" if expires_at else "never expires"
        self.stdout.write(
            f"Created API key {api_key.name!r} (zwk_{api_key.prefix}_…) for {username}, "
            f"scopes {' '.join(api_key.scopes)}, {expiry}. It is shown once, on the next line:"
        )
        self.stdout.write(key)
