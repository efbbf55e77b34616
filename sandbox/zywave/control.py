"""The control API under /_sandbox/: what tests and drills use to steer the emulated Zywave.

JSON in and out, every call guarded by the `X-Sandbox-Key` header. It exists only in the
sandbox: the real Zywave has nothing like it.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from oauth2_provider.models import get_access_token_model, get_application_model

from sandbox.zywave import ratelimit, webhooks
from sandbox.zywave.fleet import FleetError, create_fleet
from sandbox.zywave.middleware import STREAMS
from sandbox.zywave.models import (
    Account,
    Authorization,
    Baseline,
    ClientPolicy,
    Contact,
    Counter,
    Fault,
    Person,
    Profile,
    RuntimeSetting,
    WebhookDelivery,
    WebhookSubscription,
    sandbox_now,
)
from sandbox.zywave.oauth import Grant, RefreshToken, checksum, load_access_token
from sandbox.zywave.resources import RESOURCES, Resource, children, resource_named
from sandbox.zywave.seed import client_snapshot, restore_clients, seed

AccessToken = get_access_token_model()
Application = get_application_model()

SETTING_CHOICES = {
    "envelope": {"items", "value", "array"},
    "key_case": {"pascal", "camel"},
    "refresh_mode": {"one-time", "reuse"},
    "token_auth_method": {"any", "client_secret_post", "client_secret_basic"},
    "id_token_fault": {
        "none",
        "wrong_nonce",
        "wrong_aud",
        "wrong_iss",
        "wrong_sub",
        "expired",
        "bad_signature",
    },
    "webhook_key_case": {"camel", "pascal"},
}
INT_SETTINGS = {
    "access_token_lifetime",
    "refresh_token_lifetime",
    "refresh_grace_seconds",
    "webhook_burst",
    "webhook_parallel",
    "rate_limit_burst",
}
BOOL_SETTINGS = {
    "reuse_revokes_grant",
    "webhook_duplicates",
    "webhook_out_of_order",
    "webhook_foreign",
}
# Seconds, with the range each may take.
SECONDS_SETTINGS = {
    "webhook_timeout": (0.05, 60.0),
    "webhook_verify_timeout": (0.05, 60.0),
    "webhook_delay_seconds": (0.0, 3600.0),
}
MAX_BURST = 1000
MAX_PARALLEL = 16
MAX_RATE = 100_000  # requests a second: far beyond what the sandbox serves


class ControlError(Exception):
    pass


View = Callable[..., HttpResponse]


def control(*methods: str, changes_data: bool = False) -> Callable[[View], View]:
    """Guard a control view: the key, the method, a JSON body; bad input answers 400.

    `changes_data`: the view changes seeded data (accounts, profiles), so the next reset
    re-seeds. Marked before the view runs: a view that fails half-way has changed it too.
    """

    def decorator(view: View) -> View:
        @csrf_exempt
        @wraps(view)
        def wrapper(request: HttpRequest, **kwargs: Any) -> HttpResponse:
            key = request.headers.get("X-Sandbox-Key", "")
            if not secrets.compare_digest(key.encode(), settings.SANDBOX_CONTROL_KEY.encode()):
                return JsonResponse({"error": "X-Sandbox-Key missing or wrong"}, status=403)
            if request.method not in methods:
                return JsonResponse({"error": f"Use {' or '.join(methods)}"}, status=405)
            try:
                data = json.loads(request.body) if request.body else {}
                if not isinstance(data, dict):
                    raise ControlError("The body must be a JSON object")
                if changes_data:
                    Baseline.objects.update(dirty=True)
                return view(request, data, **kwargs)
            except Http404 as error:
                return JsonResponse({"error": str(error) or "Not found"}, status=404)
            except (ControlError, ValueError, KeyError, TypeError, re.error) as error:
                return JsonResponse({"error": f"{type(error).__name__}: {error}"}, status=400)

        return wrapper

    return decorator


@control("POST", changes_data=True)
def fleet(request: HttpRequest, data: dict[str, Any]) -> JsonResponse:
    """Create `users` sandbox users at once (zywave.fleet), `{prefix}{n:05d}@example.com` with
    n from `first`, each with one type-B profile, a book of `accounts` accounts and
    `contacts` contacts, and a live grant for `client_id` (of `scope`, default all it may have):
    201 with, per user, the token response's fields, the subject and the profile with its
    ProfileToken. A reset with `restore` removes their agencies, profiles and books (the
    users and grants stay, as for anyone's)."""
    try:
        created = create_fleet(
            int(data["users"]),
            accounts=int(data.get("accounts", 10)),
            contacts=int(data.get("contacts", 20)),
            client_id=str(data.get("client_id") or "portal-dev"),
            prefix=str(data.get("prefix") or "fleet"),
            scope=str(data["scope"]) if data.get("scope") else None,
            first=int(data.get("first", 1)),
        )
    except FleetError as error:
        raise ControlError(str(error)) from error
    return JsonResponse({"users": created}, status=201)


def user_by_email(email: str) -> User:
    return get_object_or_404(User, username__iexact=email)


@control("POST")
def reset(request: HttpRequest, data: dict[str, Any]) -> JsonResponse:
    """Clear faults, counters, the clock offset and runtime settings (back to env defaults).

    With `{"restore": true}` also put the seeded data (when a control call changed it) and the
    registered clients back as the baseline has them: what a test suite wants between tests.
    Without it, data a caller seeded by other means (the drills' own users) is left alone.
    Webhook subscriptions, their queue and their log go with `restore` too (a plain reset,
    which drills use to lift faults half-way, leaves them delivering). Users' grants and tokens
    are never touched."""
    baseline = Baseline.objects.filter(pk=1).first() if data.get("restore") else None
    reseeded = bool(baseline and baseline.dirty)
    if baseline and baseline.dirty:
        # Rewrites the baseline, clean.
        seed(baseline.accounts, baseline.seed_value, baseline.seed_date)
    with transaction.atomic():
        Fault.objects.all().delete()
        Counter.objects.all().delete()
        RuntimeSetting.objects.all().delete()
        if baseline:
            restore_clients(baseline.clients)
            Baseline.objects.filter(pk=1).update(clients=baseline.clients)
        if data.get("restore"):
            WebhookSubscription.objects.all().delete()  # their deliveries and attempts cascade
    apply_rate_limit()
    ratelimit.reset_counts()
    return JsonResponse({"ok": True, "reseeded": reseeded, "settings": RuntimeSetting.current()})


@control("POST")
def baseline(request: HttpRequest, data: dict[str, Any]) -> JsonResponse:
    """Take the registered clients as they are now as what every reset restores."""
    clients = client_snapshot()
    updated = Baseline.objects.filter(pk=1).update(clients=clients)
    if not updated:
        raise ControlError("The sandbox was never seeded: run `python -m sandbox seed` first")
    return JsonResponse({"clients": [client["client_id"] for client in clients]})


@control("POST")
def register_client(request: HttpRequest, data: dict[str, Any]) -> JsonResponse:
    """Create or update a confidential authorization-code client and its allowed scopes."""
    client_id = str(data["client_id"])
    redirect_uris = data.get("redirect_uris", [])
    if isinstance(redirect_uris, str):
        redirect_uris = redirect_uris.split()
    with transaction.atomic():
        client = Application.objects.filter(client_id=client_id).first() or Application(
            client_id=client_id,
            client_type=Application.CLIENT_CONFIDENTIAL,
            authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
            algorithm=Application.RS256_ALGORITHM,
            name=client_id,
        )
        if "client_secret" in data:
            client.client_secret = str(data["client_secret"])
        elif client.pk is None:
            raise ControlError("client_secret is required for a new client")
        if "name" in data:
            client.name = str(data["name"])
        if redirect_uris:
            client.redirect_uris = " ".join(redirect_uris)
        client.save()
        scopes = data.get("allowed_scopes")
        if scopes is not None:
            if isinstance(scopes, list):
                scopes = " ".join(scopes)
            ClientPolicy.objects.update_or_create(
                application=client, defaults={"allowed_scopes": str(scopes)}
            )
    policy = ClientPolicy.objects.filter(application=client).first()
    return JsonResponse(
        {
            "client_id": client.client_id,
            "redirect_uris": client.redirect_uris.split(),
            "allowed_scopes": policy.allowed_scopes if policy else "",
        }
    )


@control("GET", "POST")
def runtime_settings(request: HttpRequest, data: dict[str, Any]) -> JsonResponse:
    for key, value in data.items():
        if key not in settings.SANDBOX_DEFAULTS or key == "clock_offset":
            raise ControlError(f"Unknown setting {key!r}")
        if key in SETTING_CHOICES and value not in SETTING_CHOICES[key]:
            raise ControlError(f"{key} must be one of {sorted(SETTING_CHOICES[key])}")
        if key in INT_SETTINGS:
            value = int(value)
        if key in BOOL_SETTINGS:
            value = as_bool(value)
        if key in SECONDS_SETTINGS:
            low, high = SECONDS_SETTINGS[key]
            value = float(value)
            if not low <= value <= high:
                raise ControlError(f"{key} must be between {low} and {high} seconds")
        if key == "webhook_burst" and not 0 <= value <= MAX_BURST:
            raise ControlError(f"webhook_burst must be between 0 and {MAX_BURST}")
        if key == "webhook_parallel" and not 1 <= value <= MAX_PARALLEL:
            raise ControlError(f"webhook_parallel must be between 1 and {MAX_PARALLEL}")
        if key == "webhook_retry_schedule":
            value = retry_schedule(value)
        if key == "rate_limit":
            value = float(value)
            if not 0 <= value <= MAX_RATE:
                raise ControlError(f"rate_limit must be between 0 and {MAX_RATE} requests/s")
        if key == "rate_limit_burst" and not 0 <= value <= MAX_RATE:
            raise ControlError(f"rate_limit_burst must be between 0 and {MAX_RATE} requests")
        RuntimeSetting.put(key, value)
    if {"rate_limit", "rate_limit_burst"} & set(data):
        apply_rate_limit()
    return JsonResponse(RuntimeSetting.current())


def apply_rate_limit() -> ratelimit.State:
    """Hand the stored limit to the limiter's shared state, which every request reads."""
    values = RuntimeSetting.current()
    return ratelimit.configure(float(values["rate_limit"]), int(values["rate_limit_burst"]))


@control("GET")
def rate_limit(request: HttpRequest, data: dict[str, Any]) -> JsonResponse:
    """The app-wide limit in force and what it did since the last counters reset: API requests
    it let through and refused (429) while a limit was on."""
    return JsonResponse(ratelimit.current().as_json())


def as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def retry_schedule(value: Any) -> list[float]:
    """The waits before each retry, in seconds: a list, or "1,2,4" (at most 20, each at most
    an hour)."""
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, list):
        raise ControlError("webhook_retry_schedule must be a list of seconds")
    waits = [float(part) for part in parts if str(part).strip()]
    if len(waits) > 20 or any(not 0 <= wait <= 3600 for wait in waits):
        raise ControlError("webhook_retry_schedule: at most 20 waits of 0 to 3600 seconds")
    return waits


