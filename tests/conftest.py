"""The cast every test draws on, built in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from django.contrib.auth.models import User

if TYPE_CHECKING:
    from tests.sandboxserver import Sandbox

pytest_plugins = ["tests.sandboxserver"]


@pytest.fixture
def staff(db) -> User:  # type: ignore[no-untyped-def]
    """An agency staff member: an ordinary portal user, no admin rights."""
    return User.objects.create_user("dana", "dana@agency.test", "dana-password")


@pytest.fixture
def other_staff(db) -> User:  # type: ignore[no-untyped-def]
    return User.objects.create_user("omar", "omar@agency.test", "omar-password")


@pytest.fixture
def admin_user(db) -> User:  # type: ignore[no-untyped-def]
    return User.objects.create_superuser("root", "root@agency.test", "root-password")


@pytest.fixture
def zywave(sandbox_clean: Sandbox, settings):  # type: ignore[no-untyped-def]
    """The portal pointed at the running sandbox, as it would be pointed at Zywave."""
    settings.ZYWAVE_AUTH_URL = sandbox_clean.url
    settings.ZYWAVE_API_URL = sandbox_clean.url
    settings.ZYWAVE_HTTP_TIMEOUT = (2.0, 3.0)
    return sandbox_clean
