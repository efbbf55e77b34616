"""Webhook delivery attempts counted by outcome (`webhooks.attempt`), against the real test
receiver of tests/integrations/test_webhooks.py (its fixtures and helpers, reused)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from prometheus_client import REGISTRY

from integrations import webhooks
from tests.integrations.test_webhooks import (  # noqa: F401 (fixtures: receiver, webhook_settings)
    Receiver,
    Reply,
    emit,
    receiver,
    subscribe,
    webhook_settings,
)

pytestmark = pytest.mark.django_db


def attempts(outcome: str) -> float:
    value = REGISTRY.get_sample_value("portal_webhook_deliveries_total", {"outcome": outcome})
    return value or 0.0


def test_delivery_attempts_are_counted_by_outcome(
    staff: User,
    receiver: Receiver,  # noqa: F811 (the fixture imported above)
) -> None:
    subscription, _ = subscribe(staff, receiver)
    before = {outcome: attempts(outcome) for outcome in ("delivered", "refused", "no_answer")}
    emit(staff)
    emit(staff, n=1)
    emit(staff, n=2)
    receiver.answer(Reply(200), Reply(400), Reply(hang=3))  # the last outlasts the 1 s timeout
    webhooks.drain(subscription.pk)
    assert attempts("delivered") == before["delivered"] + 1
    assert attempts("refused") == before["refused"] + 1
    assert attempts("no_answer") == before["no_answer"] + 1