@control("GET", "POST")
def clock(request: HttpRequest, data: dict[str, Any]) -> JsonResponse:
    """Time travel: the sandbox's clock runs `offset_seconds` ahead of the real one."""
    if "offset_seconds" in data:
        RuntimeSetting.put("clock_offset", int(data["offset_seconds"]))
    return JsonResponse(
        {"offset_seconds": RuntimeSetting.get("clock_offset"), "now": sandbox_now().isoformat()}
    )


@control("GET", "POST")
def faults(request: HttpRequest, data: dict[str, Any]) -> JsonResponse:
    if request.method == "POST":
        re.compile(str(data["path"]))
        count = int(data.get("count", 1))
        status = data.get("status")
        if status is None and not data.get("delay_ms"):
            raise ControlError("A fault needs a status or a delay_ms")
        content_type = str(data.get("content_type") or "")
        stream = data.get("stream")
        if stream is not None:
            # A streamed body (see middleware.STREAMS): its kind is kept as the content type.
            if stream not in STREAMS:
                raise ControlError(f"stream must be one of {sorted(STREAMS)}")
            body = data.get("body")
            if status is None or not body or not isinstance(body, str) or content_type:
                raise ControlError("A stream needs a status and a body, and takes no content_type")
            content_type = STREAMS[stream]
        fault = Fault.objects.create(
            path=str(data["path"]),
            method=str(data.get("method") or "").upper(),
            remaining=count,
            status=int(status) if status is not None else None,
            retry_after=str(data.get("retry_after") or ""),
            delay_ms=int(data.get("delay_ms") or 0),
            body=data.get("body"),
            content_type=content_type,
        )
        return JsonResponse({"id": fault.pk, "remaining": fault.remaining}, status=201)
    rows = Fault.objects.order_by("id").values(
        "id", "path", "method", "remaining", "status", "retry_after", "delay_ms"
    )
    return JsonResponse({"faults": list(rows)})


