"""`{% connection_overview %}`: the admin index's overview of linked users and syncs.

A template tag because the index view belongs to Django's admin site: this adds the figures
without replacing the site.
"""

from __future__ import annotations

from typing import Any

from django import template

from integrations.overview import figures

register = template.Library()


@register.inclusion_tag("admin/integrations/overview.html", takes_context=True)
def connection_overview(context: dict[str, Any]) -> dict[str, Any]:
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.has_perm("integrations.view_connection"):
        return {"show": False}
    return {"show": True, **figures()}
