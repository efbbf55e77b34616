"""The portal's record of each person's Zywave link, and the audit trail around it."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import models, transaction
from django.db.models import Case, OuterRef, Q, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from . import notify
from .fields import EncryptedTextField, token_fingerprint
from .ratelimit import MIN_GAP, is_due

# Zywave: "refresh tokens are valid for 30 days", most likely counted from the user's login
# and not extended by refreshing (docs/zywave.md §1).
REFRESH_LIFETIME = timedelta(days=30)
# Owners are warned this long before that deadline (email, dashboard, admin filter and overview).
DEADLINE_NOTICE = timedelta(days=7)
# A resource whose list route answered 404 is skipped this long before it is asked again.
UNAVAILABLE_RETRY = timedelta(days=1)


class ConnectionQuerySet(models.QuerySet):
    def active(self) -> ConnectionQuerySet:
        return self.filter(status=Connection.Status.ACTIVE)

    def expiring_within(self, delta: timedelta) -> ConnectionQuerySet:
        """Active connections able to refresh whose access token ends within `delta`."""
        return self.active().filter(
            refresh_token__isnull=False, access_token_expires_at__lt=timezone.now() + delta
        )

    def due_for_deadline_warning(self) -> ConnectionQuerySet:
        """Active connections within DEADLINE_NOTICE of their 30-day deadline, not yet warned."""
        return self.active().filter(
            authorized_at__lt=timezone.now() + DEADLINE_NOTICE - REFRESH_LIFETIME,
            deadline_warned_at__isnull=True,
        )

    def sync_candidates(self, now: datetime | None = None) -> ConnectionQuerySet:
        """Connections able to sync (active, profile chosen) that never ran or whose last run
        was queued at least a tenth of their interval ago (`ratelimit.MIN_GAP`), annotated
        `last_queued` (their newest run's, read through the (connection, -queued_at) index:
        one lookup per connection, not an aggregate over every run). `due_batches` decides
        which of them are due. The interval is ZYWAVE_SYNC_INTERVAL_MINUTES, or
        ZYWAVE_WEBHOOK_POLL_MINUTES while Zywave's webhooks arrive for the connection (one
        within that time): the safety net, relaxed."""
        now = now or timezone.now()
        interval = timedelta(minutes=settings.ZYWAVE_SYNC_INTERVAL_MINUTES)
        relaxed = timedelta(minutes=settings.ZYWAVE_WEBHOOK_POLL_MINUTES)
        hooked = Q(hook_last_delivery_at__gt=now - relaxed)
        newest_run = SyncRun.objects.filter(connection=OuterRef("pk")).order_by("-queued_at")
        return (
            self.active()
            .filter(chosen_profile__isnull=False)
            .annotate(last_queued=Subquery(newest_run.values("queued_at")[:1]))
            .filter(
                Q(last_queued__isnull=True)
                | (~hooked & Q(last_queued__lt=now - interval * MIN_GAP))
                | (hooked & Q(last_queued__lt=now - relaxed * MIN_GAP))
            )
        )

    def due_batches(self, now: datetime | None = None, size: int = 500) -> Iterator[list[int]]:
        """The ids of the connections due for a scheduled sync, `size` at a time in id order:
        one query per batch, never every row at once. Due means its phase in the interval has
        come round since its last run (`ratelimit.is_due`: runs spread over the interval)."""
        now = now or timezone.now()
        interval = settings.ZYWAVE_SYNC_INTERVAL_MINUTES * 60
        relaxed = settings.ZYWAVE_WEBHOOK_POLL_MINUTES * 60
        hooked_since = now - timedelta(seconds=relaxed)
        candidates = self.sync_candidates(now).order_by("pk")
        after = 0
        while True:
            rows = list(
                candidates.filter(pk__gt=after).values_list(
                    "pk", "last_queued", "hook_last_delivery_at"
                )[:size]
            )
            if not rows:
                return
            after = rows[-1][0]
            due = [
                pk
                for pk, last, hooked_at in rows
                if is_due(
                    pk,
                    last.timestamp() if last else None,
                    now.timestamp(),
                    relaxed if hooked_at and hooked_at > hooked_since else interval,
                )
            ]
            if due:
                yield due
            if len(rows) < size:
                return

    def due_for_sync(self, now: datetime | None = None) -> ConnectionQuerySet:
        """The connections due for a scheduled sync (`due_batches`), as one queryset of their
        keys: for tests and small lists. Beat walks `due_batches` instead."""
        due = [pk for batch in self.due_batches(now) for pk in batch]
        return self.filter(pk__in=due).only("pk")

    def refresh_deadline_between(self, start: datetime | None, end: datetime) -> ConnectionQuerySet:
        """Active connections whose 30-day refresh deadline falls in [start, end)."""
        connections = self.active().filter(authorized_at__lt=end - REFRESH_LIFETIME)
        if start is not None:
            connections = connections.filter(authorized_at__gte=start - REFRESH_LIFETIME)
        return connections

    def with_health(self) -> ConnectionQuerySet:
        """Annotate `health`, the state people act on (see `Connection.Health`).

        Computed in SQL so that lists can filter, sort and count by it. A transient refresh
        failure outranks a missing profile: it is the one an admin can do something about.
        """
        return self.annotate(
            health=Case(
                When(
                    status=Connection.Status.DISCONNECTED,
                    then=Value(Connection.Health.DISCONNECTED),
                ),
                When(
                    status=Connection.Status.REAUTH_REQUIRED,
                    then=Value(Connection.Health.REAUTH_REQUIRED),
                ),
                When(
                    ~Q(last_error="") & Q(last_error_permanent=False),
                    then=Value(Connection.Health.REFRESH_FAILING),
                ),
                When(chosen_profile__isnull=True, then=Value(Connection.Health.NEEDS_PROFILE)),
                default=Value(Connection.Health.ACTIVE),
                output_field=models.CharField(),
            )
        )

    def with_last_sync(self) -> ConnectionQuerySet:
        """Annotate `last_sync_*` from each connection's latest run: correlated subqueries in
        the one SELECT, so a page of connections costs one query however many runs exist."""
        latest = SyncRun.objects.filter(connection=OuterRef("pk")).order_by("-queued_at", "-id")
        return self.annotate(
            **{
                f"last_sync_{name}": Subquery(latest.values(field)[:1])
                for name, field in (
                    ("id", "pk"),
                    ("state", "state"),
                    ("queued_at", "queued_at"),
                    ("started_at", "started_at"),
                    ("finished_at", "finished_at"),
                    ("records", "records_done"),
                    ("error", "error"),
                )
            }
        )

    def last_sync_failed(self) -> ConnectionQuerySet:
        """Connections whose latest run failed or stopped part way (needs `with_last_sync`)."""
        return self.filter(last_sync_state__in=SyncRun.FAILED_STATES)


class Connection(models.Model):
    """One per portal user: their Zywave identity, tokens (encrypted) and health."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        REAUTH_REQUIRED = "reauth_required", "Re-authorization needed"
        DISCONNECTED = "disconnected", "Disconnected"

    class Health(models.TextChoices):
        """What the status means for people: `active` split by what is wrong with it."""

        ACTIVE = "active", "Active"
        REFRESH_FAILING = "refresh_failing", "Refresh failing"
        REAUTH_REQUIRED = "reauth_required", "Re-authorization needed"
        NEEDS_PROFILE = "needs_profile", "Profile needed"
        DISCONNECTED = "disconnected", "Disconnected"

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="zywave_connection"
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ACTIVE)

    zywave_subject = models.CharField("Zywave subject", max_length=255, db_index=True)
    zywave_email = models.CharField("Zywave email", max_length=254, blank=True)
    zywave_name = models.CharField("Zywave name", max_length=255, blank=True)

    access_token = EncryptedTextField(null=True, blank=True)
    refresh_token = EncryptedTextField(null=True, blank=True)
    access_token_fingerprint = models.CharField(max_length=12, blank=True)
    refresh_token_fingerprint = models.CharField(max_length=12, blank=True)
    access_token_expires_at = models.DateTimeField(null=True, blank=True)
    # Seconds the current access token was issued for (`expires_in`): the refresh margin is a
    # share of it, so short-lived tokens are not refreshed on every call.
    access_token_lifetime = models.PositiveIntegerField(null=True, blank=True)
    requested_scopes = models.CharField(max_length=1000, blank=True)
    granted_scopes = models.CharField(max_length=1000, blank=True)
    # The original authorization (the user's login at Zywave): the 30-day refresh deadline
    # counts from here and only a new authorization resets it.
    authorized_at = models.DateTimeField(null=True, blank=True)

    chosen_profile = models.ForeignKey(
        "Profile", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    profiles_listed_at = models.DateTimeField(null=True, blank=True)
    # Mirrored resources whose list route Zywave answered 404 for this connection, with when
    # that was seen ({"contacts": "2026-12-01T10:00:00+00:00"}): skipped by syncs, retried daily.
    unavailable_resources = models.JSONField(default=dict, blank=True)

    last_refreshed_at = models.DateTimeField(null=True, blank=True)
    # Notifications sent for the current incident / deadline (reset by reconnecting).
    reauth_notified_at = models.DateTimeField(null=True, blank=True)
    deadline_warned_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    last_error_permanent = models.BooleanField(default=False)

    # Zywave's webhooks: the secret part of the receiver URL (/hooks/zywave/<token>/), kept
    # encrypted so the dashboard can show the URL, and found by its SHA-256 (integrations/hooks.py).
    hook_token = EncryptedTextField(null=True, blank=True)
    hook_token_hash = models.CharField(max_length=64, null=True, blank=True, unique=True)
    hook_token_rotated_at = models.DateTimeField(null=True, blank=True)
    # The last notification Zywave delivered (written at most every few seconds): while they
    # arrive, polling relaxes to ZYWAVE_WEBHOOK_POLL_MINUTES.
    hook_last_delivery_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ConnectionQuerySet.as_manager()

    class Meta:
        ordering = ["user__username"]

    def __str__(self) -> str:
        return f"{self.user} ↔ {self.zywave_email or self.zywave_subject}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.hook_token_hash is None and not kwargs.get("update_fields"):
            # Every connection has its receiver URL for Zywave's webhooks from the start, so
            # showing it (a GET) never writes.
            self.set_hook_token(secrets.token_urlsafe(32))
        super().save(*args, **kwargs)

    def set_hook_token(self, token: str) -> None:
        """The receiver token (43 random characters: 256 bits), kept encrypted for the
        dashboard and found by its SHA-256 (`integrations/hooks.py`)."""
        self.hook_token = token
        self.hook_token_hash = hashlib.sha256(token.encode()).hexdigest()
        self.hook_token_rotated_at = timezone.now()

    @property
    def refresh_deadline(self) -> datetime | None:
        return self.authorized_at + REFRESH_LIFETIME if self.authorized_at else None

    @property
    def scopes(self) -> set[str]:
        return set(self.granted_scopes.split())

    def missing_scopes(self) -> list[str]:
        return [scope for scope in self.requested_scopes.split() if scope not in self.scopes]

    @property
    def can_refresh(self) -> bool:
        """Without offline_access Zywave gives no refresh token: once the access token ends,
        nothing runs in the background until the person signs in again."""
        return "offline_access" in self.scopes and bool(self.refresh_token)

    @property
    def can_sync(self) -> bool:
        """A sync may be queued: the grant is live and a profile is chosen."""
        return self.status == self.Status.ACTIVE and self.chosen_profile_id is not None

    @property
    def owner_email(self) -> str:
        return str(self.user.email or self.zywave_email or "")

    @property
    def is_connected(self) -> bool:
        return self.status != self.Status.DISCONNECTED

    def set_tokens(self, response: dict[str, Any], now: datetime | None = None) -> None:
        """Take the tokens of a token response (in memory; the caller saves)."""
        now = now or timezone.now()
        self.access_token = response["access_token"]
        self.access_token_fingerprint = token_fingerprint(self.access_token)
        refresh = response.get("refresh_token")
        if refresh:
            self.refresh_token = refresh
            self.refresh_token_fingerprint = token_fingerprint(refresh)
        expires_in = response.get("expires_in")
        try:
            seconds = int(expires_in) if expires_in is not None else 3600
        except (TypeError, ValueError):
            seconds = 3600
        # Between 0 and the column's range (68 years): a huge `expires_in` would otherwise
        # overflow the date, or the integer column on PostgreSQL.
        seconds = min(max(seconds, 0), 2**31 - 1)
        self.access_token_expires_at = now + timedelta(seconds=seconds)
        self.access_token_lifetime = seconds
        scope = response.get("scope")
        if isinstance(scope, list):
            scope = " ".join(str(item) for item in scope)
        if scope:
            self.granted_scopes = " ".join(sorted(set(str(scope).split())))

    def clear_tokens(self) -> None:
        self.access_token = None
        self.refresh_token = None
        self.access_token_fingerprint = ""
        self.refresh_token_fingerprint = ""
        self.access_token_expires_at = None

    def mark_reauth_required(self, reason: str) -> bool:
        """The grant has ended: stop using it until the person connects again, and tell them
        once for this incident (after the transaction commits). True when this ended it (it
        was active): `tokens.end_grant` then announces it to webhooks, once."""
        first = self.status == self.Status.ACTIVE
        self.status = self.Status.REAUTH_REQUIRED
        self.last_error = reason[:500]
        self.last_error_at = timezone.now()
        self.last_error_permanent = True
        if first and self.reauth_notified_at is None:
            self.reauth_notified_at = timezone.now()
            transaction.on_commit(self.notify_reauth_required)
        self.save()
        self.record(ConnectionEvent.Kind.REAUTH_REQUIRED, reason=reason)
        return first

    def notify_reauth_required(self) -> bool:
        return notify.send_reauth_required(self.owner_email, self, self.last_error)

    def notify_deadline_approaching(self) -> bool:
        return notify.send_deadline_warning(self.owner_email, self)

    def record_refresh_failure(self, reason: str, **detail: Any) -> None:
        """A transient failure: keep the tokens, stay active, remember what happened."""
        self.last_error = reason[:500]
        self.last_error_at = timezone.now()
        self.last_error_permanent = False
        self.save(update_fields=["last_error", "last_error_at", "last_error_permanent"])
        self.record(ConnectionEvent.Kind.REFRESH_FAILED, reason=reason, **detail)

    @property
    def needs_profile(self) -> bool:
        return self.status == self.Status.ACTIVE and self.chosen_profile_id is None

    def profile_header(self) -> str | None:
        """The explicit `Profile` header for v2 calls (docs/zywave.md §3), None if none chosen.

        `Profile: Token {ProfileToken}` by default, `Profile: {TypeCode} {ID}` when
        ZYWAVE_PROFILE_HEADER=id. Never rely on Zywave's implicit active profile.
        """
        profile = self.chosen_profile
        if profile is None:
            return None
        if settings.ZYWAVE_PROFILE_HEADER == "id":
            return f"{profile.type_code} {profile.zywave_id}"
        if not profile.profile_token:
            return None
        return f"Token {profile.profile_token}"

    def skips_resource(self, resource: str, now: datetime | None = None) -> bool:
        """Zywave answered 404 for this resource's list less than UNAVAILABLE_RETRY ago."""
        seen = self.unavailable_resources.get(resource)
        when = datetime.fromisoformat(seen) if isinstance(seen, str) else None
        return when is not None and when > (now or timezone.now()) - UNAVAILABLE_RETRY

    def set_resource_available(self, resource: str, available: bool) -> None:
        """Record what the list route answered (a 404, or a page again), saving only a change."""
        marks = dict(self.unavailable_resources)
        if available and resource not in marks:
            return
        if available:
            marks.pop(resource)
        else:
            marks[resource] = timezone.now().isoformat()
        Connection.objects.filter(pk=self.pk).update(unavailable_resources=marks)
        self.unavailable_resources = marks

    def clear_mirror(self) -> None:
        """Delete every mirrored record of the connection, tombstones too (disconnect)."""
        for model in mirror_models():
            model.all_rows.filter(connection=self).delete()  # type: ignore[attr-defined,misc]

    def disconnect(self, actor: Any, revoked: bool, reason: str = "") -> None:
        """Forget the tokens (the caller revoked them at Zywave first), the profile token and
        the mirror; keep the history."""
        self.clear_tokens()
        self.status = self.Status.DISCONNECTED
        self.chosen_profile = None
        self.save()
        self.sync_runs.cancel("disconnected")  # first: a running worker stops at its next page
        self.profiles.all().delete()
        self.clear_mirror()
        self.record(ConnectionEvent.Kind.DISCONNECTED, actor=actor, revoked=revoked, reason=reason)

    def record(self, kind: str, actor: Any = None, **detail: Any) -> ConnectionEvent:
        return ConnectionEvent.objects.create(
            user_id=self.user_id,
            connection=self,
            kind=kind,
            actor=actor if actor is not None and actor.pk else None,
            detail=detail,
        )


class ConnectionEvent(models.Model):
    """Append-only audit of what happened to a connection. Never holds a secret."""

    class Kind(models.TextChoices):
        CONNECTED = "connected", "Connected"
        RECONNECTED = "reconnected", "Reconnected"
        DISCONNECTED = "disconnected", "Disconnected"
        CONNECT_FAILED = "connect_failed", "Connect failed"
        SCOPES_REDUCED = "scopes_reduced", "Fewer scopes granted than asked"
        REFRESHED = "refreshed", "Token refreshed"
        REFRESH_FAILED = "refresh_failed", "Token refresh failed"
        REAUTH_REQUIRED = "reauth_required", "Re-authorization needed"
        PROFILE_CHOSEN = "profile_chosen", "Profile chosen"
        PROFILE_LOST = "profile_lost", "Chosen profile no longer offered"
        MIRROR_CLEARED = "mirror_cleared", "Mirror cleared"
        REFRESH_REQUESTED = "refresh_requested", "Token refresh requested by an admin"
        SYNC_REQUESTED = "sync_requested", "Sync requested by an admin"
        REMINDER_SENT = "reminder_sent", "Reconnect reminder sent"
        OLD_GRANT_REVOKED = "old_grant_revoked", "Replaced grant revoked at Zywave"
        LINK_REMOVED = "link_removed", "Zywave identity link removed by an admin"
        API_KEY_CREATED = "api_key_created", "API key created"
        API_KEY_REVOKED = "api_key_revoked", "API key revoked"
        WEBHOOK_SUBSCRIBED = "webhook_subscribed", "Webhook subscription created"
        WEBHOOK_CHANGED = "webhook_changed", "Webhook subscription changed"
        WEBHOOK_SECRET_ROTATED = "webhook_secret_rotated", "Webhook signing secret rotated"
        WEBHOOK_DISABLED = "webhook_disabled", "Webhook subscription disabled"
        WEBHOOK_ENABLED = "webhook_enabled", "Webhook subscription enabled"
        WEBHOOK_DELETED = "webhook_deleted", "Webhook subscription deleted"
        HOOK_TOKEN_ROTATED = "hook_token_rotated", "Zywave receiver URL made or changed"
        DOCTOR_RUN = "doctor_run", "Zywave doctor run"

    # The person the event concerns; the connection when one exists (a first connect that
    # failed has none).
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="zywave_events"
    )
    connection = models.ForeignKey(
        Connection, null=True, blank=True, on_delete=models.CASCADE, related_name="events"
    )
    kind = models.CharField(max_length=40, choices=Kind.choices)
    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} at {self.at:%Y-%m-%d %H:%M}"


