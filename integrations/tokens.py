"""Token lifetime: a valid access token on demand, one refresh at a time, revocation.

Zywave's refresh tokens are probably one-time use (docs/zywave.md §1): refreshing the same
refresh token twice ends the grant. So every refresh happens under a lock on the connection's
row, after re-reading it, and only when it is still needed; the rotated tokens are saved in the
same transaction.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from social_core.exceptions import (
    AuthCredentialError,
    AuthProviderError,
    SocialAuthBaseException,
)
from social_django.models import UserSocialAuth
from social_django.utils import load_backend, load_strategy

from . import metrics, ratelimit, webhooks
from .client import ZywaveClient
from .fields import token_fingerprint
from .models import Connection, ConnectionEvent

log = logging.getLogger(__name__)

# A token handed out must stay valid at least this long: long enough for a page of API calls.
# For tokens that live less than 20 minutes, a quarter of their lifetime instead (see
# `margin_for`): a fixed 5 minutes would make a 5-minute token never fresh.
MARGIN = timedelta(minutes=5)


class ReauthRequired(Exception):
    """The grant has ended (revoked, reused, past its deadline, or no refresh token)."""


class RefreshFailed(Exception):
    """A transient refresh failure (timeout, 5xx, 429): the old tokens are kept; retry later."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def zywave_backend() -> Any:
    """The social-auth backend, outside a request (workers, commands, admin actions)."""
    return load_backend(load_strategy(), "zywave", redirect_uri=None)


def margin_for(connection: Connection) -> timedelta:
    """How long a token handed out must still be valid: the smaller of MARGIN and a quarter
    of the token's lifetime, so a token is refreshed about once per 3/4 of its life however
    short Zywave makes it (with a fixed margin, 5-second tokens were refreshed on every call:
    1,326 refreshes in 180 s where about 36 were needed)."""
    lifetime = connection.access_token_lifetime
    if not lifetime:
        return MARGIN
    return min(MARGIN, timedelta(seconds=lifetime / 4))


def _fresh(connection: Connection, margin: timedelta) -> bool:
    expires = connection.access_token_expires_at
    return (
        bool(connection.access_token)
        and expires is not None
        and (expires - timezone.now() > margin)
    )


def access_token_for(connection: Connection, margin: timedelta | None = None) -> str:
    """An access token valid for at least `margin` (default `margin_for(connection)`),
    refreshing first when needed."""
    if connection.status != Connection.Status.ACTIVE:
        raise ReauthRequired(f"connection {connection.pk} is {connection.status}")
    if _fresh(connection, margin if margin is not None else margin_for(connection)):
        assert connection.access_token is not None
        return connection.access_token
    return refresh(connection, margin=margin)


def refresh(
    connection: Connection, refused: str | None = None, margin: timedelta | None = None
) -> str:
    """Refresh the connection's tokens unless someone else already did.

    Lock the row, re-read it, and call Zywave only if the token is still the one that was
    `refused` (after a 401) or still expiring. Concurrent callers in other threads, processes or
    machines wait on the lock and then find the new token. The outcome is saved before any
    exception leaves, so a failure is recorded even though the caller sees an error.
    """
    outcome: Exception | None = None
    with transaction.atomic():
        locked = Connection.objects.select_for_update(no_key=True).get(pk=connection.pk)
        if locked.status != Connection.Status.ACTIVE:
            outcome = ReauthRequired(f"connection {locked.pk} is {locked.status}")
        elif (refused is None or locked.access_token != refused) and _fresh(
            locked, margin if margin is not None else margin_for(locked)
        ):
            pass  # refreshed by someone else while we waited for the lock
        elif not locked.refresh_token:
            end_grant(locked, "Zywave gave no refresh token (offline_access missing)")
            outcome = ReauthRequired("no refresh token")
        else:
            outcome = _call_token_endpoint(locked)
    _copy_tokens(locked, connection)
    if outcome is not None:
        raise outcome
    assert connection.access_token is not None
    return connection.access_token


