from __future__ import annotations

from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    name = "integrations"
    verbose_name = "Zywave"

    def ready(self) -> None:
        from celery.signals import task_prerun
        from django.core.checks import Tags, register
        from django.core.signals import request_started
        from django.db.models.signals import post_migrate

        from . import checks, ratelimit, support

        # A web request is someone waiting: its Zywave calls (the proxy, the profile picker)
        # take the rate budget's interactive lead. A task starts as background; the tasks a
        # person waits for raise their own level (tasks.sync_connection).
        request_started.connect(ratelimit.on_request_started, weak=False)
        task_prerun.connect(ratelimit.on_task_started, weak=False)
        register(checks.encryption_key_decrypts_canary, Tags.security)
        register(checks.webhooks_allow_private, Tags.security)
        post_migrate.connect(checks.ensure_canary, sender=self)
        post_migrate.connect(support.grant_support_views)  # every app: its mirror models too