@control("GET")
def counters(request: HttpRequest, data: dict[str, Any]) -> JsonResponse:
    """Requests by kind and key; `limiter` too once the rate limit has counted any (API
    requests it let through and refused while on, kept apart from the database's counters)."""
    return JsonResponse(counted())


def counted() -> dict[str, Any]:
    result: dict[str, Any] = Counter.as_dict()
    state = ratelimit.current()
    if state.allowed or state.limited:
        result["limiter"] = {"allowed": state.allowed, "limited": state.limited}
    return result


@control("POST")
def counters_reset(request: HttpRequest, data: dict[str, Any]) -> JsonResponse:
    Counter.objects.all().delete()
    ratelimit.reset_counts()
    return JsonResponse(counted())


@control("POST")
def user_revoke(request: HttpRequest, data: dict[str, Any], email: str) -> JsonResponse:
    """Revoke all the user's grants: refresh tokens, access tokens, pending codes."""
    user = user_by_email(email)
    grants = Authorization.objects.filter(user=user, revoked_at__isnull=True)
    count = 0
    for grant in grants:
        grant.revoke()
        count += 1
    now = sandbox_now()
    RefreshToken.objects.filter(user=user, revoked__isnull=True).update(revoked=now)
    access_tokens = AccessToken.objects.filter(user=user).delete()[0]
    Grant.objects.filter(user=user).delete()
    return JsonResponse({"grants": count, "access_tokens": access_tokens})


