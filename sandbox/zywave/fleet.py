"""A fleet of sandbox users created in bulk, each already connected to a client: what 10,000
people going through the login and consent pages would leave behind, in seconds.

Each user gets an agency of its own, one type-B profile on it (the active one), a small book
(`accounts` accounts and `contacts` contacts spread over them) and a live grant for the client:
an access token, a refresh token of a new token family and its `Authorization`, exactly the
rows the token endpoint writes for an authorization-code exchange. So the tokens work against
the API, refresh, rotate and are revoked like any others.

Written with bulk inserts and ids chosen up front (max + 1 of each table): the transaction
begins IMMEDIATE (settings.DATABASES), so no other request can take those ids meanwhile.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta
from typing import Any

from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Max, Model
from oauth2_provider.models import (
    get_access_token_model,
    get_application_model,
    get_refresh_token_model,
    set_token_value,
)
from oauthlib.common import generate_token

from sandbox.keys import hex64_token
from sandbox.zywave.models import (
    Account,
    Agency,
    Authorization,
    ClientPolicy,
    Contact,
    Person,
    Profile,
    RuntimeSetting,
    sandbox_now,
)
from sandbox.zywave.oauth import journal_issued

AccessToken = get_access_token_model()
RefreshToken = get_refresh_token_model()
Application = get_application_model()

PASSWORD = "sandbox"  # the demo users' password: a fleet user can log in too
MAX_USERS = 20_000
MAX_ACCOUNTS = 100
MAX_CONTACTS = 1000
BATCH = 2000


class FleetError(ValueError):
    pass


def next_id(model: type[Model]) -> int:
    return int(model._default_manager.aggregate(top=Max("pk"))["top"] or 0) + 1


def create_fleet(
    users: int,
    accounts: int = 10,
    contacts: int = 20,
    client_id: str = "portal-dev",
    prefix: str = "fleet",
    scope: str | None = None,
    first: int = 1,
) -> list[dict[str, Any]]:
    """Create `users` users `{prefix}{n:05d}@example.com`, n from `first` (a fleet made in
    several calls goes on numbering), as the module says; returns, per user, what the client
    would hold after connecting: the token response's fields, the subject (`sub`) and the
    profile with its ProfileToken."""
    if not 1 <= users <= MAX_USERS:
        raise FleetError(f"users must be between 1 and {MAX_USERS}")
    if not 0 <= accounts <= MAX_ACCOUNTS or not 0 <= contacts <= MAX_CONTACTS:
        raise FleetError(f"accounts: 0 to {MAX_ACCOUNTS}, contacts: 0 to {MAX_CONTACTS}")
    if contacts and not accounts:
        raise FleetError("contacts hang under accounts: give some accounts")
    if not prefix.isalnum():
        raise FleetError("prefix: letters and digits only")
    client = Application.objects.filter(client_id=client_id).first()
    if client is None:
        raise FleetError(f"No client {client_id!r}")
    policy = ClientPolicy.objects.filter(application=client).first()
    granted = scope if scope is not None else (policy.allowed_scopes if policy else "openid")
    if policy is None or not policy.allows(granted.split()):
        raise FleetError(f"The client may not be granted {granted!r}")
    if first < 1:
        raise FleetError("first must be 1 or more")
    numbers = range(first, first + users)
    emails = [f"{prefix}{n:05d}@example.com" for n in numbers]
    now = sandbox_now()
    lifetime = int(RuntimeSetting.get("access_token_lifetime"))
    password = make_password(PASSWORD)  # once: every fleet user has the same
    answers = []
    with transaction.atomic():
        if User.objects.filter(username__in=emails[:1] + emails[-1:]).exists():
            raise FleetError(f"Users {emails[0]} or {emails[-1]} exist already")
        user_id, agency_id, profile_id = next_id(User), next_id(Agency), next_id(Profile)
        account_id, contact_id = next_id(Account), next_id(Contact)
        access_id, refresh_id = next_id(AccessToken), next_id(RefreshToken)
        new_users = [
            User(
                id=user_id + n,
                username=email,
                email=email,
                first_name="Fleet",
                last_name=f"{number:05d}",
                password=password,
            )
            for n, (number, email) in enumerate(zip(numbers, emails, strict=True))
        ]
        User.objects.bulk_create(new_users, batch_size=BATCH)
        agencies = [
            Agency(id=agency_id + n, name=f"Fleet Agency {number:05d}")
            for n, number in enumerate(numbers)
        ]
        Agency.objects.bulk_create(agencies, batch_size=BATCH)
        profiles = [
            Profile(
                id=profile_id + n,
                type_code="B",
                name=f"{agencies[n].name} ({user.first_name} {user.last_name})",
                agency=agencies[n],
                user_id=user.pk,
                broker_id=str(agency_id + n),
                email=user.email,
                given_name=user.first_name,
                surname=user.last_name,
                token=secrets.token_urlsafe(32),
            )
            for n, user in enumerate(new_users)
        ]
        Profile.objects.bulk_create(profiles, batch_size=BATCH)
        Person.objects.bulk_create(
            [Person(user_id=user_id + n, active_profile_id=profile_id + n) for n in range(users)],
            batch_size=BATCH,
        )
        create_books(agencies, accounts, contacts, account_id, contact_id, now)

        access_tokens, refresh_tokens, grants = [], [], []
        for n, user in enumerate(new_users):
            access = AccessToken(
                id=access_id + n,
                user_id=user.pk,
                application=client,
                scope=granted,
                expires=now + timedelta(seconds=lifetime),
            )
            answer: dict[str, Any] = {
                "email": user.email,
                "subject": str(user.pk),  # the id_token's and userinfo's `sub`
                "access_token": generate_token(),
                "token_type": "Bearer",
                "expires_in": lifetime,
                "scope": granted,
                "profile": {
                    "id": str(profiles[n].pk),
                    "type_code": "B",
                    "name": profiles[n].name,
                    "organization_id": str(agencies[n].pk),
                    "organization_name": agencies[n].name,
                    "profile_token": profiles[n].token,
                },
            }
            set_token_value(access, answer["access_token"])
            access_tokens.append(access)
            if "offline_access" in granted.split():
                family = uuid.uuid4()
                refresh = RefreshToken(
                    id=refresh_id + n,
                    user_id=user.pk,
                    application=client,
                    access_token_id=access.pk,
                    token_family=family,
                )
                answer["refresh_token"] = hex64_token()
                set_token_value(refresh, answer["refresh_token"])
                refresh_tokens.append(refresh)
                grants.append(
                    Authorization(
                        family=family, user_id=user.pk, application=client, authorized_at=now
                    )
                )
            answers.append(answer)
        AccessToken.objects.bulk_create(access_tokens, batch_size=BATCH)
        RefreshToken.objects.bulk_create(refresh_tokens, batch_size=BATCH)
        Authorization.objects.bulk_create(grants, batch_size=BATCH)
    for answer in answers:  # the tokens journaled as the token endpoint journals them
        journal_issued(answer)
    return answers


def create_books(
    agencies: list[Agency],
    accounts: int,
    contacts: int,
    account_id: int,
    contact_id: int,
    now: Any,
) -> None:
    """`accounts` accounts per agency and `contacts` contacts spread over them, a batch at a
    time (a fleet of 10,000 holds 300,000 records)."""
    batch: list[Account] = []
    people: list[Contact] = []
    for n, agency in enumerate(agencies):
        first = account_id + n * accounts
        for k in range(accounts):
            batch.append(
                Account(
                    id=first + k,
                    agency_id=agency.pk,
                    name=f"{agency.name} Account {k + 1:03d}",
                    city="Fleetville",
                    state="WI",
                    updated=now - timedelta(days=k + 1),
                )
            )
        for k in range(contacts):
            people.append(
                Contact(
                    id=contact_id + n * contacts + k,
                    account_id=first + k % accounts,
                    agency_id=agency.pk,
                    first_name="Pat",
                    last_name=f"{agency.name} {k + 1:03d}",
                    updated=now - timedelta(days=k + 1),
                )
            )
        if len(people) + len(batch) >= 5 * BATCH:
            Account.objects.bulk_create(batch, batch_size=BATCH)
            Contact.objects.bulk_create(people, batch_size=BATCH)
            batch, people = [], []
    Account.objects.bulk_create(batch, batch_size=BATCH)
    Contact.objects.bulk_create(people, batch_size=BATCH)
