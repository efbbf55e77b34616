"""The read-only `support` group (created by migration 0004): view permission on every model
of this app and on every mirror model wherever it lives, by rule. Granted after every
`migrate`, so a model added later (a new mirrored resource, API keys) is viewable by support
staff without a data migration of its own."""

from __future__ import annotations

from typing import Any

SUPPORT_GROUP = "support"


def grant_support_views(sender: Any, using: str = "default", **kwargs: Any) -> None:
    """post_migrate, for every app: add the `view_*` permissions of this app's models, and of
    any other app's mirror models, to the support group (it runs after Django's own receiver
    has created the app's permissions)."""
    from django.contrib.auth.models import Group, Permission
    from django.contrib.contenttypes.models import ContentType

    from .models import MirrorRecord

    group = Group.objects.using(using).filter(name=SUPPORT_GROUP).first()
    if group is None:
        return
    models = [
        model
        for model in sender.get_models()
        if sender.label == "integrations" or issubclass(model, MirrorRecord)
    ]
    if not models:
        return
    types = ContentType.objects.db_manager(using).get_for_models(*models).values()
    group.permissions.add(
        *Permission.objects.using(using).filter(
            content_type__in=types, codename__startswith="view_"
        )
    )
