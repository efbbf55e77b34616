"""Deterministic demo data: the design's users, client, profiles, and up to 100,000 accounts.

The same (accounts, seed) always produces the same rows with the same ids, so a test or a
demo can be re-seeded to a known state. Seeding replaces the data it owns (agencies,
profiles, accounts, contacts) and updates users and the demo client in place.
"""

from __future__ import annotations

import base64
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import connection, models, transaction
from oauth2_provider.models import get_application_model

from sandbox.zywave.models import (
    Account,
    Agency,
    Baseline,
    ClientPolicy,
    Contact,
    Person,
    Profile,
)

PASSWORD = "sandbox"
PORTAL_CLIENT_ID = "portal-dev"
PORTAL_CLIENT_SECRET = "portal-dev-secret"
PORTAL_REDIRECT_URIS = [
    "http://127.0.0.1:8000/oauth/complete/zywave/",
    "http://localhost:8000/oauth/complete/zywave/",
]
PORTAL_SCOPES = (
    "openid profile email offline_access api.profiles api.accounts api.accounts:read api.industries"
)

# (agency id, agency name, profile id, user email, share of the accounts)
AGENCIES = [
    (101, "Summit Ridge Insurance", 50001, "agent@example.com", 0.4),
    (102, "Harbor Point Brokerage", 50002, "agent@example.com", 0.3),
    (103, "Prairie Shield Agency", 50003, "agent@example.com", 0.2),
    (104, "Lakeside Mutual Partners", 50004, "solo@example.com", 0.1),
]
USERS = [
    ("agent@example.com", "Avery", "Agent"),
    ("solo@example.com", "Sam", "Solo"),
    ("none@example.com", "Noor", "Noprofile"),
]

PREFIXES = [
    "Blue", "Granite", "Cedar", "Northern", "Silver", "Golden", "Red Rock", "Maple", "Iron",
    "Coastal", "Evergreen", "Prairie", "Summit", "Lakeshore", "Pioneer", "Heritage", "O'Brien",
    "Riverbend", "Copper", "Oakwood", "Harbor", "Sunrise", "Keystone", "Aspen", "Liberty",
]  # fmt: skip
CORES = [
    "Ridge", "Valley", "Creek", "Pine", "Bay", "Hill", "Point", "Field", "Stone", "Brook",
    "Mesa", "Crest", "Grove", "Harbor", "Falls",
]  # fmt: skip
TRADES = [
    ("Logistics", "484110"), ("Dental", "621210"), ("Construction", "236220"),
    ("Bakery", "311811"), ("Consulting", "541611"), ("Manufacturing", "332710"),
    ("Roofing", "238160"), ("Veterinary Clinic", "541940"), ("Landscaping", "561730"),
    ("Brewing", "312120"), ("Auto Repair", "811111"), ("Software", "541511"),
    ("Realty", "531210"), ("Plumbing", "238220"), ("Trucking", "484121"), ("Pharmacy", "456110"),
    ("Law Office", "541110"), ("Restaurant", "722511"), ("Daycare", "624410"),
    ("Electric", "238210"),
]  # fmt: skip
SUFFIXES = ["LLC", "Inc.", "Co.", "Group", "Partners", "Ltd.", ""]
FIRST_NAMES = [
    "James", "Maria", "Wei", "Aisha", "Carlos", "Emily", "Olusegun", "Sofia", "Liam", "Priya",
    "Noah", "Hannah", "Mateo", "Chloe", "Ethan", "Fatima", "Lucas", "Zoe", "Daniel", "Grace",
    "Kenji", "Amara", "Jack", "Isabella", "Ravi", "Nora", "Diego", "Ava", "Samuel", "Leah",
]  # fmt: skip
LAST_NAMES = [
    "Smith", "Garcia", "Chen", "Johnson", "Okafor", "Miller", "Nguyen", "Brown", "Patel",
    "Davis", "Lopez", "Wilson", "Kim", "Anderson", "Thomas", "O'Neil", "Martin", "Schmidt",
    "Rossi", "Kowalski", "Haddad", "Murphy", "Jensen", "Silva", "Tanaka",
]  # fmt: skip
TITLES = ["Owner", "CFO", "Office Manager", "HR Director", "Operations Lead", "President", ""]
CITIES = [
    ("Milwaukee", "WI", "532"), ("Madison", "WI", "537"), ("Chicago", "IL", "606"),
    ("Minneapolis", "MN", "554"), ("Des Moines", "IA", "503"), ("Omaha", "NE", "681"),
    ("Denver", "CO", "802"), ("Austin", "TX", "787"), ("Columbus", "OH", "432"),
    ("Nashville", "TN", "372"), ("Portland", "OR", "972"), ("Raleigh", "NC", "276"),
]  # fmt: skip
STREETS = ["Main St", "Oak Ave", "Lake Dr", "Market St", "2nd St", "Elm St", "Commerce Pkwy"]
LINES = ["Commercial Auto", "General Liability", "Workers Comp", "Property", "Cyber", "BOP",
         "Umbrella", "Group Health", "Dental", "Life"]  # fmt: skip
