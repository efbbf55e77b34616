"""Emails to the people who own connections: one helper, subject/text/html templates."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.template.loader import render_to_string

log = logging.getLogger(__name__)


def send(to: str, template: str, context: dict[str, Any]) -> bool:
    """Render `emails/{template}_subject.txt`, `_body.txt` and `_body.html` and send them."""
    if not to:
        return False
    context = {"portal_url": settings.PORTAL_URL, **context}
    subject = " ".join(render_to_string(f"emails/{template}_subject.txt", context).split())
    text = render_to_string(f"emails/{template}_body.txt", context)
    html = render_to_string(f"emails/{template}_body.html", context)
    message = EmailMultiAlternatives(subject, text, to=[to])
    message.attach_alternative(html, "text/html")
    try:
        message.send()
    except OSError as exc:
        log.warning("Could not send the %s email: %s", template, type(exc).__name__)
        return False
    return True


def _owner_email(connection: Any) -> str:
    return str(connection.user.email or connection.zywave_email or "")


def send_reauth_required(connection_id: int) -> None:
    from .models import Connection

    connection = Connection.objects.select_related("user").get(pk=connection_id)
    send(
        _owner_email(connection),
        "reauth_required",
        {"connection": connection, "reason": connection.last_error},
    )


def send_deadline_warning(connection_id: int) -> None:
    from .models import Connection

    connection = Connection.objects.select_related("user").get(pk=connection_id)
    send(_owner_email(connection), "deadline_warning", {"connection": connection})
