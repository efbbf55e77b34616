"""The identity server: django-oauth-toolkit with Zywave's behaviour (docs/zywave.md §1).

What the toolkit does not do the way Zywave does is adjusted in SandboxValidator: scopes
registered per client, exact redirect URIs, S256-only PKCE, one-time or reusable refresh
tokens chosen at run time, an absolute refresh lifetime counted from the login, reuse
detection that revokes the grant, and lifetimes measured on the sandbox's time-travel clock.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from datetime import timedelta
from typing import Any
from urllib.parse import unquote_plus

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.hashers import check_password
from django.db import DatabaseError, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from jwcrypto import jwk, jwt
from jwcrypto.common import base64url_decode
from oauth2_provider.exceptions import OAuthToolkitError
from oauth2_provider.models import (
    get_access_token_model,
    get_application_model,
    get_grant_model,
    get_refresh_token_model,
)
from oauth2_provider.oauth2_validators import OAuth2Validator
from oauth2_provider.views import AuthorizationView, RevokeTokenView, TokenView
from oauthlib.oauth2.rfc6749 import errors

from sandbox.zywave.models import Authorization, ClientPolicy, RuntimeSetting, sandbox_now

log = logging.getLogger(__name__)

AccessToken = get_access_token_model()
RefreshToken = get_refresh_token_model()
Application = get_application_model()
Grant = get_grant_model()


def checksum(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_access_token(token: str) -> Any:
    """The live access token for a bearer value, or None (unknown, revoked or expired)."""
    access = (
        AccessToken.objects.select_related("user").filter(token_checksum=checksum(token)).first()
    )
    if access is None or access.user is None or access.expires <= sandbox_now():
        return None
    return access


def issuer(request: HttpRequest) -> str:
    return issuer_for(f"{request.scheme}://{request.get_host()}")


def issuer_for(origin: str) -> str:
    """SANDBOX_ISSUER (or its runtime override), else the origin the request came to."""
    configured = str(RuntimeSetting.get("issuer") or "")
    return configured.rstrip("/") or origin


def journal_issued(token: dict[str, Any]) -> None:
    """Append the tokens of one token response to SANDBOX_ISSUED_TOKENS_FILE, when set."""
    path = settings.SANDBOX_ISSUED_TOKENS_FILE
    issued = [str(token[k]) for k in ("access_token", "refresh_token", "id_token") if token.get(k)]
    if path and issued:
        with open(path, "a", encoding="utf-8") as journal:  # O_APPEND: whole lines per write
            journal.write("".join(f"{value}\n" for value in issued))


class SandboxValidator(OAuth2Validator):
    # The userinfo / id_token claims and the scope that releases each.
    oidc_claim_scope = {
        "sub": "openid",
        "email": "email",
        "name": "profile",
        "given_name": "profile",
        "family_name": "profile",
    }

    def validate_scopes(self, client_id, scopes, client, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        """Only the scopes registered for this client (more answers invalid_scope)."""
        policy = ClientPolicy.objects.filter(application=client).first()
        known = set(settings.ZYWAVE_SCOPES)
        return policy is not None and policy.allows(scopes) and set(scopes) <= known

    def get_default_scopes(self, client_id, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        policy = ClientPolicy.objects.filter(application=request.client).first()
        return policy.allowed_scopes.split() if policy else ["openid"]

    def validate_redirect_uri(self, client_id, redirect_uri, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        # IdentityServer compares redirect URIs as exact strings: no loopback port leeway.
        return redirect_uri in request.client.redirect_uris.split()

    def confirm_redirect_uri(self, client_id, code, redirect_uri, client, *args, **kwargs):  # type: ignore[no-untyped-def]
        grant = Grant.objects.filter(code=code, application=client).first()
        if grant is None or grant.redirect_uri != redirect_uri:
            # RFC 6749 §5.2: a redirect URI that differs from the authorize request's is an
            # invalid_grant (oauthlib would say invalid_request).
            raise errors.InvalidGrantError(
                description="redirect_uri does not match the authorization request",
                request=kwargs.get("request"),
            )
        return True

    def is_pkce_required(self, client_id, request):  # type: ignore[no-untyped-def]
        return True

    def rotate_refresh_token(self, request):  # type: ignore[no-untyped-def]
        return RuntimeSetting.get("refresh_mode") != "reuse"

    def validate_refresh_token(self, refresh_token, client, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        """Accept a refresh token only if it is live, its grant is live and within the absolute
        lifetime; a rotated token presented again is reuse, which revokes the whole grant
        (when reuse_revokes_grant) unless it is within the grace period."""
        rt = (
            RefreshToken.objects.filter(token_checksum=checksum(refresh_token))
            .select_related("access_token")
            .order_by("-id")
            .first()
        )
        if rt is None or rt.application_id != client.pk:
            return False
        grant = Authorization.objects.filter(family=rt.token_family).first()
        if grant is None or grant.revoked_at is not None:
            return False
        if sandbox_now() >= grant.expires_at():
            return False
        if rt.revoked is not None and not self.within_grace(rt):
            if RuntimeSetting.get("reuse_revokes_grant"):
                grant.revoke()
            return False
        if rt.revoked is None and rt.access_token is None:
            return False  # its access token was revoked out of band
        request.user = rt.user
        request.refresh_token = refresh_token
        request.refresh_token_instance = rt
        return True

    @staticmethod
    def within_grace(rt: Any) -> bool:
        grace = int(RuntimeSetting.get("refresh_grace_seconds"))
        return (
            grace > 0
            and rt.revoked > timezone.now() - timedelta(seconds=grace)
            and AccessToken.objects.filter(source_refresh_token=rt).exists()
        )

    def save_bearer_token(self, token, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        """Store the tokens, closing the race between two refreshes of one refresh token.

        The transaction begins IMMEDIATE (settings.DATABASES), so it holds SQLite's write lock
        from its first statement: refreshes of the same token run one after the other, and
        whoever comes second finds the token rotated and gets invalid_grant.
        """
        lifetime = int(RuntimeSetting.get("access_token_lifetime"))
        token["expires_in"] = lifetime
        if "offline_access" not in str(token.get("scope", "")).split():
            # Refresh tokens need the offline_access scope (docs/zywave.md §2).
            token.pop("refresh_token", None)
        with transaction.atomic():
            rt = getattr(request, "refresh_token_instance", None)
            if request.grant_type == "refresh_token" and rt is not None:
                fresh = RefreshToken.objects.filter(pk=rt.pk).first()
                if fresh is None or (fresh.revoked is not None and not self.within_grace(fresh)):
                    raise errors.InvalidGrantError(
                        description="The refresh token has already been used", request=request
                    )
                request.refresh_token_instance = fresh
            self._save_bearer_token(token, request, *args, **kwargs)
            # Expiry on the sandbox's clock, so that time travel expires tokens.
            AccessToken.objects.filter(token_checksum=checksum(token["access_token"])).update(
                expires=sandbox_now() + timedelta(seconds=lifetime)
            )
        journal_issued(token)

    def _create_refresh_token(
        self, request, refresh_token_code, access_token, previous_refresh_token
    ):  # type: ignore[no-untyped-def]
        refresh_token = super()._create_refresh_token(
            request, refresh_token_code, access_token, previous_refresh_token
        )
        if previous_refresh_token is None:
            Authorization.objects.get_or_create(
                family=refresh_token.token_family,
                defaults={
                    "user": request.user,
                    "application": request.client,
                    "authorized_at": sandbox_now(),
                },
            )
        return refresh_token

    def validate_bearer_token(self, token, scopes, request):  # type: ignore[no-untyped-def]
        valid = super().validate_bearer_token(token, scopes, request)
        access = getattr(request, "access_token", None)
        return bool(valid and access is not None and access.expires > sandbox_now())

    def get_oidc_issuer_endpoint(self, request):  # type: ignore[no-untyped-def]
        # `request` is oauthlib's here (or Django's, from the userinfo view).
        if isinstance(request, HttpRequest):
            return issuer(request)
        # The toolkit hands oauthlib the WSGI environ as its headers.
        headers = request.headers or {}
        scheme = headers.get("wsgi.url_scheme", "http")
        return issuer_for(f"{scheme}://{headers.get('HTTP_HOST', 'localhost')}")

    def finalize_id_token(self, id_token, token, token_handler, request):  # type: ignore[no-untyped-def]
        signed = super().finalize_id_token(id_token, token, token_handler, request)
        fault = str(RuntimeSetting.get("id_token_fault"))
        return (
            signed if fault == "none" else spoiled_id_token(signed, fault, request.client.jwk_key)
        )

    def get_additional_claims(self, request):  # type: ignore[no-untyped-def]
        user = request.user
        return {
            "email": user.email,
            "name": f"{user.first_name} {user.last_name}".strip(),
            "given_name": user.first_name,
            "family_name": user.last_name,
        }


def spoiled_id_token(signed: str, fault: str, key: Any) -> str:
    """`signed` with the one thing wrong that the `id_token_fault` setting names, signed again
    with the sandbox's key (a throwaway key of the same `kid` for `bad_signature`)."""
    header, claims = (json.loads(base64url_decode(part)) for part in signed.split(".")[:2])
    now = int(time.time())
    claims.update(
        {
            "wrong_nonce": {"nonce": "not-the-nonce-the-client-sent"},
            "wrong_aud": {"aud": "another-client"},
            "wrong_iss": {"iss": "https://impostor.invalid"},
            "wrong_sub": {"sub": "someone-else"},
            "expired": {"iat": now - 4200, "exp": now - 3600},
        }.get(fault, {})
    )
    if fault == "bad_signature":
        key = jwk.JWK.generate(kty="RSA", size=2048)
    spoiled = jwt.JWT(header=json.dumps(header), claims=json.dumps(claims))
    spoiled.make_signed_token(key)
    return str(spoiled.serialize())


