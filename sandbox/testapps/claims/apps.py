from __future__ import annotations

import random
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

from django.apps import AppConfig

from sandbox.zywave.demo import Rows, SeedPlan


def claims(rng: random.Random, plan: SeedPlan) -> Rows:
    """None to two claims per account, losses in the 90 days before the day of seeding."""
    claim_id = 0
    for account in plan.rows("accounts", ["agency_id", "is_archived"]):
        for _ in range(rng.randrange(3)):
            claim_id += 1
            loss = plan.today - timedelta(days=rng.randrange(90))
            yield (
                "claims",
                {
                    "id": claim_id,
                    "account_id": account["pk"],
                    "agency_id": account["agency_id"],
                    "claim_number": f"CL-{rng.randrange(10**8):08d}",
                    "loss_date": loss,
                    "amount": Decimal(rng.randrange(10_000, 5_000_000)).scaleb(-2),
                    "is_active": not account["is_archived"],
                    "is_archived": account["is_archived"],
                    "updated": datetime.combine(loss, time(), UTC),
                },
            )


class ClaimsConfig(AppConfig):
    name = "sandbox.testapps.claims"
    label = "claims"

    def ready(self) -> None:
        from sandbox.testapps.claims.models import Claim
        from sandbox.zywave.resources import Resource, register

        register(
            Resource(
                name="claims",
                model=Claim,
                route="claims/v2.0/claim",
                detail_route="claims/v2.0/claim/{id}",
                scopes=frozenset({"api.accounts", "api.accounts:read"}),
                parent="accounts",
                nested="claims",
                fields={
                    "id": ("id", "int"),
                    "accountId": ("account_id", "int"),
                    "claimNumber": ("claim_number", "str"),
                    "lossDate": ("loss_date", "date"),
                    "amount": ("amount", "decimal"),
                    "isActive": ("is_active", "bool"),
                    "isArchived": ("is_archived", "bool"),
                    "updatedDateTime": ("updated", "datetime"),
                },
                seed=claims,
            )
        )
