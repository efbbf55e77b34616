"""Emails to the people who own connections: one helper, subject/text/html templates.

A leaf module: it sends what it is given and imports nothing of the app's, so models and tasks
can call it without an import cycle.
"""

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


def send_reauth_required(to: str, connection: Any, reason: str) -> bool:
    return send(to, "reauth_required", {"connection": connection, "reason": reason})


def send_deadline_warning(to: str, connection: Any) -> bool:
    return send(to, "deadline_warning", {"connection": connection})


def send_reconnect_reminder(to: str, connection: Any) -> bool:
    return send(to, "reconnect_reminder", {"connection": connection})


def send_webhook_disabled(to: str, subscription: Any) -> bool:
    return send(to, "webhook_disabled", {"subscription": subscription})
