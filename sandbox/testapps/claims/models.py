from __future__ import annotations

from django.db import models

from sandbox.zywave.models import Account, Agency


class Claim(models.Model):
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="claims")
    agency = models.ForeignKey(Agency, on_delete=models.CASCADE, related_name="claims")
    claim_number = models.CharField(max_length=30)
    loss_date = models.DateField()
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    is_active = models.BooleanField(default=True)
    is_archived = models.BooleanField(default=False)
    updated = models.DateTimeField()

    def __str__(self) -> str:
        return self.claim_number