class Profile(models.Model):
    """A profile Zywave lists for a connection. Only the chosen one holds its ProfileToken."""

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="profiles")
    type_code = models.CharField(max_length=10)
    zywave_id = models.CharField("Zywave id", max_length=64)
    name = models.CharField(max_length=255, blank=True)
    organization = models.CharField(max_length=255, blank=True)
    is_current = models.BooleanField(
        default=False, help_text="Zywave's active profile for the user when last listed."
    )
    profile_token = EncryptedTextField(null=True, blank=True)
    profile_token_fingerprint = models.CharField(max_length=12, blank=True)
    listed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name", "zywave_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "type_code", "zywave_id"], name="unique_profile"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name or self.zywave_id} ({self.type_code} {self.zywave_id})"


class EncryptionCanary(models.Model):
    """A known value, encrypted: a system check decrypts it at start to catch a wrong key."""

    value = EncryptedTextField()
    key_fingerprint = models.CharField(max_length=8)

    def __str__(self) -> str:
        return f"canary (key {self.key_fingerprint})"


class SyncRunQuerySet(models.QuerySet):
    def active(self) -> SyncRunQuerySet:
        return self.filter(state__in=SyncRun.ACTIVE_STATES)

    def stale(self, now: datetime | None = None) -> SyncRunQuerySet:
        """Active runs nobody is working on: running with an expired lease (the worker died),
        or queued for longer than ZYWAVE_SYNC_REQUEUE_SECONDS (the task message may have died
        with a killed worker: Redis gives it back only after its visibility timeout)."""
        now = now or timezone.now()
        requeue_after = timedelta(seconds=settings.ZYWAVE_SYNC_REQUEUE_SECONDS)
        return self.active().filter(
            Q(lease_until__lt=now) | Q(lease_until__isnull=True, queued_at__lt=now - requeue_after)
        )

    def past_history(self, before: datetime) -> SyncRunQuerySet:
        """Finished runs that ended before `before`, except each connection's newest successful
        run and newest successful full run (the next run reads their marks and date)."""
        done = self.filter(finished_at__lt=before).exclude(state__in=SyncRun.ACTIVE_STATES)
        succeeded = SyncRun.objects.filter(
            connection=OuterRef("connection"), state=SyncRun.State.SUCCEEDED
        ).order_by("-finished_at")
        newest = Coalesce(Subquery(succeeded.values("pk")[:1]), Value(0))
        newest_full = Coalesce(Subquery(succeeded.filter(full=True).values("pk")[:1]), Value(0))
        return done.exclude(pk=newest).exclude(pk=newest_full)

    def cancel(self, reason: str) -> int:
        """End queued or running runs; a worker running one stops before its next page."""
        return self.active().update(
            state=SyncRun.State.FAILED, error=reason, finished_at=timezone.now(), lease_until=None
        )


