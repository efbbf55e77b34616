"""API keys: issued once, stored as a hash, checked on every request, limited per key.

A key reads `zwk_<prefix>_<secret>`: the prefix (8 characters, kept in clear) tells keys apart
on pages and in the admin; the secret (32 characters, about 190 bits) is never stored. The
database keeps the SHA-256 of the whole key: a key is random, not a password, so a slow hash
buys nothing, and a stolen table gives no key. The `zwk_` start lets secret scanners and the
log filter recognise a key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import time
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from ..models import ApiKey, ConnectionEvent

KEY_PATTERN = re.compile(r"zwk_([a-z0-9]{8})_([A-Za-z0-9]{32})")
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits
# last_used_at is written at most this often per key: a busy key costs no write per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
SCOPES = [choice.value for choice in ApiKey.Scope]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def issue(
    owner: Any,
    name: str,
    scopes: list[str],
    expires_at: datetime | None = None,
    actor: Any = None,
) -> tuple[ApiKey, str]:
    """A new key for `owner`: the row, and the key itself (shown once, then only its hash)."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ValueError(f"scopes must be among {', '.join(SCOPES)}, not {unknown or 'none'}")
    name = name.strip()
    if not name:
        raise ValueError("a key needs a name")
    with transaction.atomic():
        while True:
            prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(8))
            if not ApiKey.objects.filter(prefix=prefix).exists():
                break
        secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(32))
        key = f"zwk_{prefix}_{secret}"
        api_key = ApiKey.objects.create(
            owner=owner,
            name=name[:100],
            prefix=prefix,
            hashed_key=hash_key(key),
            scopes=[scope for scope in SCOPES if scope in scopes],
            expires_at=expires_at,
        )
        api_key.audit(ConnectionEvent.Kind.API_KEY_CREATED, actor, scopes=api_key.scopes)
    return api_key, key


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Bearer zwk_...`. Each refusal says which of missing, malformed,
    unknown, revoked or expired it was (only the holder of a key learns it was revoked)."""

    def authenticate(self, request: Request) -> tuple[Any, ApiKey] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None  # NotAuthenticated: 401 with the challenge below
        scheme, _, credentials = header.partition(" ")
        match = KEY_PATTERN.fullmatch(credentials.strip())
        if scheme.lower() != "bearer" or match is None:
            raise exceptions.AuthenticationFailed(
                "The Authorization header must be `Bearer zwk_...`, an API key of this portal."
            )
        key = credentials.strip()
        # One query: the key, its owner, the owner's connection and chosen profile (every
        # endpoint starts from that connection: `views.connection_of`). No ORDER BY.
        found = list(
            ApiKey.objects.select_related(
                "owner", "owner__zywave_connection", "owner__zywave_connection__chosen_profile"
            )
            .filter(prefix=match.group(1))
            .order_by()[:1]
        )
        api_key = found[0] if found else None
        if api_key is None or not hmac.compare_digest(api_key.hashed_key, hash_key(key)):
            raise exceptions.AuthenticationFailed("This API key is not known.")
        if api_key.revoked_at is not None:
            raise exceptions.AuthenticationFailed("This API key was revoked.")
        if api_key.is_expired:
            raise exceptions.AuthenticationFailed("This API key has expired.")
        if not api_key.owner.is_active:
            raise exceptions.AuthenticationFailed("The owner of this API key is deactivated.")
        now = timezone.now()
        if api_key.last_used_at is None or api_key.last_used_at < now - LAST_USED_RESOLUTION:
            # Conditional, so concurrent requests of one key write once per minute at most.
            ApiKey.objects.filter(pk=api_key.pk, last_used_at=api_key.last_used_at).update(
                last_used_at=now
            )
            api_key.last_used_at = now
        return api_key.owner, api_key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class HasScope(BasePermission):
    """The key holds the scope the view asks for this method (`view.scopes`, method -> scope;
    a view without one is refused: forgetting to declare a scope must not open it)."""

    message = "This API key lacks the scope this request needs."

    def has_permission(self, request: Request, view: Any) -> bool:
        api_key = request.auth
        if not isinstance(api_key, ApiKey):
            raise exceptions.NotAuthenticated("An API key is required: `Authorization: Bearer`.")
        method = request.method or "GET"
        if not hasattr(view, method.lower()):
            return True  # no handler: REST framework answers 405 next, with Allow
        needed = scope_for(view, method)
        if needed is None:
            return False
        if needed not in api_key.scopes:
            self.message = f"This API key lacks the `{needed}` scope this request needs."
            return False
        return True


def scope_for(view: Any, method: str) -> str | None:
    """The scope `view.scopes` asks for `method`: HEAD as GET unless named, `*` for the rest."""
    scopes = getattr(view, "scopes", {})
    method = method.upper()
    if method == "HEAD" and "HEAD" not in scopes:
        method = "GET"
    return scopes.get(method, scopes.get("*"))


class KeyThrottle(BaseThrottle):
    """API_RATE_LIMIT requests per minute per key, counted in the shared cache (Redis in
    production: every web process draws on the one count). A fixed one-minute window: one
    INCR per request, against a list of timestamps per request in DRF's own throttles."""

    window = 60

    def allow_request(self, request: Request, view: Any) -> bool:
        api_key = request.auth
        if not isinstance(api_key, ApiKey):
            return True
        now = time.time()
        window_start = int(now // self.window) * self.window
        bucket = f"api-throttle:{api_key.prefix}:{window_start}"
        counter = getattr(cache, "count", None)  # the shared Redis cache: one round trip
        if counter is not None:
            count = counter(bucket, self.window + 5)
        else:
            cache.add(bucket, 0, timeout=self.window + 5)
            try:
                count = cache.incr(bucket)
            except ValueError:  # expired between add and incr
                cache.add(bucket, 1, timeout=self.window + 5)
                count = 1
        self._wait = window_start + self.window - now
        return count <= settings.API_RATE_LIMIT

    def wait(self) -> float | None:
        return getattr(self, "_wait", None)
