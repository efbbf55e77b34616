from __future__ import annotations

from typing import Any

from django.http import HttpRequest


def zywave(request: HttpRequest) -> dict[str, Any]:
    """The banner on every page of a person whose Zywave grant has ended (one query)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    from .models import Connection

    needs = Connection.objects.filter(user=user, status=Connection.Status.REAUTH_REQUIRED).exists()
    return {"zywave_reauth_required": needs}
