from __future__ import annotations

from django.db import models

from integrations.models import Connection, MirrorRecord


class Claim(MirrorRecord):
    """The mirror of one (test-only) Zywave claim, keyed by (connection, Zywave id)."""

    connection = models.ForeignKey(
        Connection, on_delete=models.CASCADE, related_name="claims", db_index=False
    )
    account_zywave_id = models.CharField("Zywave account id", max_length=64, blank=True)
    claim_number = models.CharField(max_length=30, blank=True)
    loss_date = models.DateField(null=True, blank=True)
    amount = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    is_active = models.BooleanField(default=True)
    is_archived = models.BooleanField(default=False)

    class Meta(MirrorRecord.Meta):
        ordering = ["loss_date", "zywave_id"]

    def __str__(self) -> str:
        return self.claim_number or self.zywave_id
