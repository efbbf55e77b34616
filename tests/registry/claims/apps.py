from __future__ import annotations

from django.apps import AppConfig


class ClaimsConfig(AppConfig):
    name = "tests.registry.claims"
    label = "claims"

    def ready(self) -> None:
        from integrations.resources import Mirrored, register

        from .models import Claim
        from .rows import claim_row

        register(
            Mirrored(
                "claims",
                "Claims",
                "/claims/v2.0/claim",
                Claim,
                claim_row,
                ("api.accounts:read", "api.accounts"),
                parent="accounts",
                parent_column="account_zywave_id",
                search=("claim_number",),
                filters={"account": "account_zywave_id"},
            )
        )
