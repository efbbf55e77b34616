"""The portal's record of each person's Zywave link, and the audit trail around it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

from .fields import EncryptedTextField, token_fingerprint

# Zywave: "refresh tokens are valid for 30 days", most likely counted from the user's login
# and not extended by refreshing (zywave-api.md §1).
REFRESH_LIFETIME = timedelta(days=30)


class ConnectionQuerySet(models.QuerySet):
    def active(self) -> ConnectionQuerySet:
        return self.filter(status=Connection.Status.ACTIVE)


class Connection(models.Model):
    """One per portal user: their Zywave identity, tokens (encrypted) and health."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        REAUTH_REQUIRED = "reauth_required", "Re-authorization needed"
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
    requested_scopes = models.CharField(max_length=1000, blank=True)
    granted_scopes = models.CharField(max_length=1000, blank=True)
    # The original authorization (the user's login at Zywave): the 30-day refresh deadline
    # counts from here and only a new authorization resets it.
    authorized_at = models.DateTimeField(null=True, blank=True)

    last_refreshed_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    last_error_permanent = models.BooleanField(default=False)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ConnectionQuerySet.as_manager()

    class Meta:
        ordering = ["user__username"]

    def __str__(self) -> str:
        return f"{self.user} ↔ {self.zywave_email or self.zywave_subject}"

    @property
    def refresh_deadline(self) -> datetime | None:
        return self.authorized_at + REFRESH_LIFETIME if self.authorized_at else None

    @property
    def scopes(self) -> set[str]:
        return set(self.granted_scopes.split())

    def missing_scopes(self) -> list[str]:
        return [scope for scope in self.requested_scopes.split() if scope not in self.scopes]

    @property
    def can_sync_in_background(self) -> bool:
        """Without offline_access Zywave gives no refresh token: nothing runs without the person."""
        return "offline_access" in self.scopes and bool(self.refresh_token)

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
        self.access_token_expires_at = now + timedelta(seconds=max(seconds, 0))
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

    def disconnect(self, actor: Any, revoked: bool, reason: str = "") -> None:
        """Forget the tokens (the caller revoked them at Zywave first) and keep the history."""
        self.clear_tokens()
        self.status = self.Status.DISCONNECTED
        self.save()
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
        KEY_ROTATED = "key_rotated", "Encryption key rotated"

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


class EncryptionCanary(models.Model):
    """A known value, encrypted: a system check decrypts it at start to catch a wrong key."""

    value = EncryptedTextField()
    key_fingerprint = models.CharField(max_length=8)

    def __str__(self) -> str:
        return f"canary (key {self.key_fingerprint})"
