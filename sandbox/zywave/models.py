"""The emulated Zywave's data: agencies, profiles, accounts, contacts, ..., plus the sandbox's
own machinery (runtime settings, faults, counters) that must be shared by every gunicorn
worker process and therefore lives in the database, not in memory."""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, models
from django.db.models import F
from django.utils import timezone
from oauth2_provider.models import get_refresh_token_model
from oauth2_provider.settings import oauth2_settings


class RuntimeSetting(models.Model):
    """An override of one of settings.SANDBOX_DEFAULTS, set through the control API."""

    key = models.CharField(max_length=64, primary_key=True)
    value = models.JSONField()

    def __str__(self) -> str:
        return f"{self.key}={self.value!r}"

    @classmethod
    def current(cls) -> dict[str, Any]:
        values = dict(settings.SANDBOX_DEFAULTS)
        values.update(dict(cls.objects.values_list("key", "value")))
        return values

    @classmethod
    def get(cls, key: str) -> Any:
        row = cls.objects.filter(key=key).values_list("value", flat=True).first()
        return settings.SANDBOX_DEFAULTS[key] if row is None else row

    @classmethod
    def put(cls, key: str, value: Any) -> None:
        cls.objects.update_or_create(key=key, defaults={"value": value})


def sandbox_now() -> datetime:
    """The sandbox's clock: the real time plus the time-travel offset set by the control API.

    Every lifetime the tests time-travel over (access tokens, the refresh token's absolute
    lifetime) is measured with this clock.
    """
    return timezone.now() + timedelta(seconds=int(RuntimeSetting.get("clock_offset")))


class Fault(models.Model):
    """The next `remaining` requests matching `path` (a regex) and `method` get this answer,
    or are delayed by `delay_ms` and then served normally when `status` is empty."""

    path = models.CharField(max_length=500)
    method = models.CharField(max_length=10, blank=True)  # blank: any method
    remaining = models.PositiveIntegerField()
    status = models.PositiveSmallIntegerField(null=True, blank=True)
    retry_after = models.CharField(max_length=100, blank=True)
    delay_ms = models.PositiveIntegerField(default=0)
    # Null means "the default JSON body", distinct from an empty body.
    body = models.TextField(null=True, blank=True)  # noqa: DJ001
    content_type = models.CharField(max_length=100, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.method or '*'} {self.path} x{self.remaining}"

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method.upper() != method.upper():
            return False
        return re.search(self.path, path) is not None

    def claim(self) -> bool:
        """Take one of the remaining firings; False when another request took the last one.

        Several worker processes may see the same fault at once: the conditional UPDATE's row
        count decides who fires, so a fault fires exactly `count` times in total.
        """
        return bool(
            Fault.objects.filter(pk=self.pk, remaining__gt=0).update(remaining=F("remaining") - 1)
        )

    @classmethod
    def claim_for(cls, method: str, path: str) -> Fault | None:
        for fault in cls.objects.filter(remaining__gt=0).order_by("id"):
            if fault.matches(method, path) and fault.claim():
                return fault
        return None


class Counter(models.Model):
    """Requests counted by kind ("token", "api") and key ("refresh_token:success", ...)."""

    kind = models.CharField(max_length=20)
    key = models.CharField(max_length=300)
    value = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["kind", "key"], name="counter_unique")]

    def __str__(self) -> str:
        return f"{self.kind} {self.key}: {self.value}"

    @classmethod
    def bump(cls, kind: str, key: str) -> None:
        # One statement, so concurrent workers never lose an increment.
        table = cls._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (kind, key, value) VALUES (%s, %s, 1) "  # noqa: S608
                "ON CONFLICT (kind, key) DO UPDATE SET value = value + 1",
                [kind, key],
            )

    @classmethod
    def as_dict(cls) -> dict[str, dict[str, int]]:
        result: dict[str, dict[str, int]] = {"token": {}, "api": {}}
        for kind, key, value in cls.objects.order_by("kind", "key").values_list(
            "kind", "key", "value"
        ):
            result.setdefault(kind, {})[key] = value
        return result


class ClientPolicy(models.Model):
    """What Zywave registers per app beyond the OAuth client: the scopes it may ask for."""

    application = models.OneToOneField(
        oauth2_settings.APPLICATION_MODEL, on_delete=models.CASCADE, related_name="policy"
    )
    allowed_scopes = models.TextField()

    def __str__(self) -> str:
        return f"{self.application_id}: {self.allowed_scopes}"

    def allows(self, scopes: list[str]) -> bool:
        return set(scopes) <= set(self.allowed_scopes.split())


class Authorization(models.Model):
    """One user's consent to one client, followed through every refresh token it begets.

    Keyed by django-oauth-toolkit's refresh-token family, so the refresh token's absolute
    lifetime counts from the original login however many times it was rotated, and reuse
    detection can revoke the whole chain.
    """

    family = models.UUIDField(primary_key=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    application = models.ForeignKey(oauth2_settings.APPLICATION_MODEL, on_delete=models.CASCADE)
    authorized_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.user_id} -> {self.application_id} ({self.family})"

    def revoke(self) -> None:
        """Revoke the grant: every refresh token of the chain and their access tokens."""
        Authorization.objects.filter(pk=self.pk).update(revoked_at=timezone.now())
        get_refresh_token_model().revoke_family(self.family)

    def expires_at(self) -> datetime:
        return self.authorized_at + timedelta(
            seconds=int(RuntimeSetting.get("refresh_token_lifetime"))
        )