@control("POST")
def user_expire_access_tokens(
    request: HttpRequest, data: dict[str, Any], email: str
) -> JsonResponse:
    user = user_by_email(email)
    expired = AccessToken.objects.filter(user=user, expires__gt=sandbox_now()).update(
        expires=sandbox_now() - timedelta(seconds=1)
    )
    return JsonResponse({"expired": expired})


@control("POST", changes_data=True)
def user_active_profile(request: HttpRequest, data: dict[str, Any], email: str) -> JsonResponse:
    user = user_by_email(email)
    profile = get_object_or_404(Profile, pk=int(data["profile_id"]), user=user)
    Person.objects.update_or_create(user=user, defaults={"active_profile": profile})
    return JsonResponse({"active_profile": str(profile.pk)})


def profile_rows(user: User) -> list[dict[str, Any]]:
    person = Person.objects.filter(user=user).first()
    active = person.active_profile_id if person else None
    return [
        {
            "id": str(profile.pk),
            "type_code": profile.type_code,
            "name": profile.name,
            "organization_id": str(profile.agency_id),
            "organization_name": profile.agency.name,
            "profile_token": profile.token,
            "active": profile.pk == active,
        }
        for profile in Profile.objects.select_related("agency").filter(user=user).order_by("id")
    ]


@control("GET")
def user_profiles(request: HttpRequest, data: dict[str, Any], email: str) -> JsonResponse:
    return JsonResponse({"profiles": profile_rows(user_by_email(email))})


