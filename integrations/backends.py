"""The social-auth backend for Zywave's identity server (IdentityServer, OAuth 2.0 + OIDC)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote_plus

from django.conf import settings
from social_core.backends.oauth import BaseOAuth2PKCE
from social_core.exceptions import AuthInputError


class ZywaveOAuth2(BaseOAuth2PKCE):
    """Authorization code + PKCE S256 against `{ZYWAVE_AUTH_URL}/connect/*`.

    Tokens never reach `UserSocialAuth.extra_data`: `extra_data` returns nothing and the
    pipeline's `store_connection` writes them into the encrypted `Connection` instead.
    """

    name = "zywave"
    ID_KEY = "sub"
    # The redirect URI registered at Zywave must match exactly: no state appended to it.
    REDIRECT_STATE = False
    STATE_PARAMETER = True
    ACCESS_TOKEN_METHOD = "POST"
    REVOKE_TOKEN_METHOD = "POST"
    SCOPE_SEPARATOR = " "
    EXTRA_DATA = None

    def authorization_url(self) -> str:
        return f"{settings.ZYWAVE_AUTH_URL}/connect/authorize"

    def access_token_url(self) -> str:
        return f"{settings.ZYWAVE_AUTH_URL}/connect/token"

    def revoke_token_url(self, token: str, uid: str) -> str:
        return f"{settings.ZYWAVE_AUTH_URL}/connect/revocation"

    def userinfo_url(self) -> str:
        return f"{settings.ZYWAVE_AUTH_URL}/connect/userinfo"

    def validate_state(self) -> str | None:
        """`state` first, then RFC 9207's `iss`: an authorization response that names an issuer
        must name Zywave's (a mix-up defence), before the code is exchanged. Zywave may omit it.
        """
        state = super().validate_state()
        issuer = self.data.get("iss")
        if issuer is not None and issuer != settings.ZYWAVE_AUTH_URL.rstrip("/"):
            raise AuthInputError(self, parameter="iss", code="invalid_parameter", stage="callback")
        return state

    # --- Client authentication: ZYWAVE_TOKEN_AUTH_METHOD, the same for code exchange, refresh
    # and revocation (docs/zywave.md §1) ---------------------------------------------------

    def use_basic_auth(self) -> bool:
        return bool(settings.ZYWAVE_TOKEN_AUTH_METHOD == "client_secret_basic")

    def basic_credentials(self) -> tuple[str, str]:
        """RFC 6749 §2.3.1: id and secret are form-encoded before they go into Basic."""
        client_id, client_secret = self.get_key_and_secret()
        return quote_plus(client_id), quote_plus(client_secret)

    def auth_complete_credentials(self) -> tuple[str, str] | None:
        return self.basic_credentials() if self.use_basic_auth() else None

    def refresh_token_params(self, token: str, *args: Any, **kwargs: Any) -> dict[str, str]:
        params = super().refresh_token_params(token, *args, **kwargs)
        if self.use_basic_auth():
            params.pop("client_secret", None)
            params.pop("client_id", None)
        return params

    def refresh_token_auth(self) -> Any:
        return self.basic_credentials() if self.use_basic_auth() else None

    def get_scope(self) -> list[str]:
        return list(settings.ZYWAVE_SCOPES)

    def setting(self, name: str, default: Any = None) -> Any:
        if name in {"REQUESTS_TIMEOUT", "URLOPEN_TIMEOUT"}:
            return settings.ZYWAVE_HTTP_TIMEOUT
        return super().setting(name, default)

    def auth_extra_arguments(self) -> dict[str, str]:
        # Zywave's own clients send a nonce with openid; harmless without it.
        extra = dict(super().auth_extra_arguments())
        if "openid" in self.get_scope():
            extra["nonce"] = self.strategy.random_string(32)
        return extra

    def user_data(self, access_token: str, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        """Who logged in at Zywave: the identity server's userinfo (`sub`, email, name)."""
        data = self.get_json(
            self.userinfo_url(),
            headers={"Authorization": f"Bearer {access_token}"},
            stage="user_info",
        )
        if not isinstance(data, dict):
            return None
        return {
            key: data[key]
            for key in ("sub", "email", "name", "given_name", "family_name")
            if key in data
        }

    def get_user_details(self, response: dict[str, Any]) -> dict[str, Any]:
        return {
            "username": response.get("email") or response.get("sub", ""),
            "email": response.get("email", ""),
            "fullname": response.get("name", ""),
            "first_name": response.get("given_name", ""),
            "last_name": response.get("family_name", ""),
        }

    def extra_data(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {}

    def revoke_token(self, token: str, uid: str) -> bool:
        """RFC 7009 revocation, the client authenticated as ZYWAVE_TOKEN_AUTH_METHOD says.

        social-core's version also copies the parameters into the query string, which would put
        the client secret into URLs and server logs.
        """
        client_id, client_secret = self.get_key_and_secret()
        data = {"token": token}
        if not self.use_basic_auth():
            data.update(client_id=client_id, client_secret=client_secret)
        response = self.request(
            self.revoke_token_url(token, uid),
            method="POST",
            data=data,
            auth=self.auth_complete_credentials(),
            stage="disconnect",
        )
        return response.status_code == 200