class SyncRun(models.Model):
    """One attempt to mirror a connection's accounts and contacts, with its progress.

    Progress is committed with each page, so a run whose worker died resumes from its last
    committed page. At most one queued or running run per connection (a partial unique index).
    """

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        PARTIAL = "partial", "Partly done"
        FAILED = "failed", "Failed"

    ACTIVE_STATES = (State.QUEUED, State.RUNNING)
    FAILED_STATES = (State.FAILED, State.PARTIAL)

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="sync_runs")
    full = models.BooleanField(default=False)
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    trigger = models.CharField(max_length=20, default="schedule")
    queued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The worker holding the run renews this lease with every page; an expired lease means the
    # worker died and another may resume the run.
    lease_until = models.DateTimeField(null=True, blank=True)
    # Who holds the lease (a random token per claim): every write of the run checks it, so a
    # worker whose lease lapsed and was taken over stops instead of advancing the run too.
    lease_owner = models.CharField(max_length=32, blank=True)
    resource = models.CharField(max_length=20, default="accounts")
    skip = models.PositiveIntegerField(default=0)
    pages_done = models.PositiveIntegerField(default=0)
    records_done = models.PositiveIntegerField(default=0)
    # Records Zywave sent that could not be mirrored (an unusable id): skipped and counted.
    records_skipped = models.PositiveIntegerField(default=0)
    total_reported = models.PositiveIntegerField(null=True, blank=True)
    # Highest `updatedDateTime` seen per resource: the next incremental run starts there.
    marks = models.JSONField(default=dict, blank=True)
    error = models.CharField(max_length=500, blank=True)

    objects = SyncRunQuerySet.as_manager()

    class Meta:
        ordering = ["-queued_at", "-id"]
        get_latest_by = "queued_at"
        constraints = [
            models.UniqueConstraint(
                fields=["connection"],
                condition=models.Q(state__in=["queued", "running"]),
                name="one_active_sync_per_connection",
            )
        ]
        indexes = [
            models.Index(fields=["connection", "state", "-finished_at"]),
            models.Index(fields=["connection", "-queued_at"]),
        ]

    def __str__(self) -> str:
        return f"{'Full' if self.full else 'Incremental'} sync {self.pk} ({self.state})"

    @property
    def is_active(self) -> bool:
        return self.state in self.ACTIVE_STATES

    @property
    def duration(self) -> timedelta | None:
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None

    @property
    def percent(self) -> int | None:
        """Progress through the totals Zywave reported, when it reported them."""
        if not self.total_reported:
            return None
        return min(100, round(100 * self.records_done / self.total_reported))