SIZES = ["Small", "Medium", "Large", "Enterprise"]
CLASSIFICATIONS = ["Client", "Prospect", "Former Client"]

# Fixed, so that the same seed gives the same updatedDateTime values on every run.
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
BATCH = 5000


def phone(rng: random.Random) -> str:
    return f"({rng.randrange(200, 999)}) 555-{rng.randrange(10000):04d}"


def seed(accounts: int = 10_000, seed_value: int = 1) -> dict[str, int]:
    """Replace the sandbox's data with a deterministic set of `accounts` accounts."""
    rng = random.Random(seed_value)
    with transaction.atomic():
        Contact.objects.all().delete()
        Account.objects.all().delete()
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
        contact_count = seed_accounts(rng, accounts)
        Baseline.objects.update_or_create(
            pk=1,
            defaults={
                "accounts": accounts,
                "seed_value": seed_value,
                "clients": client_snapshot(),
                "dirty": False,
            },
        )
    return {"accounts": accounts, "contacts": contact_count}


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


def agency_for(index: int, total: int) -> int:
    """Agencies take consecutive id ranges in proportion to their share."""
    position = index / max(total, 1)
    cumulative = 0.0
    for agency_id, _name, _profile, _email, share in AGENCIES:
        cumulative += share
        if position < cumulative:
            return agency_id
    return AGENCIES[-1][0]


def insert(model: type[models.Model], columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    """INSERT rows straight through the cursor: at 400,000 rows, building model instances for
    bulk_create costs more than the database does."""
    fields = ", ".join(
        str(getattr(model._meta.get_field(name), "column", name)) for name in columns
    )
    marks = ", ".join(["%s"] * len(columns))
    with connection.cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO {model._meta.db_table} ({fields}) VALUES ({marks})",  # noqa: S608
            rows,
        )


ACCOUNT_COLUMNS = [
    "id", "agency", "name", "classification", "lines_of_business", "client_size", "is_active",
    "is_archived", "number_of_employees", "naics_codes", "address_line1", "city", "state",
    "postal_code", "primary_phone", "updated",
]  # fmt: skip
CONTACT_COLUMNS = [
    "id", "account", "agency", "first_name", "last_name", "email_address", "title",
    "work_phone_number", "mobile_phone_number", "is_primary_contact", "is_active",
    "is_archived", "updated",
]  # fmt: skip


def seed_accounts(rng: random.Random, total: int) -> int:
    """Insert `total` accounts with one to five contacts each; returns the contact count."""
    as_db_time = connection.ops.adapt_datetimefield_value
    contact_id = 0
    accounts: list[tuple[Any, ...]] = []
    contacts: list[tuple[Any, ...]] = []
    for index in range(total):
        account_id = index + 1
        agency_id = agency_for(index, total)
        trade, naics = rng.choice(TRADES)
        name = " ".join(
            part
            for part in (rng.choice(PREFIXES), rng.choice(CORES), trade, rng.choice(SUFFIXES))
            if part
        )
        city, state, zip_prefix = rng.choice(CITIES)
        archived = rng.random() < 0.05
        updated = EPOCH - timedelta(seconds=rng.randrange(365 * 86400))
        accounts.append(
            (
                account_id,
                agency_id,
                name,
                rng.choice(CLASSIFICATIONS),
                json.dumps(rng.sample(LINES, rng.randint(1, 3))),
                rng.choice(SIZES),
                not archived and rng.random() > 0.05,
                archived,
                rng.choice([None, rng.randint(1, 2000)]),
                json.dumps([naics]),
                f"{rng.randint(1, 9999)} {rng.choice(STREETS)}",
                city,
                state,
                f"{zip_prefix}{rng.randrange(100):02d}",
                phone(rng),
                as_db_time(updated),
            )
        )
        domain = "".join(c for c in name.split()[0].lower() if c.isalpha()) + ".example.com"
        for position in range(rng.randint(1, 5)):
            contact_id += 1
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            contacts.append(
                (
                    contact_id,
                    account_id,
                    agency_id,
                    first,
                    last,
                    f"{first}.{last}@{domain}".lower().replace("'", ""),
                    rng.choice(TITLES),
                    phone(rng),
                    rng.choice(["", phone(rng)]),
                    position == 0,
                    not archived,
                    archived,
                    as_db_time(updated - timedelta(seconds=rng.randrange(86400))),
                )
            )
        if len(accounts) >= BATCH:
            insert(Account, ACCOUNT_COLUMNS, accounts)
            insert(Contact, CONTACT_COLUMNS, contacts)
            accounts, contacts = [], []
    insert(Account, ACCOUNT_COLUMNS, accounts)
    insert(Contact, CONTACT_COLUMNS, contacts)
    return contact_id
