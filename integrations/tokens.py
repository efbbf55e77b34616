"""Token lifetime: revocation at Zywave (refresh and locking arrive with the API client)."""

from __future__ import annotations

import logging

from social_core.exceptions import SocialAuthBaseException
from social_django.utils import load_backend, load_strategy

from .models import Connection

log = logging.getLogger(__name__)


def zywave_backend():  # type: ignore[no-untyped-def]
    """The social-auth backend, outside a request (workers, commands, admin actions)."""
    return load_backend(load_strategy(), "zywave", redirect_uri=None)


def revoke_tokens(connection: Connection) -> tuple[bool, str]:
    """Revoke the refresh token (which ends the grant) and the access token at Zywave (RFC 7009).

    Returns whether Zywave confirmed and, if not, a short non-secret reason.
    """
    backend = zywave_backend()
    tokens = [t for t in (connection.refresh_token, connection.access_token) if t]
    if not tokens:
        return True, ""
    for token in tokens:
        try:
            revoked = backend.revoke_token(token, connection.zywave_subject)
        except SocialAuthBaseException as exc:
            log.warning("Revocation failed for connection %s: %s", connection.pk, exc.code)
            return False, f"Zywave did not answer the revocation ({exc.code})"
        except Exception as exc:  # noqa: BLE001  (any transport failure: we still delete locally)
            log.warning(
                "Revocation failed for connection %s: %s", connection.pk, type(exc).__name__
            )
            return False, f"Zywave could not be reached ({type(exc).__name__})"
        if not revoked:
            log.warning("Revocation refused for connection %s", connection.pk)
            return False, "Zywave refused the revocation"
    return True, ""
