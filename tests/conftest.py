"""The cast every test draws on, built in one place.

Five people, each as a `User` fixture (named for the role) and as a `Person` fixture (named for
the person: a test client already logged in as them):

    user fixture    person   who
    staff           dana     the agency staff member whose connection the tests build
    other_staff     omar     a second staff member: "another user's object" for every view
    admin_user      root     a superuser: the admin
    support_user    sam      staff in the read-only `support` group (created by a migration)
    outsider        olga     a portal user who has never connected Zywave

Everyone's email is `{username}@agency.test` and password `{username}-password`.

A Zywave connection comes from one factory, `connection(user, sandbox=None, **fields)`: built in
the database by default, linked through the real sandbox when given it. Everything else (mirror
rows, sync runs, events) is built inline by the test that needs it.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone

from integrations.fields import token_fingerprint
from integrations.models import Connection, Profile
from integrations.profiles import choose_profile, refresh_profiles
from integrations.tokens import client_for
from tests.netguard import sitecustomize as netguard

if TYPE_CHECKING:  # imported by pytest as a plugin, below: importing it first stops its rewrite
    from collections.abc import Iterator
    from pathlib import Path

    from tests.integrations.workers import Worker
    from tests.sandboxserver import Sandbox

pytest_plugins = ["tests.sandboxserver"]

# Loopback only (tests/netguard/sitecustomize.py): in this process, and through PYTHONPATH in
# every child, also when pytest runs without tests.services (`make check`).
netguard.install()
if netguard.HERE not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [netguard.HERE, os.environ.get("PYTHONPATH")])
    )

# What the portal asks Zywave for, as a connection built in the database holds it.
SCOPES = "api.accounts:read api.profiles email offline_access openid profile"


def member(username: str, *, admin: bool = False, support: bool = False) -> User:
    """A cast member's portal login. `admin`: a superuser; `support`: staff in `support`."""
    email, password = f"{username}@agency.test", f"{username}-password"
    if admin:
        return User.objects.create_superuser(username, email, password)
    user = User.objects.create_user(username, email, password, is_staff=support)
    if support:
        user.groups.add(Group.objects.get(name="support"))
    return user


class Person(Client):
    """A cast member at their browser: Django's test client, logged in as `user`.

    Extra arguments are the client's (`enforce_csrf_checks=True`, ...); `Person(user)` again is
    a second browser of the same person, with a session of its own.
    """

    def __init__(self, user: User, **client_options: Any) -> None:
        super().__init__(**client_options)
        self.user = user
        self.force_login(user)


def connection(
    user: User,
    sandbox: Sandbox | None = None,
    *,
    profile: bool = True,
    zywave_user: str = "agent@example.com",
    **fields: Any,
) -> Connection:
    """`user`'s Zywave connection: active, able to refresh, a profile chosen unless
    `profile=False`; then `fields` are set on it and saved.

    Without `sandbox`, built in the database: tokens and a profile Zywave never issued, each
    marked with the username (`access-dana`, profile "Agency dana" of "Org dana"), for tests of
    what the portal does with what it holds. With `sandbox` (the `zywave` fixture), linked
    through the sandbox over HTTP as `zywave_user` (agent@example.com has three profiles,
    solo@example.com one): real tokens, the profile list read from Zywave and its first profile
    chosen, for tests that call Zywave.
    """
    conn = (
        _built(user, profile) if sandbox is None else _linked(user, sandbox, zywave_user, profile)
    )
    if fields:
        for name, value in fields.items():
            setattr(conn, name, value)
        conn.save()
    return conn


