from __future__ import annotations

from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    name = "integrations"
    verbose_name = "Zywave"

    def ready(self) -> None:
        from django.core.checks import Tags, register
        from django.db.models.signals import post_migrate

        from . import checks, support

        register(checks.encryption_key_decrypts_canary, Tags.security)
        register(checks.webhooks_allow_private, Tags.security)
        post_migrate.connect(checks.ensure_canary, sender=self)
        post_migrate.connect(support.grant_support_views)  # every app: its mirror models too