class MirrorQuerySet(models.QuerySet):
    def live(self) -> MirrorQuerySet:
        return self.filter(deleted_at__isnull=True)

    def tombstones(self) -> MirrorQuerySet:
        return self.filter(deleted_at__isnull=False)


# The portal's pages, the admin and related managers (`connection.accounts`) see live records
# only; tombstones are for the API's incremental pulls (`all_rows`).
LiveRecords = models.Manager.from_queryset(MirrorQuerySet)


class LiveManager(LiveRecords):  # type: ignore[misc,valid-type]
    def get_queryset(self) -> MirrorQuerySet:
        return MirrorQuerySet(self.model, using=self._db).live()


def mirror_models() -> list[type[MirrorRecord]]:
    """Every concrete mirror model, by rule (a subclass of MirrorRecord, in any app)."""
    return [model for model in apps.get_models() if issubclass(model, MirrorRecord)]


class MirrorRecord(models.Model):
    """What every mirrored Zywave record has: its id, the raw record, and when the portal's
    copy was seen, written and last changed. A record gone from Zywave stays a while as a
    tombstone (`deleted_at` set, content cleared) so that incremental API pulls learn of it."""

    zywave_id = models.CharField("Zywave id", max_length=64)
    updated_at_zywave = models.DateTimeField(null=True, blank=True)
    raw = models.JSONField(default=dict)
    seen_in_run = models.BigIntegerField(null=True, blank=True)
    synced_at = models.DateTimeField(default=timezone.now)
    # When the portal's copy last changed (created, content changed, revived or deleted): the
    # upsert leaves it alone on rows a sync saw unchanged. The API's cursor and `updated_since`.
    changed_at = models.DateTimeField(default=timezone.now)
    deleted_at = models.DateTimeField(null=True, blank=True)

    objects = LiveManager()
    all_rows = LiveRecords()

    class Meta:
        abstract = True
        base_manager_name = "all_rows"
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "zywave_id"], name="unique_%(class)s_per_connection"
            )
        ]
        indexes = [
            models.Index(fields=["connection", "changed_at", "id"], name="%(class)s_changes")
        ]

    @property
    def is_tombstone(self) -> bool:
        return self.deleted_at is not None