@control("POST", changes_data=True)
def user_profile_remove(
    request: HttpRequest, data: dict[str, Any], email: str, profile_id: str
) -> JsonResponse:
    """Unlink a profile from the user, as when an agency takes a person's access away."""
    user = user_by_email(email)
    profile = get_object_or_404(Profile, pk=int(profile_id), user=user)
    profile.user = None
    profile.save(update_fields=["user"])
    Person.objects.filter(user=user, active_profile=profile).update(active_profile=None)
    return JsonResponse({"profiles": profile_rows(user)})


@control("POST", changes_data=True)
def user_profile_add(
    request: HttpRequest, data: dict[str, Any], email: str, profile_id: str
) -> JsonResponse:
    """Link a profile (back) to the user."""
    user = user_by_email(email)
    profile = get_object_or_404(Profile, pk=int(profile_id))
    profile.user = user
    profile.save(update_fields=["user"])
    return JsonResponse({"profiles": profile_rows(user)})


def agency_accounts(data: dict[str, Any]) -> Any:
    profile = get_object_or_404(Profile, pk=int(data["profile_id"]))
    accounts = Account.objects.filter(agency_id=profile.agency_id)
    if "ids" in data:
        accounts = accounts.filter(pk__in=[int(i) for i in data["ids"]])
    return accounts


def agency_contacts(data: dict[str, Any]) -> Any:
    profile = get_object_or_404(Profile, pk=int(data["profile_id"]))
    contacts = Contact.objects.filter(agency_id=profile.agency_id)
    if "account_id" in data:
        contacts = contacts.filter(account_id=int(data["account_id"]))
    if "ids" in data:
        contacts = contacts.filter(pk__in=[int(i) for i in data["ids"]])
    return contacts


def pick_ids(accounts: Any, data: dict[str, Any], *ordering: str) -> list[int]:
    """The first `count` ids of `accounts` in this order: by default 1, or all of `ids`."""
    count = int(data.get("count", len(data["ids"]) if "ids" in data else 1))
    return list(accounts.order_by(*ordering).values_list("id", flat=True)[:count])


def new_count(data: dict[str, Any]) -> int:
    count = int(data.get("count", 1))
    if not 1 <= count <= 1000:
        raise ControlError("count must be between 1 and 1000")
    return count


def revised(value: str) -> str:
    """`value (rev N+1)`: a new version a mirror can tell from the old one."""
    match = re.fullmatch(r"(.*) \(rev (\d+)\)", value)
    base, rev = (match.group(1), int(match.group(2))) if match else (value, 1)
    return f"{base} (rev {rev + 1})"


def change(resource: Resource, rows: QuerySet[Any], field: str | None, now: datetime) -> None:
    """Bump updatedDateTime of `rows`, revising `field` too, and queue `{noun}.updated`."""
    for row in rows:
        if field:
            setattr(row, field, revised(getattr(row, field)))
        row.updated = now
        row.save()
    webhooks.queue_changes(resource, "updated", rows, now)


def change_picked(
    resource: str, rows: QuerySet[Any], data: dict[str, Any], fields: tuple[str, ...]
) -> JsonResponse:
    """Change the N least recently updated of `rows` (or the `ids` asked for), editing `field`
    when given (one of `fields`)."""
    field = data.get("field")
    if field is not None and field not in fields:
        quoted = [f"'{name}'" for name in fields]
        raise ControlError(f"field must be {', '.join(quoted[:-1])} or {quoted[-1]}")
    now = sandbox_now()
    with transaction.atomic():
        ids = pick_ids(rows, data, "updated", "id")
        found = resource_named(resource)
        change(found, found.model._default_manager.filter(pk__in=ids), field, now)
    return JsonResponse({"ids": ids, "updatedDateTime": now.isoformat()})


