"""What the security tests share: the redirect corpus and judge, the URL walk, table counts, and
two people with data built directly in the database."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urljoin, urlsplit

from django.contrib import admin
from django.contrib.auth.models import User
from django.db import connection as db
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from integrations.models import Account, Connection, ConnectionEvent, Contact, Profile, SyncRun

HOST = "testserver"

# Return URLs that a browser would follow off-site (or to a script) if a view echoed them.
OFF_SITE = [
    "//evil.example",
    "//evil.example/path",
    "///evil.example",
    "////evil.example",
    "/\\evil.example",
    "\\\\evil.example",
    "\\/evil.example",
    "https:evil.example",
    "http://evil.example",
    "https://evil.example/",
    "HTTPS://evil.example",
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "  //evil.example",
    "\t//evil.example",
    "/\t/evil.example",
    "/\n/evil.example",
    "\x00//evil.example",
    "https://testserver@evil.example",
    "http://testserver:80@evil.example/",
    "http://evil.example\\@testserver/",
    "http://evil.example#@testserver/",
    "https://evil.example?testserver",
    "http:/\\/evil.example",
    "//\u3002evil.example",  # ideographic full stop, a dot to IDNA
    "//evil\u2024example",
]
# Harmless as written (they stay paths on this host); they would be off-site only if a view
# decoded them before redirecting, which is what they probe.
ENCODED = [
    "/%2F%2Fevil.example",
    "%2F%2Fevil.example",
    "/%5Cevil.example",
    "%2f%2fevil.example",
    "//evil.example%2F@testserver",  # user info "evil.example%2F" at this host
]
CORPUS = OFF_SITE + ENCODED


def browser_target(location: str, base: str = f"http://{HOST}/somewhere/page") -> str:
    """The absolute URL a browser goes to for `location` (WHATWG URL parsing, simplified):
    leading and trailing C0 controls and spaces dropped, tabs and newlines removed anywhere,
    backslashes read as slashes."""
    cleaned = location.strip("".join(chr(c) for c in range(0x21)))
    cleaned = cleaned.replace("\t", "").replace("\n", "").replace("\r", "").replace("\\", "/")
    # Browsers skip any number of slashes before an authority (`///host` is `//host`).
    cleaned = re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*:)?/{2,}", r"\1//", cleaned)
    return urljoin(base, cleaned)


def off_site(location: str) -> bool:
    """True when following `location` would leave http(s)://testserver."""
    target = urlsplit(browser_target(location))
    return target.scheme not in {"http", "https"} or (target.hostname or "") != HOST


# --- The URL walk ----------------------------------------------------------------------------


def route_names() -> set[str]:
    """Every named route of the portal outside the admin, as `namespace:name`."""
    names: set[str] = set()

    def walk(patterns: list[URLPattern | URLResolver], namespace: str) -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                if entry.app_name == "admin":
                    continue
                inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
                walk(entry.url_patterns, inner)
            elif entry.name:
                names.add(f"{namespace}{entry.name}")

    walk(get_resolver().url_patterns, "")
    return names


# The portal's routes with their parameters filled in; `{account}` is an account of the user.
PORTAL_URLS = {
    "login": "/login/",
    "logout": "/logout/",
    "health": "/health/",
    "dashboard": "/",
    "profiles": "/zywave/profiles/",
    "disconnect": "/zywave/disconnect/",
    "sync": "/zywave/sync/",
    "sync_status": "/zywave/sync/status/",
    "accounts": "/zywave/accounts/",
    "account": "/zywave/accounts/{account}/",
    "social:begin": "/oauth/login/zywave/",
    "social:complete": "/oauth/complete/zywave/",
}


def portal_urls(account: str) -> list[str]:
    return [url.format(account=account) for url in PORTAL_URLS.values()]


