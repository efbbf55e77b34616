"""Profiles: which Zywave agency context the portal acts under (docs/zywave.md §3)."""

from __future__ import annotations

import logging
import re
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from . import mirror, webhooks
from .client import SAFE_ID, ZywaveClient
from .fields import token_fingerprint
from .models import Connection, ConnectionEvent, Profile

log = logging.getLogger(__name__)

# Ids and type codes go into a request header: accept only what cannot inject anything (the
# id rule is the mirror's too: `client.SAFE_ID`). fullmatch: `$` would let a trailing newline in.
SAFE_TYPE_CODE = re.compile(r"[A-Za-z0-9]{1,10}")


class ProfileRefused(Exception):
    """The submitted profile is not one Zywave listed for this connection."""


class ConnectionChanged(Exception):
    """While Zywave was asked, the connection was disconnected, re-linked or its profiles
    replaced: nothing is stored, the person starts again from what is there now."""


def _text(record: dict[str, Any], *keys: str) -> str:
    for key in keys:
        value = record.get(key)
        if value not in (None, ""):
            return str(value)[:255]  # NUL never gets here: the client replaces it on reading
    return ""


def refresh_profiles(connection: Connection, client: ZywaveClient) -> list[Profile]:
    """Re-read the connection's profiles from Zywave and store the list.

    A chosen profile that Zywave no longer offers is dropped: the connection then needs a new
    choice and syncs pause. Zywave failing raises before anything is changed.
    """
    type_code = settings.ZYWAVE_PROFILE_TYPE_CODE
    listed = client.profiles(type_code)
    try:
        current_id = str(client.current_profile(type_code).get("id", ""))
    except Exception:  # noqa: BLE001  (a hint only: the list stands without it)
        current_id = ""
    records = {}
    for record in listed:
        zywave_id = str(record.get("id", ""))
        code = str(record.get("typecode") or type_code)
        if not SAFE_ID.fullmatch(zywave_id) or not SAFE_TYPE_CODE.fullmatch(code):
            log.warning("Ignoring a profile with an unusable id from Zywave")
            continue
        records[(code, zywave_id)] = record
    now = timezone.now()
    with transaction.atomic():
        locked = Connection.objects.select_for_update(no_key=True).get(pk=connection.pk)
        if (
            locked.status == Connection.Status.DISCONNECTED
            or locked.zywave_subject != connection.zywave_subject
        ):
            # Disconnected, or re-linked to another identity, while the list was asked: these
            # are the old identity's profiles.
            raise ConnectionChanged(f"connection {locked.pk} changed while Zywave was asked")
        chosen = locked.chosen_profile
        for (code, zywave_id), record in records.items():
            Profile.objects.update_or_create(
                connection=locked,
                type_code=code,
                zywave_id=zywave_id,
                defaults={
                    "name": _text(record, "name", "displayname"),
                    "organization": _text(
                        record, "organizationname", "agencyname", "brokername", "organization"
                    ),
                    "is_current": zywave_id == current_id,
                    "listed_at": now,
                },
            )
        gone = locked.profiles.exclude(listed_at=now)
        if chosen is not None and gone.filter(pk=chosen.pk).exists():
            locked.record(
                ConnectionEvent.Kind.PROFILE_LOST, profile=chosen.zywave_id, name=chosen.name
            )
        gone.delete()
        locked.profiles_listed_at = now
        locked.save(update_fields=["profiles_listed_at", "updated_at"])
    connection.refresh_from_db()
    return list(connection.profiles.all())


def choose_profile(
    connection: Connection, client: ZywaveClient, zywave_id: str, actor: Any
) -> Profile:
    """Choose one of the listed profiles: fetch its ProfileToken and store it encrypted."""
    if not SAFE_ID.fullmatch(zywave_id):  # before any query: PostgreSQL refuses NUL in text
        raise ProfileRefused(zywave_id)
    profile = connection.profiles.filter(
        type_code=settings.ZYWAVE_PROFILE_TYPE_CODE, zywave_id=zywave_id
    ).first()
    if profile is None:
        raise ProfileRefused(zywave_id)
    detail = client.profile(profile.type_code, profile.zywave_id)
    token = detail.get("profiletoken")
    if settings.ZYWAVE_PROFILE_HEADER == "token" and not (isinstance(token, str) and token):
        from .client import MalformedResponse

        raise MalformedResponse("Zywave's profile answer has no ProfileToken")
    with transaction.atomic():
        locked = Connection.objects.select_for_update(no_key=True).get(pk=connection.pk)
        # Zywave was asked outside the lock: a disconnect (or a reconnect as another identity)
        # may have run meanwhile. Store nothing then, and never with save(): on a row the
        # disconnect deleted, save() would INSERT it again, ProfileToken and all.
        if (
            locked.status != Connection.Status.ACTIVE
            or locked.zywave_subject != connection.zywave_subject
        ):
            raise ConnectionChanged(f"connection {locked.pk} is {locked.status}")
        stored = token if isinstance(token, str) and token else None
        if not Profile.objects.filter(pk=profile.pk, connection=locked).update(
            profile_token=stored, profile_token_fingerprint=token_fingerprint(stored)
        ):
            raise ConnectionChanged(f"profile {profile.pk} was replaced while Zywave was asked")
        profile.refresh_from_db()
        previous = locked.chosen_profile
        # Only the chosen profile keeps a token: forget the others'.
        locked.profiles.exclude(pk=profile.pk).update(
            profile_token=None, profile_token_fingerprint=""
        )
        locked.chosen_profile = profile
        locked.save(update_fields=["chosen_profile", "updated_at"])
        if previous is not None and previous.pk != profile.pk:
            # The mirror belongs to the old profile's agency: it must not mix with the new one.
            # Cancel first, so a sync running under the old profile writes no further page.
            # Tombstones, not deletion: the API's incremental pulls learn that every record of
            # the old profile is gone (a record the new profile has too comes back to life).
            locked.sync_runs.cancel("profile changed")
            webhooks.announce_deleted(locked, mirror.tombstone_all(locked.pk))
            locked.record(ConnectionEvent.Kind.MIRROR_CLEARED, actor=actor, reason="profile")
        locked.record(
            ConnectionEvent.Kind.PROFILE_CHOSEN,
            actor=actor,
            profile=profile.zywave_id,
            name=profile.name,
            previous=previous.zywave_id if previous else None,
        )
    connection.refresh_from_db()
    return profile


def refetch_profile_token(connection: Connection, client: ZywaveClient) -> str | None:
    """Zywave refused the stored ProfileToken: fetch it again once and return the new header."""
    profile = connection.chosen_profile
    if profile is None:
        return None
    detail = client.profile(profile.type_code, profile.zywave_id)
    token = detail.get("profiletoken")
    if not isinstance(token, str) or not token:
        return None
    with transaction.atomic():
        locked = Connection.objects.select_for_update(no_key=True).get(pk=connection.pk)
        # Only for the profile that is still the chosen one of a live connection: the person
        # may have chosen another, or disconnected, while Zywave was asked.
        if locked.status != Connection.Status.ACTIVE or locked.chosen_profile_id != profile.pk:
            return None
        Profile.objects.filter(pk=profile.pk, connection=locked).update(
            profile_token=token, profile_token_fingerprint=token_fingerprint(token)
        )
    connection.refresh_from_db()
    return connection.profile_header()