@control("POST", changes_data=True)
def accounts_change(request: HttpRequest, data: dict[str, Any]) -> JsonResponse:
    """Change the N least recently updated accounts (bumping updatedDateTime), optionally
    editing a field so that a mirror can tell the new version from the old."""
    return change_picked("accounts", agency_accounts(data), data, ("name", "city"))


@control("POST", changes_data=True)
def accounts_create(request: HttpRequest, data: dict[str, Any]) -> JsonResponse:
    """Create N accounts in the profile's agency (`name`, numbered when N > 1)."""
    profile = get_object_or_404(Profile, pk=int(data["profile_id"]))
    count = new_count(data)
    name = str(data.get("name") or "New account")
    now = sandbox_now()
    with transaction.atomic():
        ids = [
            Account.objects.create(
                agency_id=profile.agency_id,
                name=name if count == 1 else f"{name} {number}",
                updated=now,
            ).pk
            for number in range(1, count + 1)
        ]
        webhooks.queue_changes(
            resource_named("accounts"), "created", Account.objects.filter(pk__in=ids), now
        )
    return JsonResponse({"ids": ids, "updatedDateTime": now.isoformat()}, status=201)


def hanging_under(
    resource: Resource, rows: QuerySet[Any]
) -> Iterator[tuple[Resource, QuerySet[Any]]]:
    """Each child resource in the registry with its rows under `rows`."""
    for child in children(resource):
        yield (
            child,
            child.model._default_manager.filter(**{f"{child.parent_field}__in": rows.values("pk")}),
        )


def archive(resource: Resource, rows: QuerySet[Any], now: datetime) -> None:
    """Archive `rows` of `resource` and, all the way down the registry, what hangs under them;
    queue `{noun}.archived` for each row that was not archived yet."""
    for child, under in hanging_under(resource, rows):
        archive(child, under, now)
    archived = resource.fields.get("isArchived")
    live = rows.filter(**{archived[0]: False}) if archived else rows
    webhooks.queue_changes(resource, "archived", live, now)
    rows.update(**resource.archived_values(now))


def queue_deletions(resource: Resource, rows: QuerySet[Any], now: datetime) -> None:
    """Queue `{noun}.deleted` for `rows` and, down the registry, what hangs under them (their
    foreign keys cascade): before they are deleted."""
    for child, under in hanging_under(resource, rows):
        queue_deletions(child, under, now)
    webhooks.queue_changes(resource, "deleted", rows, now)


@control("POST", changes_data=True)
def accounts_archive(request: HttpRequest, data: dict[str, Any]) -> JsonResponse:
    """Archive (soft-delete) N accounts and what hangs under them (contacts, ...), bumping
    updatedDateTime."""
    now = sandbox_now()
    with transaction.atomic():
        ids = pick_ids(agency_accounts(data).filter(is_archived=False), data, "id")
        archive(resource_named("accounts"), Account.objects.filter(pk__in=ids), now)
    return JsonResponse({"ids": ids})


@control("POST", changes_data=True)
def accounts_delete(request: HttpRequest, data: dict[str, Any]) -> JsonResponse:
    """Hard-delete N accounts (the newest first) with what hangs under them (their foreign
    keys cascade)."""
    with transaction.atomic():
        ids = pick_ids(agency_accounts(data), data, "-id")
        rows = Account.objects.filter(pk__in=ids)
        queue_deletions(resource_named("accounts"), rows, sandbox_now())
        rows.delete()
    return JsonResponse({"ids": ids})


