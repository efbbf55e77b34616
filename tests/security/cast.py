"""What the security tests share: the redirect corpus and judge, the URL walk, table counts, and
each person's own data (built in the database on the cast's connection) with the strings that
must never show up in anyone else's pages."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

from django.contrib import admin
from django.contrib.auth.models import User
from django.db import connection as db
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils.timezone import now

from integrations.models import Account, Connection, ConnectionEvent, Contact, SyncRun
from tests.conftest import connection

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
    """Every named route of the portal outside the admin and the integration API (whose table
    is tests/security/test_api_access.py's ENDPOINTS: key-authenticated, no session, no CSRF),
    as `namespace:name`."""
    names: set[str] = set()

    def walk(patterns: list[URLPattern | URLResolver], namespace: str) -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                if entry.app_name in {"admin", "api"}:
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
    "renewals": "/zywave/renewals/",
    "api_keys": "/settings/api-keys/",
    "api_key_revoke": "/settings/api-keys/0/revoke/",  # no such key: 404 for anyone
    "webhooks": "/settings/webhooks/",
    # No such subscription or delivery: 404 for anyone (tests/integrations/test_webhook_pages.py
    # asks them with real ones, another person's included).
    "webhook": "/settings/webhooks/0/",
    "webhook_test": "/settings/webhooks/0/test/",
    "webhook_rotate_secret": "/settings/webhooks/0/rotate-secret/",
    "webhook_enable": "/settings/webhooks/0/enable/",
    "webhook_delete": "/settings/webhooks/0/delete/",
    "webhook_replay_range": "/settings/webhooks/0/replay/",
    "webhook_replay": "/settings/webhooks/0/deliveries/0/replay/",
    "rotate_hook": "/zywave/hooks/rotate/",
    "zywave_hook": "/hooks/zywave/no-such-token/",  # 404 for anyone
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


# --- Each person's own data, built in the database --------------------------------------------

SHARED_ID = "1001"  # an account id both people have, each in their own mirror


def account_ids(user: User) -> list[str]:
    return [SHARED_ID, f"{user.username}-2", f"{user.username}-3"]


def own_data(user: User) -> Connection:
    """`user`'s connection from the cast (its profile chosen), three accounts (one under the
    id both people have), their contacts, a failed sync run and an event, all marked with the
    username."""
    conn = connection(user)
    tag = user.username
    for number, zywave_id in enumerate(account_ids(user)):
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
    SyncRun.objects.create(
        connection=conn, state=SyncRun.State.FAILED, error=f"error-of-{tag}", finished_at=now()
    )
    conn.record(ConnectionEvent.Kind.CONNECTED, actor=user)
    return conn


def secrets(user: User) -> list[str]:
    """Strings that belong to `user`'s data only (`own_data`, and the profile and Zywave email
    the cast's `connection` marks with the username): none may appear in another's pages."""
    tag = user.username
    return [
        f"Account {tag}",
        f"First{tag}",
        f"@{tag}.test",
        f"Agency {tag}",
        f"Org {tag}",
        f"{tag}@zywave.test",
        f"error-of-{tag}",
        f"{tag}-2",
    ]


def snapshot(user: User) -> dict[str, object]:
    """Everything of a person's that another person must not be able to change."""
    conn = Connection.objects.get(user=user)
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
