"""The social-auth backend for Zywave's identity server (IdentityServer, OAuth 2.0 + OIDC)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, NoReturn
from urllib.parse import quote_plus

import jwt
from django.conf import settings
from django.utils.crypto import constant_time_compare
from social_core.backends.oauth import BaseOAuth2PKCE
from social_core.exceptions import AuthInputError

from . import discovery
from .discovery import IdentityUnverified

log = logging.getLogger(__name__)

# Zywave signs with RS256 (docs/zywave.md §1); nothing else is accepted, "none" least of all.
ID_TOKEN_ALGORITHMS = ["RS256"]
CLOCK_SKEW = 60  # seconds of leeway on exp and iat


class ZywaveOAuth2(BaseOAuth2PKCE):
    """Authorization code + PKCE S256 against the endpoints of Zywave's discovery document (the
    documented `{ZYWAVE_AUTH_URL}/connect/*` when it is unreachable), with the `id_token`
    validated when `openid` is granted.

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
    _discovered: dict[str, str] | None = None

    # --- Endpoints: discovery is read when a connect begins, before the code exchange and
    # before a refresh (docs/zywave.md §1); everything else uses what is cached. ---------

    def endpoint(self, name: str) -> str:
        """What this backend discovered, else the cached configuration, else the documented
        path. Never reads discovery itself."""
        found = self._discovered or discovery.endpoints(self, fetch=False)
        return found[name]

    def authorization_url(self) -> str:
        # A refused discovery document is refused at the callback, with the connect error page
        # (the view that starts the flow has none); meanwhile the documented path.
        with contextlib.suppress(IdentityUnverified):
            self._discovered = discovery.endpoints(self, fetch=True, stage="begin")
        return self.endpoint("authorization_endpoint")

    def access_token_url(self) -> str:
        """The code exchange and every refresh (social-core's refresh_token_url) come here."""
        self._discovered = discovery.endpoints(self, fetch=True, stage="token_exchange")
        return self.endpoint("token_endpoint")

    def revoke_token_url(self, token: str, uid: str) -> str:
        # Disconnects may run in a process that never connected anyone: read discovery (cached)
        # rather than trust a per-process empty cache. A refused document: the documented path.
        with contextlib.suppress(IdentityUnverified):
            self._discovered = discovery.endpoints(self, fetch=True, stage="disconnect")
        return self.endpoint("revocation_endpoint")

    def userinfo_url(self) -> str:
        return self.endpoint("userinfo_endpoint")

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

    def auth_params(self, state: str | None = None) -> dict[str, str]:
        """With `openid`, a nonce, kept in this state's transaction in the session (beside the
        PKCE verifier, and consumed with it by validate_state) for the ID token to echo."""
        params = dict(super().auth_params(state))
        if "openid" in self.get_scope() and state is not None:
            nonce = self.strategy.random_string(32)
            key = self.transaction_key(state)
            self.strategy.session_set(key, {**self.strategy.session_get(key), "nonce": nonce})
            params["nonce"] = nonce
        return params

    def user_data(self, access_token: str, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        """Who logged in at Zywave: the identity server's userinfo (`sub`, email, name), vouched
        for by the `id_token` when `openid` was granted. It runs before the pipeline, so a
        refused token stores nothing."""
        data = self.get_json(
            self.userinfo_url(),
            headers={"Authorization": f"Bearer {access_token}"},
            stage="user_info",
        )
        if not isinstance(data, dict):
            return None
        response = kwargs.get("response")
        if isinstance(response, dict) and "openid" in self.granted_scopes(response):
            # Popped: the pipeline never sees the ID token, so nothing can store it.
            self.validate_id_token(response.pop("id_token", None), data.get("sub"))
        return {
            key: data[key]
            for key in ("sub", "email", "name", "given_name", "family_name")
            if key in data
        }

    def granted_scopes(self, response: dict[str, Any]) -> list[str]:
        """The token response's `scope`; missing, what was asked (RFC 6749 §5.1)."""
        scope = response.get("scope")
        if isinstance(scope, str):
            return scope.split()
        return [str(s) for s in scope] if isinstance(scope, list) else self.get_scope()

    def validate_id_token(self, id_token: Any, userinfo_sub: Any) -> None:
        """OpenID Connect Core §3.1.3.7: signed (RS256) by a key of Zywave's JWKS, `iss` is
        ZYWAVE_AUTH_URL, `aud` (and `azp`, if present) our client id, not expired, `nonce` the
        one this flow sent, and `sub` the same person as userinfo's. Raises IdentityUnverified.
        """
        if not isinstance(id_token, str) or not id_token:
            self.refuse_id_token("no id_token although openid was granted")
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError:
            self.refuse_id_token("not a JWT")
        if header.get("alg") not in ID_TOKEN_ALGORITHMS:
            self.refuse_id_token(f"signed with {header.get('alg')!r}")
        key = discovery.signing_key(self, self.endpoint("jwks_uri"), header.get("kid"))
        client_id, _secret = self.get_key_and_secret()
        try:
            claims = jwt.decode(
                id_token,
                key.key,
                algorithms=ID_TOKEN_ALGORITHMS,
                audience=client_id,
                issuer=discovery.issuer(),
                leeway=CLOCK_SKEW,
                options={"require": ["iss", "aud", "exp", "iat", "sub"]},
            )
        except jwt.PyJWTError as exc:  # signature, iss, aud, exp, iat
            self.refuse_id_token(str(exc))
        if "azp" in claims and claims["azp"] != client_id:
            self.refuse_id_token("azp is another client")
        sent = (self._oauth2_transaction or {}).get("nonce")
        nonce = claims.get("nonce")
        if not (
            isinstance(sent, str) and isinstance(nonce, str) and constant_time_compare(sent, nonce)
        ):
            self.refuse_id_token("nonce is not the one this sign-in sent")
        if userinfo_sub is None or str(claims["sub"]) != str(userinfo_sub):
            self.refuse_id_token("sub differs from userinfo's")

    def refuse_id_token(self, reason: str) -> NoReturn:
        log.warning("Zywave's id_token was refused: %s", reason)
        raise IdentityUnverified(self, f"id_token: {reason}", stage="token_validation")

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
