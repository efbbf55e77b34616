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
        [("full", [], "2026-12-01"), ("again", [], "2026-12-01")],
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