@control("POST", changes_data=True)
def contacts_create(request: HttpRequest, data: dict[str, Any]) -> JsonResponse:
    """Create N contacts under `account_id` (default: the agency's first live account)."""
    profile = get_object_or_404(Profile, pk=int(data["profile_id"]))
    count = new_count(data)
    accounts = Account.objects.filter(agency_id=profile.agency_id)
    if "account_id" in data:
        account = get_object_or_404(accounts, pk=int(data["account_id"]))
    else:
        account = get_object_or_404(accounts.filter(is_archived=False).order_by("id")[:1])
    last_name = str(data.get("last_name") or "Contact")
    now = sandbox_now()
    with transaction.atomic():
        ids = [
            Contact.objects.create(
                account=account,
                agency_id=account.agency_id,
                first_name="New",
                last_name=last_name if count == 1 else f"{last_name} {number}",
                updated=now,
            ).pk
            for number in range(1, count + 1)
        ]
        webhooks.queue_changes(
            resource_named("contacts"), "created", Contact.objects.filter(pk__in=ids), now
        )
    return JsonResponse(
        {"ids": ids, "account_id": account.pk, "updatedDateTime": now.isoformat()}, status=201
    )


@control("POST", changes_data=True)
def contacts_change(request: HttpRequest, data: dict[str, Any]) -> JsonResponse:
    """Change the N least recently updated contacts (of `account_id`, or `ids`), optionally
    editing `first_name`, `last_name` or `title`."""
    fields = ("first_name", "last_name", "title")
    return change_picked("contacts", agency_contacts(data), data, fields)


@control("POST", changes_data=True)
def contacts_archive(request: HttpRequest, data: dict[str, Any]) -> JsonResponse:
    """Archive N contacts (of `account_id`, or `ids`), lowest ids first."""
    now = sandbox_now()
    with transaction.atomic():
        ids = pick_ids(agency_contacts(data).filter(is_archived=False), data, "id")
        archive(resource_named("contacts"), Contact.objects.filter(pk__in=ids), now)
    return JsonResponse({"ids": ids})


@control("POST", changes_data=True)
def contacts_delete(request: HttpRequest, data: dict[str, Any]) -> JsonResponse:
    """Hard-delete N contacts (of `account_id`, or `ids`), the newest first."""
    with transaction.atomic():
        ids = pick_ids(agency_contacts(data), data, "-id")
        rows = Contact.objects.filter(pk__in=ids)
        queue_deletions(resource_named("contacts"), rows, sandbox_now())
        rows.delete()
    return JsonResponse({"ids": ids})


@control("GET")
def accounts_count(request: HttpRequest, data: dict[str, Any]) -> JsonResponse:
    """How many rows of each resource the profile's agency has, and its archived accounts."""
    profile = get_object_or_404(Profile, pk=int(request.GET["profile_id"]))
    counts = {
        resource.name: resource.rows(profile.agency_id).count()
        for resource in RESOURCES
        if resource.profiled
    }
    counts["archived"] = Account.objects.filter(
        agency_id=profile.agency_id, is_archived=True
    ).count()
    return JsonResponse(counts)


@control("GET")
def token_status(request: HttpRequest, data: dict[str, Any], token: str) -> JsonResponse:
    """Whether an access or refresh token is live (tests check revocation with it)."""
    access = load_access_token(token)
    if access is not None:
        return JsonResponse({"active": True, "type": "access_token", "scope": access.scope})
    rt = RefreshToken.objects.filter(token_checksum=checksum(token)).order_by("-id").first()
    if rt is not None:
        grant = Authorization.objects.filter(family=rt.token_family).first()
        live = (
            rt.revoked is None
            and grant is not None
            and grant.revoked_at is None
            and sandbox_now() < grant.expires_at()
        )
        return JsonResponse({"active": live, "type": "refresh_token"})
    return JsonResponse({"active": False, "type": None})


# Webhooks (docs/zywave.md §6) ----------------------------------------------------------------


