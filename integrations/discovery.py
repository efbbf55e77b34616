"""Zywave's OpenID configuration: its endpoints and the keys that sign its ID tokens, read from
discovery and cached, with the documented `/connect/*` paths as the fallback (docs/zywave.md §1).

Discovery is read only when someone connects or a token is refreshed (and by an operator's
explicit first-contact check): never at start-up, in a system check or while a page renders.
Every request goes through the social-auth backend (`backend.get_json`), which owns the timeout
and turns network failures into social-core's named exceptions.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import jwt
from django.conf import settings
from django.core.cache import cache
from social_core.exceptions import AuthException, ErrorStage, SocialAuthBaseException

log = logging.getLogger(__name__)

# The documented paths (authorize, token) and IdentityServer's usual ones (the rest).
DOCUMENTED = {
    "authorization_endpoint": "/connect/authorize",
    "token_endpoint": "/connect/token",
    "userinfo_endpoint": "/connect/userinfo",
    "revocation_endpoint": "/connect/revocation",
    "jwks_uri": "/.well-known/openid-configuration/jwks",
}
DISCOVERY_PATH = "/.well-known/openid-configuration"
DISCOVERY_TTL = 3600  # a document read and accepted
FALLBACK_TTL = 60  # discovery unreachable: the documented paths, and discovery again in a minute
JWKS_TTL = 600
# Discovery and JWKS are small documents: a hung identity server must not hold a connect or a
# refresh for the whole ZYWAVE_READ_TIMEOUT.
TIMEOUT_CAP = 5.0


class IdentityUnverified(AuthException):
    """Zywave's answer could not be verified: an ID token that fails validation, or a discovery
    document that names another issuer. Nothing is stored; the connect page says so."""

    default_code = "invalid_claim"  # social-core's nearest reason; ours is `code` below

    def __init__(self, backend: Any, reason: str, *, stage: ErrorStage) -> None:
        super().__init__(backend, reason, code="identity_unverified", stage=stage)


def issuer() -> str:
    return str(settings.ZYWAVE_AUTH_URL).rstrip("/")


def timeout() -> float:
    return min(TIMEOUT_CAP, *settings.ZYWAVE_HTTP_TIMEOUT)


def documented() -> dict[str, str]:
    return {name: f"{issuer()}{path}" for name, path in DOCUMENTED.items()}


def endpoints(backend: Any, *, fetch: bool, stage: ErrorStage = "callback") -> dict[str, str]:
    """The identity server's endpoints: the cached configuration; else, with `fetch`, the
    discovery document read now (the documented paths when it is unreachable); else the
    documented paths. A document naming another issuer raises IdentityUnverified and is not
    cached, so fixing ZYWAVE_AUTH_URL (or Zywave's answer) takes effect at once."""
    key = f"zywave:discovery:{issuer()}"
    cached = cache.get(key)
    if isinstance(cached, dict):
        return cached
    if not fetch:
        return documented()
    try:
        document = backend.get_json(f"{issuer()}{DISCOVERY_PATH}", timeout=timeout(), stage=stage)
    except SocialAuthBaseException as exc:  # timeout, refused, 4xx/5xx, not JSON
        log.warning("Zywave discovery failed (%s): using the documented /connect/* paths", exc.code)
        found = documented()
        cache.set(key, found, FALLBACK_TTL)
        return found
    found = read_document(backend, document, stage)
    cache.set(key, found, DISCOVERY_TTL)
    return found


def read_document(backend: Any, document: Any, stage: ErrorStage) -> dict[str, str]:
    """The endpoints a discovery document names. Its issuer must be ZYWAVE_AUTH_URL exactly
    (OpenID Connect Discovery §4.3). An endpoint on another origin is ignored for the documented
    path: the client secret goes nowhere else, and the page's CSP allows only that origin."""
    named = document.get("issuer") if isinstance(document, dict) else None
    if named != issuer():
        log.error(
            "Zywave's discovery document names the issuer %r, not ZYWAVE_AUTH_URL %r: refused",
            named,
            issuer(),
        )
        raise IdentityUnverified(backend, "discovery names another issuer", stage=stage)
    found = documented()
    for name in DOCUMENTED:
        url = document.get(name)
        if isinstance(url, str) and same_origin(url, issuer()):
            found[name] = url
        elif url is not None:
            log.warning("Zywave's discovery puts %s on another origin: using the documented", name)
    return found


def same_origin(url: str, other: str) -> bool:
    a, b = urlsplit(url), urlsplit(other)
    return (a.scheme.lower(), a.netloc.lower()) == (b.scheme.lower(), b.netloc.lower())


def signing_key(backend: Any, jwks_uri: str, kid: str | None) -> jwt.PyJWK:
    """The public key named `kid` in Zywave's JWKS (cached). A `kid` the cached set lacks reads
    the JWKS again, once: Zywave has rotated its keys. A token without `kid` needs a set with
    exactly one signing key."""
    key = f"zywave:jwks:{jwks_uri}"
    keys = cache.get(key)
    fetched = False
    if not isinstance(keys, dict):
        keys, fetched = read_jwks(backend, jwks_uri), True
        cache.set(key, keys, JWKS_TTL)
    found = find_key(keys, kid)
    if found is None and not fetched:
        keys = read_jwks(backend, jwks_uri)
        cache.set(key, keys, JWKS_TTL)
        found = find_key(keys, kid)
    if found is None:
        raise IdentityUnverified(backend, f"no signing key {kid!r}", stage="token_validation")
    return found


def read_jwks(backend: Any, jwks_uri: str) -> dict[str, Any]:
    keys = backend.get_json(jwks_uri, timeout=timeout(), stage="token_validation")
    if not isinstance(keys, dict):
        raise IdentityUnverified(backend, "the JWKS is not a JSON object", stage="token_validation")
    return keys


def find_key(keys: dict[str, Any], kid: str | None) -> jwt.PyJWK | None:
    try:
        usable = [k for k in jwt.PyJWKSet.from_dict(keys) if k.public_key_use in (None, "sig")]
    except jwt.PyJWTError:
        return None  # no key this library can use
    if kid is None:
        return usable[0] if len(usable) == 1 else None
    return next((k for k in usable if k.key_id == kid), None)
