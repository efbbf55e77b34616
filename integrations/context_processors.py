from __future__ import annotations

from typing import Any

from django.http import HttpRequest


def zywave(request: HttpRequest) -> dict[str, Any]:
    """The banners on every page of a person: their Zywave grant has ended (one query); one of
    their webhook subscriptions is disabled, so its events are held (one query)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    from .models import Connection, WebhookSubscription

    needs = Connection.objects.filter(user=user, status=Connection.Status.REAUTH_REQUIRED).exists()
    disabled = list(
        WebhookSubscription.objects.filter(
            owner=user, state=WebhookSubscription.State.DISABLED
        ).values("pk", "url")
    )
    return {"zywave_reauth_required": needs, "webhooks_disabled": disabled}
