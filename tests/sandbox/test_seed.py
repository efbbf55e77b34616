"""The seed (sandbox/zywave/seed.py, demo.py): deterministic, and each resource drawn from a
random stream of its own, so that adding a resource never changes another's demo data.

The seed runs in the sandbox's own Django (a `python -m sandbox shell` child: this process has
the portal's settings), once for the whole module, into a directory of its own.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.sandboxserver import REPO_ROOT, sandbox_env

# Each run seeds 300 accounts with seed 1 around 2026-12-01, leaving out the named resources,
# and reports every resource's rows (all concrete columns, by id) and the seed's counts.
SEED_RUNS = """
import json, os
from datetime import date
from django.core.management import call_command
from sandbox.zywave.resources import RESOURCES
from sandbox.zywave.seed import seed

call_command("migrate", interactive=False, verbosity=0)


def rows(model):
    names = [field.attname for field in model._meta.concrete_fields]
    return json.dumps(list(model.objects.order_by("id").values_list(*names)), default=str)


report = {}
for label, left_out, day in json.loads(os.environ["SEED_RUNS"]):
    kept = [resource for resource in RESOURCES if resource.name not in left_out]
    counts = seed(accounts=300, seed_value=1, today=date.fromisoformat(day), resources=kept)
    report[label] = {
        "counts": counts,
        "rows": {resource.name: rows(resource.model) for resource in RESOURCES},
    }
print(json.dumps(report))
"""

# sha256 of `rows()` above for the accounts and contacts that `seed(accounts=300,
# seed_value=1)` wrote before the resource registry existed (commit 27e83d8): the demo data
# people and tests know must never change.
BEFORE_THE_REGISTRY = {
    "accounts": (300, "497f57ab3b74d1ffbe33d8ffa708655a09dcbf46fe5670835dd13cc1fb1cd2f9"),
    "contacts": (863, "6d8980c42d6337f7783e06441ef17c2e7445f3b87f2ed80e1d85cb7c6fb41c51"),
}


def seed_runs(tmp: Path, runs: list[tuple[str, list[str], str]]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "sandbox", "shell", "-c", SEED_RUNS],
        cwd=REPO_ROOT,
        env={**sandbox_env(tmp), "SEED_RUNS": json.dumps(runs)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return seed_runs(
        tmp_path_factory.mktemp("seed"),
        [
            ("full", [], "2026-12-01"),
            ("without policies", ["policies"], "2026-12-01"),
            ("again", [], "2026-12-01"),
            ("a month later", [], "2027-01-01"),
        ],
    )


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_accounts_and_contacts_are_byte_identical_to_the_seed_before_the_registry(
    seeded: dict[str, Any],
) -> None:
    for name, (count, expected) in BEFORE_THE_REGISTRY.items():
        assert seeded["full"]["counts"][name] == count
        assert digest(seeded["full"]["rows"][name]) == expected, name


def test_the_same_seed_and_day_give_the_same_rows(seeded: dict[str, Any]) -> None:
    assert seeded["again"] == seeded["full"]


def test_leaving_policies_out_changes_no_account_or_contact(seeded: dict[str, Any]) -> None:
    full, without = seeded["full"], seeded["without policies"]
    assert full["counts"]["policies"] > 0
    assert "policies" not in without["counts"]
    assert without["rows"]["policies"] == "[]"
    for name in ["accounts", "contacts"]:
        assert without["counts"][name] == full["counts"][name]
        assert without["rows"][name] == full["rows"][name], name


def test_policies_follow_the_day_of_seeding_and_nothing_else_does(
    seeded: dict[str, Any],
) -> None:
    full, later = seeded["full"], seeded["a month later"]
    for name in ["accounts", "contacts"]:
        assert later["rows"][name] == full["rows"][name], name
    before, after = json.loads(full["rows"]["policies"]), json.loads(later["rows"]["policies"])
    assert len(before) == len(after)
    assert before != after


def test_each_account_holds_one_policy_per_line_of_business(seeded: dict[str, Any]) -> None:
    columns = ["id", "agency", "name", "classification", "lines_of_business"]
    accounts = {
        row[0]: dict(zip(columns, row, strict=False))
        for row in json.loads(seeded["full"]["rows"]["accounts"])
    }
    held: dict[int, list[str]] = {}
    for policy in seeded_policies(seeded["full"]):
        held.setdefault(policy["account_id"], []).append(policy["line_of_business"])
        assert policy["agency_id"] == accounts[policy["account_id"]]["agency"]
    assert set(held) == set(accounts)
    for account_id, lines in held.items():
        assert 1 <= len(lines) <= 3
        assert lines == accounts[account_id]["lines_of_business"]


def test_policy_terms_are_a_year_long_around_the_day_of_seeding(seeded: dict[str, Any]) -> None:
    day = date(2026, 12, 1)
    policies = seeded_policies(seeded["full"])
    ends = [date.fromisoformat(policy["expiration_date"]) for policy in policies]
    for policy, end in zip(policies, ends, strict=True):
        start = date.fromisoformat(policy["effective_date"])
        assert (start.year, start.month, start.day) == (end.year - 1, end.month, end.day)
        assert day - timedelta(days=60) <= end < day + timedelta(days=305)
        assert policy["is_active"] == (end >= day and not policy["is_archived"])
    lapsed = [end for end in ends if end < day]
    windows = [[end for end in ends if day <= end < day + timedelta(days=n)] for n in (30, 60, 90)]
    assert lapsed and all(windows) and len(windows[0]) < len(windows[1]) < len(windows[2])


def test_premiums_are_whole_cents_some_of_them_whole_dollars(seeded: dict[str, Any]) -> None:
    premiums = [Decimal(policy["premium"]) for policy in seeded_policies(seeded["full"])]
    assert all(premium.as_tuple().exponent == -2 and premium > 0 for premium in premiums)
    assert any(premium == premium.to_integral_value() for premium in premiums)


def seeded_policies(run: dict[str, Any]) -> list[dict[str, Any]]:
    names = [
        "id", "account_id", "agency_id", "policy_number", "line_of_business", "carrier_name",
        "effective_date", "expiration_date", "premium", "is_active", "is_archived", "updated",
    ]  # fmt: skip
    return [dict(zip(names, row, strict=True)) for row in json.loads(run["rows"]["policies"])]