def _built(user: User, profile: bool) -> Connection:
    name, now = user.username, timezone.now()
    conn = Connection(
        user=user,
        zywave_subject=f"sub-{name}",
        zywave_email=f"{name}@zywave.test",
        zywave_name=f"Name {name}",
        requested_scopes=SCOPES,
        authorized_at=now - timedelta(days=1),
        profiles_listed_at=now,  # the list is current: the picker does not ask Zywave again
    )
    tokens = {"access_token": f"access-{name}", "refresh_token": f"refresh-{name}"}
    conn.set_tokens({**tokens, "expires_in": 3600, "scope": SCOPES}, now)
    conn.save()
    if profile:
        conn.chosen_profile = Profile.objects.create(
            connection=conn,
            type_code="B",
            zywave_id=f"P{name}",
            name=f"Agency {name}",
            organization=f"Org {name}",
            profile_token=f"ptoken-{name}",
            profile_token_fingerprint=token_fingerprint(f"ptoken-{name}"),
        )
        conn.save(update_fields=["chosen_profile"])
    return conn


def _linked(user: User, sandbox: Sandbox, zywave_user: str, profile: bool) -> Connection:
    conn = Connection(user=user, zywave_subject=zywave_user, zywave_email=zywave_user)
    conn.set_tokens(sandbox.obtain_tokens(username=zywave_user))
    conn.authorized_at = timezone.now()
    conn.save()
    if profile:
        refresh_profiles(conn, client_for(conn))
        first = sandbox.profiles(zywave_user)[0]["id"]
        choose_profile(conn, client_for(conn), first, actor=None)
        conn.refresh_from_db()
    return conn


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    """Test passwords are hashed with a fast hasher: the real one (PBKDF2, a million rounds)
    costs most of a second per user made or login, which the cast pays in nearly every test.
    The portal itself keeps Django's default hashers (settings.py names none)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def fresh_rate_budget() -> Iterator[None]:
    """Each test starts with Zywave's shared rate budget unspent and no app-wide pause: a 429
    one test provokes pauses the whole app (as it should), which must not reach the next."""
    from integrations import ratelimit

    ratelimit.forget()
    yield
    ratelimit.forget()


# --- The cast as users ---------------------------------------------------------------------


@pytest.fixture
def staff(db: None) -> User:
    """An agency staff member: an ordinary portal user, no admin rights."""
    return member("dana")


@pytest.fixture
def other_staff(db: None) -> User:
    return member("omar")


@pytest.fixture
def admin_user(db: None) -> User:
    return member("root", admin=True)


@pytest.fixture
def support_user(db: None) -> User:
    return member("sam", support=True)


@pytest.fixture
def outsider(db: None) -> User:
    return member("olga")


# --- The cast at their browsers ------------------------------------------------------------


@pytest.fixture
def dana(staff: User) -> Person:
    return Person(staff)


@pytest.fixture
def omar(other_staff: User) -> Person:
    return Person(other_staff)


@pytest.fixture
def root(admin_user: User) -> Person:
    return Person(admin_user)


@pytest.fixture
def sam(support_user: User) -> Person:
    return Person(support_user)


@pytest.fixture
def olga(outsider: User) -> Person:
    return Person(outsider)


# --- Zywave ----------------------------------------------------------------------------------


@pytest.fixture
def zywave(sandbox_clean: Sandbox, settings: Any) -> Sandbox:
    """The portal pointed at the running sandbox, as it would be pointed at Zywave."""
    settings.ZYWAVE_AUTH_URL = sandbox_clean.url
    settings.ZYWAVE_API_URL = sandbox_clean.url
    settings.ZYWAVE_HTTP_TIMEOUT = (2.0, 3.0)
    return sandbox_clean


@pytest.fixture
def worker(zywave: Sandbox, tmp_path: Path) -> Iterator[Worker]:
    """A real Celery worker process on the run's Redis, against the sandbox (for tests marked
    `django_db(transaction=True)`, so that what they commit is what the worker reads)."""
    from tests.integrations.workers import Worker, use_test_broker

    use_test_broker()
    started = Worker(zywave, tmp_path / "worker.log").start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def fresh_discovery() -> Iterator[None]:
    """No discovery document or JWKS cached by an earlier test, and none left for a later one."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()
