from __future__ import annotations

from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    name = "integrations"
    verbose_name = "Zywave"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from portal import checks  # noqa: F401  (registers the system checks)

        from . import fields

        post_migrate.connect(fields.ensure_canary, sender=self)