class Agency(models.Model):
    """An organisational unit whose data a type-B profile sees."""

    id = models.BigIntegerField(primary_key=True)
    name = models.CharField(max_length=200)

    class Meta:
        verbose_name_plural = "agencies"

    def __str__(self) -> str:
        return self.name


def new_profile_token() -> str:
    return secrets.token_urlsafe(32)


class Profile(models.Model):
    """A Zywave profile: one user's permissions on one agency. Type codes are data."""

    id = models.BigIntegerField(primary_key=True)
    type_code = models.CharField(max_length=10, default="B")
    name = models.CharField(max_length=200)
    agency = models.ForeignKey(Agency, on_delete=models.CASCADE, related_name="profiles")
    # Null when the control API unlinked it from its user (the user lost access).
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="zywave_profiles",
    )
    broker_id = models.CharField(max_length=20)
    email = models.EmailField()
    given_name = models.CharField(max_length=100)
    surname = models.CharField(max_length=100)
    token = models.CharField(max_length=100, unique=True, default=new_profile_token)

    def __str__(self) -> str:
        return f"{self.type_code} {self.id} {self.name}"

    def as_json(self, key_case: str, with_token: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "Id": str(self.id),
            "TypeCode": self.type_code,
            "Name": self.name,
            "OrganizationId": str(self.agency_id),
            "OrganizationName": self.agency.name,
            "BrokerId": self.broker_id,
            "Email": self.email,
            "GivenName": self.given_name,
            "Surname": self.surname,
        }
        if with_token:
            data["ProfileToken"] = self.token
        if key_case == "camel":
            return {key[0].lower() + key[1:]: value for key, value in data.items()}
        return data


class Person(models.Model):
    """The Zywave side of a user: which profile is active when a request names none."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="person"
    )
    active_profile = models.ForeignKey(
        Profile, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    def __str__(self) -> str:
        return f"person {self.user_id}"


class Account(models.Model):
    agency = models.ForeignKey(Agency, on_delete=models.CASCADE, related_name="accounts")
    name = models.CharField(max_length=200)
    classification = models.CharField(max_length=50, blank=True)
    lines_of_business = models.JSONField(default=list)
    client_size = models.CharField(max_length=50, blank=True)
    is_active = models.BooleanField(default=True)
    is_archived = models.BooleanField(default=False)
    number_of_employees = models.IntegerField(null=True, blank=True)
    naics_codes = models.JSONField(default=list)
    address_line1 = models.CharField(max_length=200, blank=True)
    city = models.CharField(max_length=100, blank=True)
    state = models.CharField(max_length=2, blank=True)
    postal_code = models.CharField(max_length=10, blank=True)
    primary_phone = models.CharField(max_length=30, blank=True)
    updated = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["agency", "updated", "id"], name="account_agency_updated"),
            models.Index(fields=["agency", "name", "id"], name="account_agency_name"),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.name}"


class Contact(models.Model):
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="contacts")
    # Denormalised from the account so that listing an agency's contacts needs no join.
    agency = models.ForeignKey(Agency, on_delete=models.CASCADE, related_name="contacts")
    first_name = models.CharField(max_length=100)
    last_name = models.CharField(max_length=100)
    email_address = models.CharField(max_length=200, blank=True)
    title = models.CharField(max_length=100, blank=True)
    work_phone_number = models.CharField(max_length=30, blank=True)
    mobile_phone_number = models.CharField(max_length=30, blank=True)
    is_primary_contact = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    is_archived = models.BooleanField(default=False)
    updated = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["agency", "id"], name="contact_agency_id"),
            models.Index(fields=["agency", "updated", "id"], name="contact_agency_updated"),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.first_name} {self.last_name}"


class Policy(models.Model):
    """An insurance policy an account holds (the Policies API, docs/zywave.md §4: its fields
    are our assumption)."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="policies")
    # Denormalised from the account, as for contacts: an agency's policies need no join.
    agency = models.ForeignKey(Agency, on_delete=models.CASCADE, related_name="policies")
    policy_number = models.CharField(max_length=50)
    line_of_business = models.CharField(max_length=100)
    carrier_name = models.CharField(max_length=200)
    effective_date = models.DateField()
    expiration_date = models.DateField()
    # 12 digits at most: SQLite keeps a decimal as a double, exact to 15 significant digits.
    premium = models.DecimalField(max_digits=12, decimal_places=2)
    is_active = models.BooleanField(default=True)
    is_archived = models.BooleanField(default=False)
    updated = models.DateTimeField()

    class Meta:
        verbose_name_plural = "policies"
        indexes = [
            models.Index(fields=["agency", "id"], name="policy_agency_id"),
            models.Index(fields=["agency", "updated", "id"], name="policy_agency_updated"),
            models.Index(fields=["agency", "expiration_date", "id"], name="policy_agency_expiry"),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.policy_number}"