def admin_urls() -> list[str]:
    """A representative admin set: index, login, each registered model's changelist, add page,
    and for one object its change, history and delete pages; the connection's export and act."""
    urls = ["/admin/", "/admin/login/", "/admin/logout/", "/admin/password_change/"]
    for model in admin.site._registry:
        base = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        urls += [base, f"{base}add/"]
        obj = model._default_manager.order_by("pk").first()
        if obj is not None:
            urls += [
                f"{base}{obj.pk}/change/",
                f"{base}{obj.pk}/history/",
                f"{base}{obj.pk}/delete/",
            ]
    first = Connection.objects.order_by("pk").first()
    urls.append("/admin/integrations/connection/export/")
    if first is not None:
        urls.append(f"/admin/integrations/connection/{first.pk}/act/")
    return urls


# --- Table counts ----------------------------------------------------------------------------


def row_counts() -> dict[str, int]:
    """Every table's row count, with raw SQL."""
    counts: dict[str, int] = {}
    with db.cursor() as cursor:
        for table in db.introspection.table_names():
            cursor.execute(f"SELECT COUNT(*) FROM {db.ops.quote_name(table)}")  # noqa: S608
            counts[table] = int(cursor.fetchone()[0])
    return counts


# --- Two people with their own data, built in the database -----------------------------------


@dataclass
class Person:
    user: User
    connection: Connection
    profile: Profile
    run: SyncRun
    account_ids: list[str]
    # Strings that belong to this person's data only: none may appear in another's pages.
    secrets: list[str]


def person(user: User, tag: str, shared_id: str = "1001") -> Person:
    """A connection with a chosen profile, three accounts (one under an id both people have),
    their contacts and a failed sync run, all marked with `tag`."""
    now = timezone.now()
    conn = Connection.objects.create(
        user=user,
        zywave_subject=f"sub-{tag}",
        zywave_email=f"{tag}@zywave.test",
        zywave_name=f"Name {tag}",
        access_token=f"access-{tag}",
        refresh_token=f"refresh-{tag}",
        access_token_expires_at=now + timedelta(hours=1),
        authorized_at=now - timedelta(minutes=5),
        profiles_listed_at=now,
    )
    profile = Profile.objects.create(
        connection=conn,
        type_code="B",
        zywave_id=f"P{tag}",
        name=f"Agency {tag}",
        organization=f"Org {tag}",
        profile_token=f"ptoken-{tag}",
    )
    conn.chosen_profile = profile
    conn.save()
    ids = [shared_id, f"{tag}-2", f"{tag}-3"]
    for number, zywave_id in enumerate(ids):
        Account.objects.create(
            connection=conn,
            zywave_id=zywave_id,
            name=f"Account {tag} {number}",
            classification="Client",
            raw={"id": zywave_id},
        )
        Contact.objects.create(
            connection=conn,
            zywave_id=f"c-{zywave_id}",
            account_zywave_id=zywave_id,
            first_name=f"First{tag}",
            last_name=f"Last{tag}{number}",
            email=f"contact{number}@{tag}.test",
            raw={"id": zywave_id},
        )
    run = SyncRun.objects.create(
        connection=conn, state=SyncRun.State.FAILED, error=f"error-of-{tag}", finished_at=now
    )
    ConnectionEvent.objects.create(user=user, connection=conn, kind="connected", actor=user)
    secrets = [
        f"Account {tag}",
        f"First{tag}",
        f"@{tag}.test",
        f"Agency {tag}",
        f"Org {tag}",
        f"{tag}@zywave.test",
        f"error-of-{tag}",
        f"{tag}-2",
    ]
    return Person(user, conn, profile, run, ids, secrets)


def snapshot(p: Person) -> dict[str, object]:
    """Everything of a person's that another person must not be able to change."""
    conn = Connection.objects.get(pk=p.connection.pk)
    return {
        "connection": (
            conn.status,
            conn.access_token,
            conn.refresh_token,
            conn.chosen_profile_id,
            conn.updated_at,
        ),
        "profiles": list(
            conn.profiles.values_list("zywave_id", "name", "profile_token_fingerprint")
        ),
        "accounts": sorted(
            Account.objects.filter(connection=conn).values_list("zywave_id", "name")
        ),
        "contacts": Contact.objects.filter(connection=conn).count(),
        "runs": list(SyncRun.objects.filter(connection=conn).values_list("pk", "state")),
        "events": ConnectionEvent.objects.filter(connection=conn).count(),
    }
