"""The read-only `support` group (created by migration 0004): view permission on every model
of this app, by rule. Granted after every `migrate`, so a model added later (a new mirrored
resource, API keys) is viewable by support staff without a data migration of its own."""

from __future__ import annotations

from typing import Any

SUPPORT_GROUP = "support"


def grant_support_views(sender: Any, using: str = "default", **kwargs: Any) -> None:
    """post_migrate: add every `view_*` permission of the app to the support group (it runs
    after Django's own receiver has created the permissions)."""
    from django.contrib.auth.models import Group, Permission

    group = Group.objects.using(using).filter(name=SUPPORT_GROUP).first()
    if group is None:
        return
    group.permissions.add(
        *Permission.objects.using(using).filter(
            content_type__app_label=sender.label, codename__startswith="view_"
        )
    )
