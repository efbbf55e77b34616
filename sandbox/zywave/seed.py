"""Deterministic demo data: the design's users, client and profiles, up to 250,000 accounts, and
every resource of the registry (zywave.resources) that hangs under them.

The same (accounts, seed, day) always produces the same rows with the same ids, so a test or a
demo can be re-seeded to a known state; only dates that people read relative to today (a
policy's term) depend on the day, and a reset re-seeds with the baseline's day. Seeding replaces
the data it owns (agencies, profiles, every resource) and updates users and the demo client in
place. What the rows look like is demo.py's; this module writes them.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from operator import itemgetter
from typing import Any

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.utils import timezone
from oauth2_provider.models import get_application_model

from sandbox.scopes import PORTAL_SCOPES
from sandbox.zywave.demo import AGENCIES, USERS, SeedPlan
from sandbox.zywave.models import Agency, Baseline, ClientPolicy, Person, Profile
from sandbox.zywave.resources import RESOURCES, Resource, resource_named

PASSWORD = "sandbox"
PORTAL_CLIENT_ID = "portal-dev"
PORTAL_CLIENT_SECRET = "portal-dev-secret"
PORTAL_REDIRECT_URIS = [
    "http://127.0.0.1:8000/oauth/complete/zywave/",
    "http://localhost:8000/oauth/complete/zywave/",
]
BATCH = 5000


def seed(
    accounts: int = 10_000,
    seed_value: int = 1,
    today: date | None = None,
    resources: Sequence[Resource] = RESOURCES,
) -> dict[str, int]:
    """Replace the sandbox's data with a deterministic set of `accounts` accounts and what the
    registry seeds with them, around `today` (default: the real date). Returns the count of
    each resource's rows.

    `resources` leaves some out (the seed test compares with and without one); the data of
    every resource is deleted all the same."""
    today = today or timezone.now().date()
    rng = random.Random(seed_value)
    with transaction.atomic():
        for resource in reversed(RESOURCES):  # children first
            resource.model._default_manager.all().delete()
        Person.objects.all().update(active_profile=None)
        Profile.objects.all().delete()
        Agency.objects.all().delete()

        users = {}
        for email, given, surname in USERS:
            user, _ = User.objects.update_or_create(
                username=email,
                defaults={"email": email, "first_name": given, "last_name": surname},
            )
            user.set_password(PASSWORD)
            user.save()
            users[email] = user
            Person.objects.get_or_create(user=user)

        for agency_id, agency_name, profile_id, email, _share in AGENCIES:
            agency = Agency.objects.create(id=agency_id, name=agency_name)
            user = users[email]
            Profile.objects.create(
                id=profile_id,
                type_code="B",
                name=f"{agency_name} ({user.first_name} {user.last_name})",
                agency=agency,
                user=user,
                broker_id=str(agency_id * 10 + 7),
                email=email,
                given_name=user.first_name,
                surname=user.last_name,
                token=base64.urlsafe_b64encode(rng.randbytes(24)).decode(),
            )
        for user in users.values():
            first = Profile.objects.filter(user=user).order_by("id").first()
            Person.objects.filter(user=user).update(active_profile=first)

        ensure_portal_client()
        plan = SeedPlan(accounts=accounts, today=today, rows=seeded_rows)
        counts = seed_resources(resources, plan, rng, seed_value)
        Baseline.objects.update_or_create(
            pk=1,
            defaults={
                "accounts": accounts,
                "seed_value": seed_value,
                "seed_date": today,
                "clients": client_snapshot(),
                "dirty": False,
            },
        )
    return counts


def seed_resources(
    resources: Sequence[Resource], plan: SeedPlan, rng: random.Random, seed_value: int
) -> dict[str, int]:
    """Run each resource's row generator, parents first, and insert what it yields in batches.

    Every generator draws from a stream of its own, `Random("{seed}:{name}")` (a str seed is
    deterministic across runs and machines, unlike hash()), so adding a resource never changes
    another's data. The exception is the accounts' generator: it also yields the contacts and
    draws from the seed's original stream, after the profile tokens, as everything did before
    the registry; that stream is kept exactly as it was."""
    wanted = {resource.name for resource in resources}
    counts = {resource.name: 0 for resource in resources}
    for resource in resources:
        if resource.seed is None:
            continue
        stream = (
            rng if resource.name == "accounts" else random.Random(f"{seed_value}:{resource.name}")
        )
        batches: dict[str, list[dict[str, Any]]] = {}
        for name, row in resource.seed(stream, plan):
            if name not in wanted:
                continue
            batches.setdefault(name, []).append(row)
            counts[name] += 1
            if len(batches[name]) >= BATCH:
                flush(batches)
        flush(batches)
    return counts


def flush(batches: dict[str, list[dict[str, Any]]]) -> None:
    """Insert and empty every batch (foreign keys are checked at commit, so any order works)."""
    for name, rows in batches.items():
        insert(resource_named(name), rows)
        rows.clear()


def db_adapters() -> dict[str, Callable[[Any], Any]]:
    ops = connection.ops
    return {
        "datetime": ops.adapt_datetimefield_value,
        "date": ops.adapt_datefield_value,
        "decimal": ops.adapt_decimalfield_value,
        "list": json.dumps,
    }


def insert(resource: Resource, rows: list[dict[str, Any]]) -> None:
    """INSERT rows straight through the cursor: at a million rows, building model instances for
    bulk_create costs more than the database does."""
    if not rows:
        return
    columns = resource.stored_columns
    if set(rows[0]) != set(columns):
        raise ValueError(
            f"{resource.name} rows need exactly {sorted(columns)}, got {sorted(rows[0])}"
        )
    model = resource.model
    adapters = db_adapters()
    adapted = [
        (index, adapters[resource.kinds[name]])
        for index, name in enumerate(columns)
        if resource.kinds[name] in adapters
    ]
    fields = ", ".join(
        str(getattr(model._meta.get_field(name), "column", name)) for name in columns
    )
    marks = ", ".join(["%s"] * len(columns))
    pick = itemgetter(*columns)
    values = []
    for row in rows:
        value = list(pick(row))
        for index, adapt in adapted:
            value[index] = adapt(value[index])
        values.append(value)
    with connection.cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO {model._meta.db_table} ({fields}) VALUES ({marks})",  # noqa: S608
            values,
        )


def seeded_rows(name: str, fields: list[str]) -> Iterator[dict[str, Any]]:
    """The rows of a resource seeded earlier, by id, read BATCH at a time (a generator of a
    child resource reads its parents this way, in constant memory)."""
    model = resource_named(name).model
    last = 0
    while True:
        chunk = list(
            model._default_manager.filter(pk__gt=last).order_by("pk").values("pk", *fields)[:BATCH]
        )
        if not chunk:
            return
        last = chunk[-1]["pk"]
        yield from chunk


CLIENT_FIELDS = ("client_id", "client_secret", "name", "redirect_uris")


def client_snapshot() -> list[dict[str, Any]]:
    """The registered clients as they are now (secrets as stored: hashed)."""
    Application = get_application_model()
    policies = dict(ClientPolicy.objects.values_list("application_id", "allowed_scopes"))
    return [
        {
            **{name: getattr(client, name) for name in CLIENT_FIELDS},
            "scopes": policies.get(client.pk),
        }
        for client in Application.objects.order_by("id")
    ]


def restore_clients(snapshot: list[dict[str, Any]]) -> None:
    """Put the registered clients back as `client_snapshot()` saw them: clients registered
    since are removed (with their tokens), changed ones restored. A stored secret is already
    hashed, and django-oauth-toolkit does not hash a hashed value again."""
    Application = get_application_model()
    wanted = {row["client_id"]: row for row in snapshot}
    Application.objects.exclude(client_id__in=wanted).delete()
    for client_id, row in wanted.items():
        client = Application.objects.filter(client_id=client_id).first() or Application(
            client_id=client_id,
            client_type=Application.CLIENT_CONFIDENTIAL,
            authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
            algorithm=Application.RS256_ALGORITHM,
        )
        for name in CLIENT_FIELDS:
            setattr(client, name, row[name])
        client.save()
        if row["scopes"] is None:
            ClientPolicy.objects.filter(application=client).delete()
        else:
            ClientPolicy.objects.update_or_create(
                application=client, defaults={"allowed_scopes": row["scopes"]}
            )


def ensure_portal_client() -> None:
    Application = get_application_model()
    client = Application.objects.filter(client_id=PORTAL_CLIENT_ID).first() or Application(
        client_id=PORTAL_CLIENT_ID
    )
    client.name = "Zywave portal (local development)"
    client.client_type = Application.CLIENT_CONFIDENTIAL
    client.authorization_grant_type = Application.GRANT_AUTHORIZATION_CODE
    client.algorithm = Application.RS256_ALGORITHM
    client.client_secret = PORTAL_CLIENT_SECRET
    client.redirect_uris = " ".join(PORTAL_REDIRECT_URIS)
    client.save()
    ClientPolicy.objects.update_or_create(
        application=client, defaults={"allowed_scopes": PORTAL_SCOPES}
    )