class Account(MirrorRecord):
    """The mirror of one Zywave account, keyed by (connection, Zywave id)."""

    # No index of its own on `connection`: the unique (connection, zywave_id) index leads with
    # it, and every index less is one less to maintain on each page's upsert.
    connection = models.ForeignKey(
        Connection, on_delete=models.CASCADE, related_name="accounts", db_index=False
    )
    name = models.CharField(max_length=255, blank=True)
    classification = models.CharField(max_length=100, blank=True)
    lines_of_business = models.CharField(max_length=500, blank=True)
    client_size = models.CharField(max_length=50, blank=True)
    number_of_employees = models.IntegerField(null=True, blank=True)
    is_active = models.BooleanField(default=True)
    is_archived = models.BooleanField(default=False)
    city = models.CharField(max_length=100, blank=True)
    state = models.CharField(max_length=50, blank=True)

    class Meta(MirrorRecord.Meta):
        ordering = ["name", "zywave_id"]
        indexes = [
            *MirrorRecord.Meta.indexes,
            models.Index(fields=["connection", "name"]),
        ]

    def __str__(self) -> str:
        return self.name or self.zywave_id


class Contact(MirrorRecord):
    """The mirror of one Zywave contact, keyed by (connection, Zywave id)."""

    connection = models.ForeignKey(
        Connection, on_delete=models.CASCADE, related_name="contacts", db_index=False
    )
    account_zywave_id = models.CharField("Zywave account id", max_length=64, blank=True)
    first_name = models.CharField(max_length=100, blank=True)
    last_name = models.CharField(max_length=100, blank=True)
    email = models.CharField(max_length=254, blank=True)
    title = models.CharField(max_length=150, blank=True)
    work_phone = models.CharField(max_length=50, blank=True)
    mobile_phone = models.CharField(max_length=50, blank=True)
    is_primary = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    is_archived = models.BooleanField(default=False)

    class Meta(MirrorRecord.Meta):
        ordering = ["-is_primary", "last_name", "first_name"]
        indexes = [
            *MirrorRecord.Meta.indexes,
            models.Index(fields=["connection", "account_zywave_id"]),
        ]

    def __str__(self) -> str:
        return f"{self.first_name} {self.last_name}".strip() or self.zywave_id


