"""An agency's system calling the API: a key of a cast member's, sent as `Bearer`."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth.models import User
from django.test import Client

from integrations.api.keys import SCOPES, issue


class System(Client):
    """Django's test client sending `Authorization: Bearer <key>` on every request; `key`
    None sends no header. `.json(response)` checks the answer is JSON of its declared kind."""

    def __init__(self, key: str | None) -> None:
        super().__init__()
        self.key = key

    def request(self, **request: Any) -> Any:  # type: ignore[override]
        if self.key is not None:
            request.setdefault("HTTP_AUTHORIZATION", f"Bearer {self.key}")
        return super().request(**request)

    def post_json(self, path: str, body: Any, **extra: Any) -> Any:
        return self.post(path, json.dumps(body), content_type="application/json", **extra)


def system_of(user: User, *scopes: str, **options: Any) -> System:
    """A system holding a new key of `user`'s with `scopes` (all of them when none given)."""
    _key, secret = issue(user, "test system", list(scopes or SCOPES), **options)
    return System(secret)


def problem(response: Any, status: int) -> dict[str, Any]:
    """The problem+json body of an error answer, after checking its status and shape."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"] == "application/problem+json"
    body = json.loads(response.content)
    assert body["status"] == status and body["type"].startswith("urn:zywave-portal:problem:")
    assert body["title"] and body["detail"]
    return body