def oauth_error(error: str, description: str, status: int = 400) -> JsonResponse:
    return JsonResponse({"error": error, "error_description": description}, status=status)


class SandboxAuthorizationView(AuthorizationView):
    """The authorize endpoint: login (LOGIN_URL), then the consent page, always."""

    template_name = "oauth2_provider/authorize.html"

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        # Like IdentityServer, check the request before asking anyone to log in: a bad
        # client or redirect URI gets an error page, a bad scope or PKCE a redirect.
        if request.method == "GET" and not request.user.is_authenticated:
            self.oauth2_data: dict[str, Any] = {}
            try:
                self.validate_authorization_request(request)
            except OAuthToolkitError as error:
                return self.error_response(error, application=None)
        return super().dispatch(request, *args, **kwargs)

    def validate_authorization_request(self, request):  # type: ignore[no-untyped-def]
        scopes, credentials = super().validate_authorization_request(request)
        if credentials.get("code_challenge_method") != "S256":
            # Zywave's clients always send S256; "plain" (or none) is refused before login.
            raise OAuthToolkitError(
                error=errors.InvalidRequestError(
                    description="code_challenge_method must be S256",
                    state=credentials.get("state"),
                ),
                redirect_uri=credentials.get("redirect_uri"),
            )
        return scopes, credentials

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["user_email"] = getattr(self.request.user, "email", "")
        return context