@control("GET", "POST")
def webhooks_collection(request: HttpRequest, data: dict[str, Any]) -> JsonResponse:
    """POST `{"user", "event_type", "uri"}`: verify the URI with the challenge and register the
    subscription (201; 200 when it exists already; 400 saying why it was refused). GET: every
    subscription, or one user's with `?user=`."""
    if request.method == "POST":
        subscription, created = webhooks.subscribe(
            str(data["user"]), str(data["event_type"]), str(data["uri"])
        )
        return JsonResponse(subscription.as_json(), status=201 if created else 200)
    rows = WebhookSubscription.objects.select_related("user").order_by("id")
    if request.GET.get("user"):
        rows = rows.filter(user__username__iexact=request.GET["user"])
    return JsonResponse({"webhooks": [row.as_json() for row in rows]})


def subscription_of(webhook_id: int) -> WebhookSubscription:
    return get_object_or_404(WebhookSubscription.objects.select_related("user"), pk=webhook_id)


@control("GET", "DELETE")
def webhook_detail(request: HttpRequest, data: dict[str, Any], webhook_id: int) -> JsonResponse:
    """GET one subscription; DELETE it with its queue and log."""
    subscription = subscription_of(webhook_id)
    if request.method == "DELETE":
        subscription.delete()
        return JsonResponse({"deleted": webhook_id})
    return JsonResponse(subscription.as_json())


@control("POST")
def webhook_delete(request: HttpRequest, data: dict[str, Any], webhook_id: int) -> JsonResponse:
    """The same as DELETE webhooks/<id>."""
    subscription_of(webhook_id).delete()
    return JsonResponse({"deleted": webhook_id})


@control("POST")
def webhook_send(request: HttpRequest, data: dict[str, Any], webhook_id: int) -> JsonResponse:
    """Queue one hand-made delivery to the subscription about `record_id`, whoever may see it
    and whether it exists: a notification the portal must check, not trust."""
    subscription = subscription_of(webhook_id)
    record_id = str(data["record_id"])
    if not record_id or len(record_id) > 50:
        raise ControlError("record_id must be 1 to 50 characters")
    with transaction.atomic():
        delivery = webhooks.queue_one(subscription, record_id, sandbox_now())
    return JsonResponse({"id": delivery.pk, "body": delivery.body}, status=201)


@control("GET")
def webhook_deliveries(request: HttpRequest, data: dict[str, Any]) -> JsonResponse:
    """The delivery log, oldest first: each delivery with its body, state, faults and every
    attempt (time, status or error, duration). Filters: `subscription`, `state`, `event_type`,
    `record_id`; `limit` (default 1000)."""
    rows = (
        WebhookDelivery.objects.select_related("subscription__user")
        .prefetch_related("attempt_log")
        .order_by("id")
    )
    if request.GET.get("subscription"):
        rows = rows.filter(subscription_id=int(request.GET["subscription"]))
    for name in ("state", "event_type", "record_id"):
        if request.GET.get(name):
            rows = rows.filter(**{name: request.GET[name]})
    limit = int(request.GET.get("limit") or 1000)
    return JsonResponse(
        {
            "deliveries": [delivery.as_json() for delivery in rows[:limit]],
            "counts": webhooks.counts(),
        }
    )


@control("POST")
def webhooks_drain(request: HttpRequest, data: dict[str, Any]) -> JsonResponse:
    """Wait until no delivery is pending (due, held, retrying or being sent): 200 with the
    counts by state, or 408 when some still are after `timeout` seconds (default 30, at most
    120)."""
    timeout = float(data.get("timeout", 30))
    if not 0 <= timeout <= 120:
        raise ControlError("timeout must be between 0 and 120 seconds")
    empty = webhooks.wait_until_empty(timeout)
    body: dict[str, Any] = {"empty": empty, **webhooks.counts()}
    if not empty:
        body["error"] = f"Deliveries still pending after {timeout:g} s"
    return JsonResponse(body, status=200 if empty else 408)