class ApiKeyQuerySet(models.QuerySet):
    def usable(self, now: datetime | None = None) -> ApiKeyQuerySet:
        """Neither revoked nor expired."""
        now = now or timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=now)
        )


class ApiKey(models.Model):
    """A key another system uses to call the integration API as its owner, and only as them.

    Only a hash of the key is stored, with a short prefix in clear to tell keys apart; the key
    itself is shown once, when it is made (`integrations.api.keys.issue`).
    """

    class Scope(models.TextChoices):
        READ = "read", "read: the connection's status and the mirror"
        SYNC = "sync", "sync: start syncs"
        PROXY = "proxy", "proxy: GET requests to Zywave through the proxy"
        PROXY_WRITE = "proxy:write", "proxy:write: other methods through the proxy"
        WEBHOOKS = "webhooks", "webhooks: manage webhook subscriptions"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    hashed_key = models.CharField(max_length=64)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_usable(self) -> bool:
        return self.revoked_at is None and not self.is_expired

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.is_expired else "active"

    def revoke(self, actor: Any) -> bool:
        """Revoke, audited; False when it already was. Effective on the key's next request."""
        changed = ApiKey.objects.filter(pk=self.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now(), revoked_by=actor if actor is not None and actor.pk else None
        )
        if not changed:
            return False
        self.refresh_from_db(fields=["revoked_at", "revoked_by"])
        self.audit(ConnectionEvent.Kind.API_KEY_REVOKED, actor)
        return True

    def audit(self, kind: str, actor: Any, **detail: Any) -> ConnectionEvent:
        """Record what happened to the key on its owner's audit trail: its prefix and name,
        never the key."""
        return ConnectionEvent.objects.create(
            user_id=self.owner_id,
            connection=Connection.objects.filter(user_id=self.owner_id).first(),
            kind=kind,
            actor=actor if actor is not None and actor.pk else None,
            detail={"key": self.prefix, "name": self.name, **detail},
        )


