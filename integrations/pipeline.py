"""social-auth pipeline steps for connecting a Zywave account to a logged-in portal user.

No step here is `@partial`: a partial step stores the pipeline's data, token response
included, in plaintext in `social_auth_partial`.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from django.db import transaction
from django.utils import timezone
from social_core.exceptions import AuthAssociationError, AuthException
from social_django.models import UserSocialAuth

from . import webhooks
from .fields import token_fingerprint
from .models import Connection, ConnectionEvent

log = logging.getLogger(__name__)


class NotLoggedIn(AuthException):
    """Connecting needs a portal login: the flow never creates or logs in portal users."""

    default_code = "authentication_disallowed"


class IdentityInUse(AuthAssociationError):
    """The Zywave identity is already linked to another portal user."""


class SecondIdentity(AuthException):
    """The person is linked to another Zywave identity and must disconnect it first."""

    default_code = "identity_in_use"


def require_portal_user(backend: Any, user: Any = None, **kwargs: Any) -> None:
    if user is None or not user.is_authenticated:
        raise NotLoggedIn(backend)


def refuse_second_identity(backend: Any, uid: str, user: Any, **kwargs: Any) -> None:
    """One Zywave identity per portal user and one portal user per Zywave identity."""
    if (
        UserSocialAuth.objects.filter(provider=backend.name, uid=uid)
        .exclude(user_id=user.pk)
        .exists()
    ):
        raise IdentityInUse(backend)
    connection = Connection.objects.filter(user=user).first()
    if (
        connection is not None
        and connection.is_connected
        and connection.zywave_subject
        and connection.zywave_subject != uid
    ):
        raise SecondIdentity(backend)


def revoke_replaced_grant(connection_id: int, refresh_token: str, uid: str) -> None:
    """Revoke the refresh token a reconnect replaced (best effort) and record the outcome."""
    from .tokens import zywave_backend

    try:
        revoked = bool(zywave_backend().revoke_token(refresh_token, uid))
        reason = "" if revoked else "Zywave refused the revocation"
    except Exception as exc:  # noqa: BLE001  (best effort: the reconnect itself succeeded)
        revoked, reason = False, f"Zywave did not answer the revocation ({type(exc).__name__})"
    connection = Connection.objects.filter(pk=connection_id).first()
    if connection is not None:
        connection.record(
            ConnectionEvent.Kind.OLD_GRANT_REVOKED,
            revoked=revoked,
            reason=reason,
            refresh_token=token_fingerprint(refresh_token),
        )
    if not revoked:
        log.warning(
            "Revoking the replaced grant of connection %s failed: %s", connection_id, reason
        )


def store_connection(
    backend: Any,
    user: Any,
    uid: str,
    response: dict[str, Any],
    id_key: str = "",
    **kwargs: Any,
) -> dict[str, Any]:
    """Link the identity and write the tokens into the user's Connection, all or nothing."""
    now = timezone.now()
    requested = " ".join(backend.get_scope())
    with transaction.atomic():
        # One Zywave identity per portal user: drop a stale link to an earlier identity.
        UserSocialAuth.objects.filter(user=user, provider=backend.name).exclude(uid=uid).delete()
        social, _ = UserSocialAuth.objects.get_or_create(
            provider=backend.name, uid=uid, defaults={"user": user, "id_key": id_key}
        )
        if social.user_id != user.pk:  # linked by someone else between the check and here
            raise IdentityInUse(backend)
        connection = Connection.objects.select_for_update(no_key=True).filter(user=user).first()
        reconnect = connection is not None
        if connection is None:
            connection = Connection(user=user)
        replaced = connection.refresh_token if connection.is_connected else None
        connection.zywave_subject = uid
        connection.zywave_email = str(response.get("email") or "")[:254]
        connection.zywave_name = str(response.get("name") or "")[:255]
        connection.status = Connection.Status.ACTIVE
        connection.requested_scopes = requested
        # A response without `scope` granted what was asked (RFC 6749 §5.1).
        connection.granted_scopes = requested
        connection.clear_tokens()
        connection.set_tokens(response, now=now)
        connection.authorized_at = now
        connection.reauth_notified_at = None
        connection.deadline_warned_at = None
        connection.last_error = ""
        connection.last_error_at = None
        connection.last_error_permanent = False
        connection.save()
        kind = ConnectionEvent.Kind.RECONNECTED if reconnect else ConnectionEvent.Kind.CONNECTED
        connection.record(
            kind,
            actor=user,
            scopes=connection.granted_scopes,
            access_token=connection.access_token_fingerprint,
            refresh_token=connection.refresh_token_fingerprint,
        )
        if reconnect:
            webhooks.announce_connection(connection, "connection.reconnected")
        if replaced and replaced != connection.refresh_token:
            # The old grant would otherwise stay live at Zywave for the rest of its 30 days.
            # After commit: never hold the row lock for an HTTP call, and only once the new
            # tokens are safely stored.
            transaction.on_commit(partial(revoke_replaced_grant, connection.pk, replaced, uid))
        missing = connection.missing_scopes()
        if missing:
            connection.record(ConnectionEvent.Kind.SCOPES_REDUCED, actor=user, missing=missing)
            log.warning(
                "Zywave granted fewer scopes than asked for connection %s: missing %s",
                connection.pk,
                " ".join(missing),
            )
    return {"social": social, "user": user, "connection_id": connection.pk}