def _call_token_endpoint(locked: Connection) -> Exception | None:
    """One refresh_token grant; the caller holds the row lock. Returns the failure, if any."""
    assert locked.refresh_token is not None
    used = token_fingerprint(locked.refresh_token)
    try:
        # The token endpoint's own budget (`ratelimit`): a refresh never waits behind syncs.
        ratelimit.wait_for_slot(token=True)
    except ratelimit.Busy as exc:
        return RefreshFailed("the token endpoint's rate budget is spent", exc.wait)
    try:
        response = zywave_backend().refresh_token(locked.refresh_token)
    except AuthCredentialError as exc:
        # invalid_grant: revoked, reused after rotation, or past the 30-day deadline.
        end_grant(locked, f"Zywave ended the grant ({exc.provider_code or exc.code})")
        metrics.token_refreshed("invalid_grant")
        return ReauthRequired("invalid_grant")
    except SocialAuthBaseException as exc:
        retry_after = _seconds(getattr(exc, "retry_after", None))
        reason = f"token refresh failed ({exc.code})"
        if isinstance(exc, AuthProviderError) and exc.code == "timeout":
            # The request may have reached Zywave and rotated the token with the answer lost:
            # we keep the stored token; if it was consumed, the next attempt gets invalid_grant
            # and ends in reauth_required instead of looping.
            log.warning("Refresh of connection %s timed out; answer may be lost", locked.pk)
        locked.record_refresh_failure(reason, refresh_token=used)
        metrics.token_refreshed("failed")
        return RefreshFailed(reason, retry_after)
    locked.set_tokens(response)
    locked.last_refreshed_at = timezone.now()
    locked.last_error, locked.last_error_at, locked.last_error_permanent = "", None, False
    locked.save()
    locked.record(
        ConnectionEvent.Kind.REFRESHED,
        used=used,
        access_token=locked.access_token_fingerprint,
        refresh_token=locked.refresh_token_fingerprint,
    )
    metrics.token_refreshed("succeeded")
    return None


def _seconds(value: Any) -> float | None:
    from .client import parse_retry_after

    return parse_retry_after(str(value)) if value else None


def _copy_tokens(source: Connection, target: Connection) -> None:
    for name in (
        "status",
        "access_token",
        "refresh_token",
        "access_token_fingerprint",
        "refresh_token_fingerprint",
        "access_token_expires_at",
        "access_token_lifetime",
        "granted_scopes",
        "last_refreshed_at",
        "last_error",
        "last_error_at",
        "last_error_permanent",
    ):
        setattr(target, name, getattr(source, name))


def client_for(connection: Connection) -> ZywaveClient:
    """An API client acting as this connection under its chosen profile."""
    from .profiles import refetch_profile_token

    client = ZywaveClient(
        connection=connection,
        token=access_token_for,
        refresh=lambda conn, refused: refresh(conn, refused=refused),
        profile_header=connection.profile_header(),
    )
    if settings.ZYWAVE_PROFILE_HEADER == "token":
        client.refetch_profile = lambda: refetch_profile_token(connection, client)
    return client


def revoke_tokens(connection: Connection) -> tuple[bool, str]:
    """Revoke the refresh token (which ends the grant) and the access token at Zywave (RFC 7009).

    Returns whether Zywave confirmed and, if not, a short non-secret reason.
    """
    backend = zywave_backend()
    for token in (connection.refresh_token, connection.access_token):
        if not token:
            continue
        try:
            revoked = backend.revoke_token(token, connection.zywave_subject)
        except SocialAuthBaseException as exc:
            log.warning("Revocation failed for connection %s: %s", connection.pk, exc.code)
            return False, f"Zywave did not answer the revocation ({exc.code})"
        if not revoked:
            log.warning("Revocation refused for connection %s", connection.pk)
            return False, "Zywave refused the revocation"
    return True, ""


def end_grant(connection: Connection, reason: str) -> None:
    """The grant ended: mark the connection (`mark_reauth_required`) and, the first time,
    announce `connection.reauth_required` to its owner's webhooks, in the same transaction."""
    if connection.mark_reauth_required(reason):
        metrics.reauth_required()
        webhooks.announce_connection(connection, "connection.reauth_required", reason=reason)


def disconnect(connection: Connection, actor: Any, revoked: bool, reason: str = "") -> None:
    """Forget the tokens, the profile and the mirror (`Connection.disconnect`; the caller
    revoked at Zywave first) and announce `connection.disconnected`, in one transaction."""
    connection.disconnect(actor=actor, revoked=revoked, reason=reason)
    webhooks.announce_connection(connection, "connection.disconnected", reason=reason or None)


def revoke_and_disconnect(connection: Connection, actor: Any) -> tuple[bool, str]:
    """Revoke the tokens at Zywave, then forget them, under the connection's row lock.

    The lock closes a race with a refresh running at the same moment: either the refresh
    finishes first (and its new tokens are the ones revoked here), or it waits and then finds
    the connection disconnected. Without it, a refresh could store a fresh grant that nobody
    revokes. The lock is held for the revocation calls, each bounded by the HTTP timeout.
    """
    with transaction.atomic():
        locked = Connection.objects.select_for_update(no_key=True).get(pk=connection.pk)
        revoked, reason = revoke_tokens(locked)
        disconnect(locked, actor=actor, revoked=revoked, reason=reason)
        # The identity link goes too, so the same Zywave identity can be linked again, by this
        # person or another (a shared agency login, a person who moved desks).
        UserSocialAuth.objects.filter(user_id=locked.user_id, provider="zywave").delete()
    connection.refresh_from_db()
    return revoked, reason