class Policy(MirrorRecord):
    """The mirror of one Zywave policy, keyed by (connection, Zywave id)."""

    connection = models.ForeignKey(
        Connection, on_delete=models.CASCADE, related_name="policies", db_index=False
    )
    account_zywave_id = models.CharField("Zywave account id", max_length=64, blank=True)
    policy_number = models.CharField(max_length=100, blank=True)
    line_of_business = models.CharField(max_length=100, blank=True)
    carrier_name = models.CharField(max_length=200, blank=True)
    effective_date = models.DateField(null=True, blank=True)
    expiration_date = models.DateField(null=True, blank=True)
    # Money: a Decimal end to end (Zywave's JSON number read as its text, never as a float).
    premium = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    is_active = models.BooleanField(default=True)
    is_archived = models.BooleanField(default=False)

    class Meta(MirrorRecord.Meta):
        verbose_name_plural = "policies"
        ordering = ["expiration_date", "policy_number", "zywave_id"]
        indexes = [
            *MirrorRecord.Meta.indexes,
            models.Index(fields=["connection", "expiration_date"]),
            models.Index(fields=["connection", "account_zywave_id"]),
        ]

    def __str__(self) -> str:
        return self.policy_number or self.zywave_id


class WebhookSubscription(models.Model):
    """An endpoint of the owner's that hears about the owner's events, signed with its secret.

    The secret is shown once, when it is made or rotated; after a rotation the previous one
    still signs too (a second signature in the header) until `previous_secret_until`.
    """

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        DISABLED = "disabled", "Disabled"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_subscriptions"
    )
    url = models.CharField("URL", max_length=2000)
    events = models.JSONField(default=list)
    state = models.CharField(max_length=10, choices=State.choices, default=State.ACTIVE)
    secret = EncryptedTextField()
    previous_secret = EncryptedTextField(null=True, blank=True)
    previous_secret_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    disabled_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.CharField(max_length=300, blank=True)
    # The last sequence number given to one of its deliveries: raised in the transaction that
    # writes the delivery, so the numbers a receiver sees have no gaps.
    last_sequence = models.BigIntegerField(default=0)
    # One worker at a time delivers to an endpoint (a slow receiver holds one worker, not all).
    lease_until = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=32, blank=True)
    # The receiver asked us to wait (429 or 503 with Retry-After), or its last attempt failed:
    # nothing is sent to it before this.
    paused_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "webhook subscription"

    def __str__(self) -> str:
        return f"{self.url} ({self.state})"

    @property
    def is_active(self) -> bool:
        return self.state == self.State.ACTIVE

    def listens_to(self, event_type: str) -> bool:
        return event_type in self.events or event_type == WEBHOOK_TEST_EVENT

    def secrets_now(self, now: datetime | None = None) -> list[str]:
        """The secrets that sign a delivery now: the current one, and the previous one during
        the overlap after a rotation."""
        now = now or timezone.now()
        keys = [self.secret]
        if self.previous_secret and self.previous_secret_until and self.previous_secret_until > now:
            keys.append(self.previous_secret)
        return keys