_token_view = TokenView.as_view()


@csrf_exempt
@require_POST
def token(request: HttpRequest) -> HttpResponse:
    """/connect/token. Never a 500: a database conflict (two refreshes racing) is an
    invalid_grant, which is what the loser of that race deserves anyway."""
    refused = wrong_client_authentication(request)
    if refused is not None:
        return refused
    try:
        response = _token_view(request)
    except DatabaseError:
        log.warning("token request lost a database race", exc_info=True)
        return oauth_error("invalid_grant", "The grant changed while it was being used")
    if response.status_code in {400, 401}:
        # oauthlib leaves error_description out of most errors; Zywave's clients get one.
        try:
            body = json.loads(response.content)
        except ValueError:
            return response
        if isinstance(body, dict) and "error" in body and "error_description" not in body:
            body["error_description"] = ERROR_DESCRIPTIONS.get(body["error"], body["error"])
            response.content = json.dumps(body).encode()
            response["Content-Length"] = str(len(response.content))
    return response


def wrong_client_authentication(request: HttpRequest) -> HttpResponse | None:
    """With `token_auth_method` set, a client that authenticates the other way is refused
    (401 invalid_client), as a strict identity server does; "any" accepts both."""
    method = RuntimeSetting.get("token_auth_method")
    if method == "any":
        return None
    basic = request.headers.get("Authorization", "")[:6].lower() == "basic "
    in_body = "client_secret" in request.POST
    if (method == "client_secret_basic" and (in_body or not basic)) or (
        method == "client_secret_post" and (basic or not in_body)
    ):
        return oauth_error(
            "invalid_client", f"This client must authenticate with {method}", status=401
        )
    return None