class Baseline(models.Model):
    """What `reset` restores: the seed's parameters and the registered clients as they were
    when the data was seeded or `POST /_sandbox/baseline` was last called. `dirty` is set by
    every control call that changes seeded data, so a reset re-seeds only when needed."""

    accounts = models.PositiveIntegerField()
    seed_value = models.IntegerField(default=1)
    # The day the data was seeded around (policies' terms): a reset re-seeds the same day's
    # data, whatever the date or the sandbox's clock is then. Null: seeded before it was kept.
    seed_date = models.DateField(null=True, blank=True)
    clients = models.JSONField(default=list)
    dirty = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"baseline: {self.accounts} accounts, {len(self.clients)} clients"


class WebhookSubscription(models.Model):
    """A webhook as Zywave's admin tool registers it: one user, one event type, one URI
    (docs/zywave.md §6). Deliveries only carry records the user may see.

    `lease_owner` / `lease_until`: which sender thread of which server process is delivering
    this subscription's queue now. One at a time, so that a subscription's deliveries go out
    in the order they were queued (see zywave.webhooks)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhooks"
    )
    event_type = models.CharField(max_length=100)
    uri = models.CharField(max_length=2000)
    created = models.DateTimeField(auto_now_add=True)
    lease_owner = models.CharField(max_length=100, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "event_type", "uri"], name="webhook_subscription_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.event_type} -> {self.uri}"

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.pk,
            "user": self.user.username,
            "event_type": self.event_type,
            "uri": self.uri,
            "created": self.created.isoformat(),
        }

    @classmethod
    def take_lease(cls, pk: int, owner: str, seconds: float) -> bool:
        """Whether `owner` now holds the subscription's lease. The conditional UPDATE's row
        count decides between the sender threads of every server process."""
        now = timezone.now()
        free = models.Q(lease_until__isnull=True) | models.Q(lease_until__lt=now)
        return bool(
            cls.objects.filter(free, pk=pk).update(
                lease_owner=owner, lease_until=now + timedelta(seconds=seconds)
            )
        )

    @classmethod
    def renew_lease(cls, pk: int, owner: str, seconds: float) -> bool:
        """False when the lease is lost (expired and taken, or the subscription deleted)."""
        until = timezone.now() + timedelta(seconds=seconds)
        return bool(cls.objects.filter(pk=pk, lease_owner=owner).update(lease_until=until))

    @classmethod
    def release_lease(cls, pk: int, owner: str) -> None:
        cls.objects.filter(pk=pk, lease_owner=owner).update(lease_owner="", lease_until=None)


class WebhookDelivery(models.Model):
    """One notification queued for one subscription, and its fate. The body is fixed when the
    change queues it; `due_at` is when it is (next) sent, in real time (not the sandbox's
    clock, which tests move by days)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # given up after the last retry
    STATES = [(PENDING, PENDING), (DELIVERED, DELIVERED), (FAILED, FAILED)]

    subscription = models.ForeignKey(
        WebhookSubscription, on_delete=models.CASCADE, related_name="deliveries"
    )
    event_type = models.CharField(max_length=100)
    record_type = models.CharField(max_length=50)
    record_id = models.CharField(max_length=50)
    event_time = models.DateTimeField()
    body = models.TextField()
    state = models.CharField(max_length=10, choices=STATES, default=PENDING)
    due_at = models.DateTimeField()
    attempts = models.PositiveIntegerField(default=0)
    # Which injected faults made this delivery ("duplicate,delayed", ...): empty for an
    # ordinary one. See zywave.webhooks.FAULT_SETTINGS.
    faults = models.CharField(max_length=100, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        indexes = [
            models.Index(fields=["state", "due_at"], name="delivery_state_due"),
            models.Index(fields=["subscription", "state", "id"], name="delivery_subscription"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.record_id} -> {self.subscription_id} ({self.state})"

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.pk,
            "subscription": self.subscription_id,
            "user": self.subscription.user.username,
            "uri": self.subscription.uri,
            "event_type": self.event_type,
            "record_type": self.record_type,
            "record_id": self.record_id,
            "event_time": self.event_time.isoformat(),
            "body": self.body,
            "state": self.state,
            "faults": self.faults.split(",") if self.faults else [],
            "created": self.created.isoformat(),
            "due_at": self.due_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "attempts": [attempt.as_json() for attempt in self.attempt_log.all()],
        }


class WebhookAttempt(models.Model):
    """One POST of a delivery: when, how long, and the answer's status (None: no answer)."""

    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log"
    )
    at = models.DateTimeField()
    status = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=300, blank=True)
    duration_ms = models.PositiveIntegerField()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.delivery_id} at {self.at}: {self.status or self.error}"

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "status": self.status,
            "error": self.error,
            "duration_ms": self.duration_ms,
        }