# The event a subscription's "Send test event" sends: to that subscription only.
WEBHOOK_TEST_EVENT = "webhook.test"


class WebhookEvent(models.Model):
    """Something that happened to an owner's connection or mirror, written in the transaction
    that made it happen (the outbox). One row per event; a delivery per subscription."""

    id = models.CharField(primary_key=True, max_length=40)  # msg_…: the webhook-id
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_events"
    )
    type = models.CharField(max_length=60)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.type} {self.id}"


class WebhookDeliveryQuerySet(models.QuerySet):
    def due(self, now: datetime | None = None) -> WebhookDeliveryQuerySet:
        return self.filter(
            state=WebhookDelivery.State.PENDING, next_attempt_at__lte=now or timezone.now()
        )

    def undelivered(self) -> WebhookDeliveryQuerySet:
        return self.filter(state__in=[WebhookDelivery.State.PENDING, WebhookDelivery.State.FAILED])


class WebhookDelivery(models.Model):
    """One event for one subscription: its sequence number there, and where delivery stands."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    subscription = models.ForeignKey(
        WebhookSubscription, on_delete=models.CASCADE, related_name="deliveries"
    )
    event = models.ForeignKey(WebhookEvent, on_delete=models.CASCADE, related_name="deliveries")
    sequence = models.BigIntegerField()
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_status = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)

    objects = WebhookDeliveryQuerySet.as_manager()

    class Meta:
        ordering = ["-sequence"]
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "sequence"], name="one_sequence_per_subscription"
            ),
            models.UniqueConstraint(
                fields=["subscription", "event"], name="one_delivery_per_event"
            ),
        ]
        indexes = [
            models.Index(
                fields=["subscription", "next_attempt_at"],
                condition=models.Q(state="pending"),
                name="webhook_due",
            ),
            models.Index(fields=["subscription", "-created_at"]),
        ]

    def __str__(self) -> str:
        return f"#{self.sequence} {self.event_id} ({self.state})"


class WebhookAttempt(models.Model):
    """The log of one attempt: when, how long, what the receiver answered (a short excerpt,
    never its headers)."""

    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log"
    )
    at = models.DateTimeField(default=timezone.now)
    duration_ms = models.PositiveIntegerField(default=0)
    status = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=300, blank=True)
    response_excerpt = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.status or self.error} at {self.at:%Y-%m-%d %H:%M:%S}"

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class ZywaveNotification(models.Model):
    """One notification Zywave delivered to a connection's receiver: written before the 202,
    so a delivery Zywave saw acknowledged is never lost; then the record is fetched again."""

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        APPLIED = "applied", "Applied"
        FAILED = "failed", "Failed"

    connection = models.ForeignKey(
        Connection, on_delete=models.CASCADE, related_name="zywave_notifications"
    )
    received_at = models.DateTimeField(default=timezone.now)
    event_type = models.CharField(max_length=100)
    resource = models.CharField(max_length=20)
    record_id = models.CharField(max_length=64)
    event_at = models.DateTimeField()
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    applied_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [
            models.Index(fields=["connection", "-received_at"]),
            models.Index(
                fields=["connection", "resource", "record_id"],
                condition=models.Q(state="queued"),
                name="zywave_notification_queued",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.resource}/{self.record_id} ({self.state})"


class DoctorReport(models.Model):
    """One run of the Zywave doctor on a connection (integrations/doctor.py), asked for in the
    admin and run by a worker: its progress while it runs, then the report and the shapes it
    recorded. Neither holds a secret or a record's value: only verdicts, shapes, counts and
    header names."""

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    connection = models.ForeignKey(
        Connection, on_delete=models.CASCADE, related_name="doctor_reports"
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    # What the doctor is doing now ("profiles"), and how far it is.
    step = models.CharField(max_length=100, blank=True)
    steps_done = models.PositiveSmallIntegerField(default=0)
    steps_total = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The worst verdict of the report ("ok", "warn", "fail"), once done.
    worst = models.CharField(max_length=4, blank=True)
    report = models.JSONField(default=dict, blank=True)
    shapes = models.JSONField(default=dict, blank=True)
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["connection", "-created_at"])]

    def __str__(self) -> str:
        return f"Doctor report {self.pk} ({self.state})"

    @property
    def is_finished(self) -> bool:
        return self.state in (self.State.DONE, self.State.FAILED)