@csrf_exempt
@require_POST
def revocation(request: HttpRequest) -> HttpResponse:
    """/connect/revocation (RFC 7009), with the same client-authentication rule as the token
    endpoint."""
    refused = wrong_client_authentication(request)
    return refused if refused is not None else _revoke_view(request)


_revoke_view = RevokeTokenView.as_view()


ERROR_DESCRIPTIONS = {
    "invalid_grant": "The grant (code or refresh token) is invalid, expired, revoked or used",
    "invalid_client": "Client authentication failed",
    "invalid_request": "The request is missing a parameter or is malformed",
    "invalid_scope": "The scope is not registered for this client",
    "unsupported_grant_type": "Only authorization_code and refresh_token are supported",
    "unauthorized_client": "The client may not use this grant type",
}


def authenticate_client(request: HttpRequest) -> Any:
    """The client of an introspection request, by HTTP Basic or form fields; None if unknown
    or the secret is wrong."""
    client_id = request.POST.get("client_id", "")
    secret = request.POST.get("client_secret", "")
    auth = request.headers.get("Authorization", "")
    if auth[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(auth[6:]).decode()
            client_id, secret = (unquote_plus(part) for part in decoded.split(":", 1))
        except (ValueError, UnicodeDecodeError):
            return None
    client = Application.objects.filter(client_id=client_id).first()
    if client is None or not secret or not check_password(secret, client.client_secret):
        return None
    return client


@csrf_exempt
@require_POST
def introspect(request: HttpRequest) -> HttpResponse:
    """/connect/introspect (RFC 7662): is this access or refresh token active?"""
    client = authenticate_client(request)
    if client is None:
        return oauth_error("invalid_client", "Client authentication failed", status=401)
    value = request.POST.get("token", "")
    access = load_access_token(value)
    if access is not None and access.application_id == client.pk:
        return JsonResponse(
            {
                "active": True,
                "token_type": "access_token",
                "scope": access.scope,
                "client_id": client.client_id,
                "sub": str(access.user_id),
                "exp": int(access.expires.timestamp()),
            }
        )
    rt = (
        RefreshToken.objects.filter(token_checksum=checksum(value), application=client)
        .order_by("-id")
        .first()
    )
    if rt is not None and rt.revoked is None:
        grant = Authorization.objects.filter(family=rt.token_family).first()
        if grant is not None and grant.revoked_at is None and sandbox_now() < grant.expires_at():
            return JsonResponse(
                {
                    "active": True,
                    "token_type": "refresh_token",
                    "client_id": client.client_id,
                    "sub": str(rt.user_id),
                    "exp": int(grant.expires_at().timestamp()),
                }
            )
    return JsonResponse({"active": False})


def discovery(request: HttpRequest) -> JsonResponse:
    """/.well-known/openid-configuration at Zywave's paths."""
    origin = issuer(request)
    base = f"{request.scheme}://{request.get_host()}"
    return JsonResponse(
        {
            "issuer": origin,
            "authorization_endpoint": f"{base}/connect/authorize",
            "token_endpoint": f"{base}/connect/token",
            "userinfo_endpoint": f"{base}/connect/userinfo",
            "revocation_endpoint": f"{base}/connect/revocation",
            "introspection_endpoint": f"{base}/connect/introspect",
            "jwks_uri": f"{base}/.well-known/openid-configuration/jwks",
            "scopes_supported": list(settings.ZYWAVE_SCOPES),
            "claims_supported": ["sub", "email", "name", "given_name", "family_name"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": (
                ["client_secret_post", "client_secret_basic"]
                if RuntimeSetting.get("token_auth_method") == "any"
                else [RuntimeSetting.get("token_auth_method")]
            ),
        }
    )


class LoginView(auth_views.LoginView):
    """The sandbox's own sign-in page (inputs `username` and `password`)."""

    template_name = "zywave/login.html"
    redirect_authenticated_user = False


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "zywave/home.html", {"issuer": issuer(request)})
