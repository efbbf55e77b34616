"""What the demo data looks like: the agencies and users, the word lists, and one row generator
per seeded resource. No database here: seed.py writes what these generators yield.

A generator takes its own random generator and a SeedPlan, and yields (resource name, row)
pairs, a row keyed by the model's field names (`account_id`, not `account`). The sequence of
draws *is* the demo data: reordering two draws, or adding one in the middle, changes every
record after it. So a new resource, or a new field of one, draws from a stream of its own
(seed.seed gives every generator one) and never from an existing one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

Rows = Iterator[tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class SeedPlan:
    """What a row generator is told: how many accounts to make, the day the data is seeded
    around, and how to read back the rows of a resource seeded before it (its parent)."""

    accounts: int
    today: date
    rows: Callable[[str, list[str]], Iterator[dict[str, Any]]]


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


def phone(rng: random.Random) -> str:
    return f"({rng.randrange(200, 999)}) 555-{rng.randrange(10000):04d}"


def agency_for(index: int, total: int) -> int:
    """Agencies take consecutive id ranges in proportion to their share."""
    position = index / max(total, 1)
    cumulative = 0.0
    for agency_id, _name, _profile, _email, share in AGENCIES:
        cumulative += share
        if position < cumulative:
            return agency_id
    return AGENCIES[-1][0]


def accounts_and_contacts(rng: random.Random, plan: SeedPlan) -> Rows:
    """`plan.accounts` accounts with one to five contacts each.

    Both are drawn from one stream, interleaved, as they were before each resource had its own:
    keeping these draws exactly as they are keeps every account and contact of a given seed
    byte-identical (tests/sandbox/test_seed.py)."""
    total = plan.accounts
    contact_id = 0
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
        yield (
            "accounts",
            {
                "id": account_id,
                "agency_id": agency_id,
                "name": name,
                "classification": rng.choice(CLASSIFICATIONS),
                "lines_of_business": rng.sample(LINES, rng.randint(1, 3)),
                "client_size": rng.choice(SIZES),
                "is_active": not archived and rng.random() > 0.05,
                "is_archived": archived,
                "number_of_employees": rng.choice([None, rng.randint(1, 2000)]),
                "naics_codes": [naics],
                "address_line1": f"{rng.randint(1, 9999)} {rng.choice(STREETS)}",
                "city": city,
                "state": state,
                "postal_code": f"{zip_prefix}{rng.randrange(100):02d}",
                "primary_phone": phone(rng),
                "updated": updated,
            },
        )
        domain = "".join(c for c in name.split()[0].lower() if c.isalpha()) + ".example.com"
        for position in range(rng.randint(1, 5)):
            contact_id += 1
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            yield (
                "contacts",
                {
                    "id": contact_id,
                    "account_id": account_id,
                    "agency_id": agency_id,
                    "first_name": first,
                    "last_name": last,
                    "email_address": f"{first}.{last}@{domain}".lower().replace("'", ""),
                    "title": rng.choice(TITLES),
                    "work_phone_number": phone(rng),
                    "mobile_phone_number": rng.choice(["", phone(rng)]),
                    "is_primary_contact": position == 0,
                    "is_active": not archived,
                    "is_archived": archived,
                    "updated": updated - timedelta(seconds=rng.randrange(86400)),
                },
            )


# Per line of business (LINES): a policy-number prefix, carriers that write it, and a yearly
# premium range in dollars.
POLICY_LINES: dict[str, tuple[str, list[str], tuple[int, int]]] = {
    "Commercial Auto": (
        "CA",
        ["Progressive", "Travelers", "The Hartford", "Nationwide"],
        (1500, 45000),
    ),
    "General Liability": (
        "GL",
        ["The Hartford", "Travelers", "Liberty Mutual", "Chubb", "Hiscox"],
        (400, 18000),
    ),
    "Workers Comp": (
        "WC",
        ["AmTrust", "Employers", "The Hartford", "Travelers", "Liberty Mutual"],
        (800, 60000),
    ),
    "Property": (
        "PR",
        ["Chubb", "Travelers", "CNA", "Zurich", "Cincinnati Insurance"],
        (900, 50000),
    ),
    "Cyber": ("CY", ["Coalition", "Beazley", "Chubb", "At-Bay"], (700, 15000)),
    "BOP": (
        "BP",
        ["The Hartford", "Hiscox", "Nationwide", "Cincinnati Insurance", "Travelers"],
        (500, 7500),
    ),
    "Umbrella": ("UM", ["Chubb", "Travelers", "CNA", "Markel"], (1000, 25000)),
    "Group Health": (
        "GH",
        ["UnitedHealthcare", "Aetna", "Cigna", "Blue Cross Blue Shield"],
        (15000, 450000),
    ),
    "Dental": ("DN", ["Delta Dental", "Guardian", "MetLife", "Ameritas"], (1200, 40000)),
    "Life": ("LF", ["MetLife", "Prudential", "Lincoln Financial", "Principal"], (600, 30000)),
}


def a_year_before(day: date) -> date:
    """The same day a year earlier (28 February for a 29th)."""
    if day.month == 2 and day.day == 29:
        return date(day.year - 1, 2, 28)
    return day.replace(year=day.year - 1)


def policies(rng: random.Random, plan: SeedPlan) -> Rows:
    """One policy per line of business of each account (so one to three), with one-year terms
    ending between 60 days ago and 305 days from `plan.today`: some lapsed, about a twelfth
    renewing in each coming month. Premiums are whole cents, a quarter of them whole dollars.
    Active unless lapsed or the account is archived; archived with the account."""
    policy_id = 0
    accounts = plan.rows("accounts", ["agency_id", "lines_of_business", "is_archived"])
    for account in accounts:
        for line in account["lines_of_business"]:
            if line not in POLICY_LINES:
                continue
            code, carriers, (low, high) = POLICY_LINES[line]
            policy_id += 1
            expiration = plan.today + timedelta(days=rng.randrange(-60, 305))
            effective = a_year_before(expiration)
            cents = rng.randrange(low * 100, high * 100)
            if rng.random() < 0.25:
                cents -= cents % 100
            yield (
                "policies",
                {
                    "id": policy_id,
                    "account_id": account["pk"],
                    "agency_id": account["agency_id"],
                    "policy_number": f"{code}-{effective.year}-{rng.randrange(1_000_000):06d}",
                    "line_of_business": line,
                    "carrier_name": rng.choice(carriers),
                    "effective_date": effective,
                    "expiration_date": expiration,
                    "premium": Decimal(cents).scaleb(-2),
                    "is_active": not account["is_archived"] and expiration >= plan.today,
                    "is_archived": account["is_archived"],
                    # Bound up to 30 days before the term began.
                    "updated": datetime.combine(effective, time(), UTC)
                    - timedelta(seconds=rng.randrange(30 * 86400)),
                },
            )
