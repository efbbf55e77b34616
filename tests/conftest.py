"""The cast every test draws on, built in one place."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

# pytest_plugins = ["tests.sandboxserver"]


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
