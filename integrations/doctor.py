"""The Zywave doctor: what Zywave actually does for one real connection, and whether the
portal's settings fit it (issue 22; docs/zywave.md, "The doctor and recorded shapes").

An operator runs it on the first day (`manage.py zywave_doctor`) or from the admin. It is
read-only towards Zywave: it never refreshes a token (Zywave's refresh tokens are probably
one-time: one spent by a diagnostic would end the person's grant), never fetches a ProfileToken
again, never writes, and makes at most the CALLS below, each once:

    GET {ZYWAVE_AUTH_URL}/.well-known/openid-configuration
    GET {ZYWAVE_API_URL}/profiles/V2.0/Profile/{TypeCode}
    GET {ZYWAVE_API_URL}/profiles/V2.0/Profile/{TypeCode}/{id}      (the chosen profile)
    GET {ZYWAVE_API_URL}/profiles/V2.1/Profile/{TypeCode}/current
    GET {ZYWAVE_API_URL}/accounts/v2.0/account?$top=1&$orderby=id   (with the Profile header)
    GET {ZYWAVE_API_URL}/accounts/v2.0/contact?$top=1&$orderby=id   (with the Profile header)
    GET {ZYWAVE_API_URL}/accounts/v2.0/account?$top=1&$orderby=id   (without it)

Each check ends as ok, warn or fail, with what it saw and what to set. Nothing secret or
personal leaves it: no token, no ProfileToken, no record value (names, emails, ids), only
shapes, counts, key and header names, type codes and the settings' own values. The shapes it
saw (per route: status, envelope, key names and JSON types, nesting, header names) can be
written to a file that the sandbox replays (`SANDBOX_SHAPES_FILE`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import requests
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from social_core.exceptions import SocialAuthBaseException

from . import discovery, ratelimit
from .client import (
    ACCOUNTS,
    CONTACTS,
    CURRENT_PROFILE,
    PROFILE,
    PROFILES,
    MalformedResponse,
    ZywaveClient,
    ZywaveError,
    lower_keys,
    parse_envelope,
    safe_id,
)
from .models import DEADLINE_NOTICE, Connection, ConnectionEvent, DoctorReport
from .profiles import SAFE_TYPE_CODE
from .tokens import zywave_backend

log = logging.getLogger(__name__)

VERSION = 1
SHAPES_VERSION = 1

# The calls the doctor may make, in order (the module's docstring; docs/zywave.md).
CALLS = (
    "discovery",
    "profiles",
    "profile",
    "current_profile",
    "accounts",
    "contacts",
    "accounts_without_profile",
)
# The steps progress is reported in.
STEPS = ("discovery", "connection", "profiles", "accounts", "contacts", "explicit profile")

# The keys the portal reads from a record, lower-cased (integrations/resources.py's row
# builders; tests/integrations/test_doctor.py checks that each is read).
MAPPED = {
    "accounts": (
        "id",
        "name",
        "classification",
        "linesofbusiness",
        "clientsize",
        "numberofemployees",
        "isactive",
        "isarchived",
        "city",
        "state",
        "updateddatetime",
    ),
    "contacts": (
        "id",
        "accountid",
        "firstname",
        "lastname",
        "emailaddress",
        "title",
        "workphonenumber",
        "mobilephonenumber",
        "isprimarycontact",
        "isactive",
        "isarchived",
        "updateddatetime",
    ),
}
# Without these the mirror cannot work: the key of every row, and the incremental mark.
REQUIRED = {"id", "updateddatetime"}
# A connection's token must last this long more for the doctor to use it (its calls take
# seconds); else the API checks are skipped, never refreshed for.
TOKEN_MARGIN = timedelta(seconds=15)
# Transport headers that come and go with the connection, not with Zywave's answer.
TRANSPORT_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "date"}
RATE_HEADER = re.compile(r"rate|limit|quota|throttl|retry-after", re.IGNORECASE)
DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
# Failures of the moment, named as the client's exceptions: a warning, never a verdict on a setting.
TRANSIENT = {"RateLimited", "OverBudget", "ServerError", "ZywaveTimeout", "ZywaveUnreachable"}


# --- Shapes: what a JSON answer looks like, without its values ---------------------------


def shape_of(value: Any) -> dict[str, Any]:
    """The JSON type of `value`, with the keys of an object (in their order) and the merged
    shape of an array's items; strings note a date or date-time format. Never a value."""
    if isinstance(value, dict):
        return {"type": "object", "keys": {str(key): shape_of(item) for key, item in value.items()}}
    if isinstance(value, list):
        shape: dict[str, Any] = {"type": "array"}
        items = [shape_of(item) for item in value]
        if items:
            shape["items"] = merge_shapes(items)
        return shape
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        if DATE.match(value):
            return {"type": "string", "format": "date"}
        if DATE_TIME.match(value):
            return {"type": "string", "format": "date-time"}
        return {"type": "string"}
    return {"type": "null"}


def merge_shapes(shapes: list[dict[str, Any]]) -> dict[str, Any]:
    """One shape for the items of an array: the first item's, with the keys the others add."""
    merged = dict(shapes[0])
    for other in shapes[1:]:
        if merged.get("type") == other.get("type") == "object":
            keys = dict(merged["keys"])
            for key, shape in other["keys"].items():
                keys.setdefault(key, shape)
            merged["keys"] = keys
    return merged


def key_case(keys: list[str]) -> str:
    """`pascal`, `camel`, `lower` or `mixed`, from the letters that start the keys."""
    words = [key for key in keys if key[:1].isalpha()]
    if not words:
        return "none"
    if all(key[0].isupper() for key in words):
        return "pascal"
    if all(key[0].islower() for key in words):
        return "camel" if any(c.isupper() for key in words for c in key) else "lower"
    return "mixed"


def envelope_of(body: Any) -> str:
    """Which list envelope an answer is in (docs/zywave.md §4): `items`, `value`, `array`,
    or `object` when it is none of them."""
    if isinstance(body, list):
        return "array"
    if isinstance(body, dict):
        keys = lower_keys(body)
        for name in ("items", "value"):
            if isinstance(keys.get(name), list):
                return name
        return "object"
    return "none"


def header_names(response: requests.Response) -> list[str]:
    return sorted(
        {name.lower() for name in response.headers} - TRANSPORT_HEADERS,
    )


# --- What the doctor reports ---------------------------------------------------------------


@dataclass
class Check:
    id: str
    area: str
    verdict: str  # "ok" | "warn" | "fail"
    saw: str
    advice: str = ""


@dataclass
class Answer:
    """One call's outcome: its status and header names, the body of a 2xx, or why not."""

    status: int | None = None
    headers: list[str] = field(default_factory=list)
    body: Any = None
    error: str = ""  # a named failure, never a token (ZywaveError's messages name none)
    skipped: str = ""  # not sent: the doctor would have had to refresh

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300 and not self.error


class WontRefresh(Exception):
    """The stored access token cannot be used as it is, and the doctor never refreshes."""


def stored_token(connection: Connection) -> str:
    """The connection's access token as stored, if it is still good: the doctor's token
    callable. Unlike `tokens.access_token_for`, it raises instead of refreshing."""
    if connection.status != Connection.Status.ACTIVE:
        raise WontRefresh(f"the connection is {connection.status}")
    expires = connection.access_token_expires_at
    if not connection.access_token or expires is None:
        raise WontRefresh("no access token is stored")
    if expires - timezone.now() < TOKEN_MARGIN:
        raise WontRefresh(f"the access token expired at {expires:%Y-%m-%d %H:%M} UTC")
    return connection.access_token


def refuse_refresh(connection: Connection, refused: str) -> str:
    """The client's refresh callable: a 401 ends the call (the doctor never refreshes)."""
    raise WontRefresh("Zywave refused the access token (401)")


class DoctorClient(ZywaveClient):
    """The portal's client, remembering each answer's status and header names."""

    last: requests.Response | None = None
    sent: int = 0

    def _send(self, *args: Any, **kwargs: Any) -> requests.Response:
        self.sent += 1
        response = super()._send(*args, **kwargs)
        self.last = response
        return response


@dataclass
class Diagnosis:
    report: dict[str, Any]
    shapes: dict[str, Any]
    calls: int

    @property
    def worst(self) -> str:
        verdicts = {check["verdict"] for check in self.report["checks"]}
        return next((v for v in ("fail", "warn") if v in verdicts), "ok")


Progress = Callable[[str, int, int], None]


class Doctor:
    """One diagnosis of one connection; `run()` makes the calls and returns the Diagnosis."""

    def __init__(self, connection: Connection, progress: Progress | None = None) -> None:
        self.connection = connection
        self.progress = progress or (lambda step, done, total: None)
        self.checks: list[Check] = []
        self.routes: dict[str, dict[str, Any]] = {}
        self.calls = 0
        self.client = DoctorClient(
            connection=connection,
            token=stored_token,
            refresh=refuse_refresh,
            profile_header=connection.profile_header(),
        )
        self.type_code = str(settings.ZYWAVE_PROFILE_TYPE_CODE)

    def check(self, id: str, area: str, verdict: str, saw: str, advice: str = "") -> None:
        self.checks.append(Check(id, area, verdict, saw, advice))

    def step(self, name: str) -> None:
        self.progress(name, STEPS.index(name), len(STEPS))

    def run(self) -> Diagnosis:
        self.step("discovery")
        self.check_discovery()
        self.step("connection")
        self.check_connection()
        self.step("profiles")
        current = self.check_profiles()
        self.step("accounts")
        accounts = self.check_records("accounts", ACCOUNTS)
        self.step("contacts")
        self.check_records("contacts", CONTACTS)
        self.step("explicit profile")
        self.check_explicit_profile(accounts, current)
        self.check_rate_limits()
        self.progress("done", len(STEPS), len(STEPS))
        report = {
            "version": VERSION,
            "ran_at": timezone.now().isoformat(),
            "connection": self.describe_connection(),
            "checks": [asdict(check) for check in self.checks],
        }
        shapes = {"version": SHAPES_VERSION, "routes": self.routes}
        return Diagnosis(report, shapes, self.calls)

    def describe_connection(self) -> dict[str, Any]:
        conn = self.connection
        return {
            "id": conn.pk,
            "user": conn.user.get_username(),
            "status": conn.status,
            "profile_chosen": conn.chosen_profile_id is not None,
            "profile_type_code": self.type_code,
            "profile_header": settings.ZYWAVE_PROFILE_HEADER,
            "auth_url": discovery.issuer(),
            "api_url": str(settings.ZYWAVE_API_URL),
        }

    # --- Calls ------------------------------------------------------------------------------

    def record(self, route: str, template: str, answer: Answer) -> None:
        self.routes[route] = {
            "method": "GET",
            "path": template,
            "status": answer.status,
            "envelope": envelope_of(answer.body) if answer.ok else None,
            "headers": answer.headers,
            "body": shape_of(answer.body) if answer.ok else None,
        }

    def call(
        self,
        route: str,
        template: str,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        v2: bool = False,
    ) -> Answer:
        """One GET through the portal's client, with the stored token, never refreshing."""
        self.client.last = None
        answer = Answer()
        before = self.client.sent
        try:
            answer.body = self.client.get(path, params, v2=v2)
        except WontRefresh as exc:
            answer.skipped = str(exc)
        except ZywaveError as exc:
            answer.error = type(exc).__name__
        self.calls += self.client.sent - before
        if self.client.last is not None:
            answer.status = self.client.last.status_code
            answer.headers = header_names(self.client.last)
        if answer.skipped and answer.status is None:
            return answer  # nothing was sent: nothing to record
        if answer.skipped:
            answer.error = "Unauthorized"  # sent, refused with a 401, not refreshed for
        self.record(route, template, answer)
        return answer

    def not_answered(self, answer: Answer, what: str) -> tuple[str, str, str]:
        """Verdict, saw and advice for a call that did not answer 2xx."""
        if answer.skipped:
            return (
                "warn",
                f"{what}: not checked: {answer.skipped}; the doctor never refreshes a token",
                "Let the portal refresh the token (a sync does, or the token upkeep within "
                f"{settings.ZYWAVE_TOKEN_UPKEEP_MINUTES} minutes), then run the doctor again.",
            )
        if answer.status == 403:
            return (
                "fail",
                f"{what}: 403 Forbidden",
                "A scope is missing or the profile is refused: compare the granted scopes "
                "above with ZYWAVE_SCOPES and the scopes registered for the client at Zywave.",
            )
        if answer.status == 404:
            return (
                "fail",
                f"{what}: 404 Not Found (the route is assumed, docs/zywave.md §4)",
                "Send the report and the shapes file (--record) with a bug report.",
            )
        status = f"{answer.status}" if answer.status is not None else "no answer"
        # Busy or down for now (429, the app's own rate budget, 5xx, a timeout): not a setting.
        passing = answer.error in TRANSIENT or (answer.status or 0) == 429
        return (
            "warn" if passing or (answer.status or 0) >= 500 else "fail",
            f"{what}: {status} ({answer.error or 'error'})",
            "Run the doctor again later; if it persists, send the report and the shapes file.",
        )

    # --- Discovery ------------------------------------------------------------------------

    def check_discovery(self) -> None:
        url = f"{discovery.issuer()}{discovery.DISCOVERY_PATH}"
        answer = Answer()
        self.calls += 1
        try:
            response = zywave_backend().request(url, timeout=discovery.timeout(), stage="begin")
            answer.status, answer.headers = response.status_code, header_names(response)
            answer.body = response.json()
        except SocialAuthBaseException as exc:
            answer.status = getattr(exc, "status_code", None)
            answer.error = str(getattr(exc, "code", "") or type(exc).__name__)
        except ValueError:
            answer.error = "not JSON"
        if answer.ok and not isinstance(answer.body, dict):
            answer.error = "not a JSON object"
        self.record("discovery", discovery.DISCOVERY_PATH, answer)
        if not answer.ok:
            status = f"{answer.status} " if answer.status else ""
            saw = f"discovery unreachable ({status}{answer.error})"
            self.check(
                "discovery.reachable",
                "discovery",
                "warn",
                saw,
                "The portal falls back to the documented /connect/* paths (docs/zywave.md §1); "
                "nothing to set unless connecting fails.",
            )
            for id in ("issuer", "endpoints", "token_auth", "scopes"):
                self.check(f"discovery.{id}", "discovery", "warn", f"not checked: {saw}")
            return
        document: dict[str, Any] = answer.body
        self.check("discovery.reachable", "discovery", "ok", "the discovery document answered 200")
        self.check_issuer(document)
        self.check_endpoints(document)
        self.check_token_auth(document)
        self.check_scopes(document)

    def check_issuer(self, document: dict[str, Any]) -> None:
        named, expected = document.get("issuer"), discovery.issuer()
        if named == expected:
            self.check("discovery.issuer", "discovery", "ok", f"issuer {named} = ZYWAVE_AUTH_URL")
        elif isinstance(named, str) and named.rstrip("/") == expected:
            self.check(
                "discovery.issuer",
                "discovery",
                "fail",
                f"issuer {named!r}, ZYWAVE_AUTH_URL {expected!r}: they differ by a slash",
                f"Set ZYWAVE_AUTH_URL={named} exactly (the portal compares them exactly).",
            )
        else:
            shown = named if isinstance(named, str) else f"none ({type(named).__name__})"
            self.check(
                "discovery.issuer",
                "discovery",
                "fail",
                f"issuer {shown}, not ZYWAVE_AUTH_URL {expected}: the portal refuses the "
                "document and every connect ends on the identity_unverified page",
                f"Set ZYWAVE_AUTH_URL={named}" if isinstance(named, str) else "Ask Zywave.",
            )

    def check_endpoints(self, document: dict[str, Any]) -> None:
        documented = discovery.documented()
        notes, verdict = [], "ok"
        for name, expected in documented.items():
            url = document.get(name)
            if not isinstance(url, str):
                notes.append(f"{name} not named (the documented {discovery.DOCUMENTED[name]})")
                verdict = "warn"
            elif not discovery.same_origin(url, discovery.issuer()):
                notes.append(f"{name} on another origin (ignored: the documented path is used)")
                verdict = "warn"
            elif url != expected:
                path = url[len(discovery.issuer()) :] or "/"
                notes.append(f"{name} {path} (followed; documented {discovery.DOCUMENTED[name]})")
            else:
                notes.append(f"{name} {discovery.DOCUMENTED[name]}")
        self.check(
            "discovery.endpoints",
            "discovery",
            verdict,
            "; ".join(notes),
            ""
            if verdict == "ok"
            else "Send the report with a bug report: the portal assumes "
            "every endpoint is on ZYWAVE_AUTH_URL's origin.",
        )

    def check_token_auth(self, document: dict[str, Any]) -> None:
        chosen = settings.ZYWAVE_TOKEN_AUTH_METHOD
        methods = document.get("token_endpoint_auth_methods_supported")
        if not isinstance(methods, list):
            # OpenID Connect Discovery §3: when omitted, the default is client_secret_basic.
            verdict = "ok" if chosen == "client_secret_basic" else "warn"
            self.check(
                "discovery.token_auth",
                "discovery",
                verdict,
                f"no token_endpoint_auth_methods_supported (the standard default is "
                f"client_secret_basic); ZYWAVE_TOKEN_AUTH_METHOD={chosen}",
                ""
                if verdict == "ok"
                else "If connecting fails with invalid_client, set "
                "ZYWAVE_TOKEN_AUTH_METHOD=client_secret_basic.",
            )
            return
        names = [str(method) for method in methods]
        known = [m for m in names if m in ("client_secret_post", "client_secret_basic")]
        if chosen in names:
            self.check(
                "discovery.token_auth",
                "discovery",
                "ok",
                f"advertised {', '.join(names)}; ZYWAVE_TOKEN_AUTH_METHOD={chosen} is one",
            )
        else:
            self.check(
                "discovery.token_auth",
                "discovery",
                "fail",
                f"advertised {', '.join(names) or 'none'}; ZYWAVE_TOKEN_AUTH_METHOD={chosen} "
                "is not one: the token endpoint would answer invalid_client",
                f"Set ZYWAVE_TOKEN_AUTH_METHOD={known[0]}."
                if known
                else "The portal speaks client_secret_post and client_secret_basic only: "
                "send the report with a bug report.",
            )

    def check_scopes(self, document: dict[str, Any]) -> None:
        asked = list(settings.ZYWAVE_SCOPES)
        supported = document.get("scopes_supported")
        if not isinstance(supported, list):
            self.check(
                "discovery.scopes",
                "discovery",
                "warn",
                "no scopes_supported: cannot compare with ZYWAVE_SCOPES",
                "Nothing to set; the connection's granted scopes (below) say what Zywave gave.",
            )
            return
        missing = [scope for scope in asked if scope not in supported]
        if not missing:
            self.check(
                "discovery.scopes",
                "discovery",
                "ok",
                f"every scope of ZYWAVE_SCOPES advertised ({len(supported)} advertised)",
            )
        else:
            self.check(
                "discovery.scopes",
                "discovery",
                "warn",
                f"ZYWAVE_SCOPES asks for {' '.join(missing)}, not advertised "
                f"({len(supported)} advertised; the list may be partial)",
                "Remove them from ZYWAVE_SCOPES if connecting fails with invalid_scope, or "
                "ask Zywave to register them for the client.",
            )

    # --- The connection -------------------------------------------------------------------

    def check_connection(self) -> None:
        conn, now = self.connection, timezone.now()
        if conn.status != Connection.Status.ACTIVE:
            self.check(
                "connection.status",
                "connection",
                "fail",
                f"the connection is {conn.status}",
                "The person reconnects (Reconnect on the dashboard), then run the doctor again.",
            )
        else:
            self.check("connection.status", "connection", "ok", "active")
        asked = conn.requested_scopes.split() or list(settings.ZYWAVE_SCOPES)
        granted = conn.scopes
        missing = [scope for scope in asked if scope not in granted]
        saw = f"granted {' '.join(sorted(granted)) or 'nothing'}"
        if "offline_access" in missing:
            self.check(
                "connection.scopes",
                "connection",
                "fail",
                f"{saw}; offline_access missing: no refresh token, syncs stop when the access "
                "token ends",
                "Register offline_access for the client at Zywave, keep it in ZYWAVE_SCOPES, "
                "and have the person reconnect.",
            )
        elif missing:
            self.check(
                "connection.scopes",
                "connection",
                "warn",
                f"{saw}; asked but not granted: {' '.join(missing)}",
                "Register the missing scopes for the client at Zywave, or remove them from "
                "ZYWAVE_SCOPES; then the person reconnects.",
            )
        else:
            self.check("connection.scopes", "connection", "ok", f"{saw}: everything asked")
        lifetime = conn.access_token_lifetime
        expires = conn.access_token_expires_at
        life = f"lifetime {lifetime} s" if lifetime is not None else "lifetime unknown"
        if expires is None or not conn.access_token:
            self.check("connection.access_token", "connection", "warn", "no access token stored")
        elif expires - now < TOKEN_MARGIN:
            self.check(
                "connection.access_token",
                "connection",
                "warn",
                f"{life}; expired at {expires:%Y-%m-%d %H:%M} UTC: the API checks are skipped "
                "(the doctor never refreshes)",
                "Let the portal refresh it (a sync does), then run the doctor again.",
            )
        else:
            left = int((expires - now).total_seconds())
            self.check(
                "connection.access_token",
                "connection",
                "ok",
                f"{life}; valid for {left} s more",
            )
        if conn.refresh_token:
            self.check("connection.refresh_token", "connection", "ok", "a refresh token is stored")
        else:
            self.check(
                "connection.refresh_token",
                "connection",
                "fail",
                "no refresh token stored: nothing runs once the access token ends",
                "Make sure offline_access is granted (above), then the person reconnects.",
            )
        deadline = conn.refresh_deadline
        if deadline is None:
            self.check("connection.deadline", "connection", "warn", "no authorization time known")
        elif deadline <= now:
            self.check(
                "connection.deadline",
                "connection",
                "fail",
                f"the 30-day deadline passed on {deadline:%Y-%m-%d}",
                "The person reconnects.",
            )
        else:
            days = (deadline - now).days
            soon = deadline - now <= DEADLINE_NOTICE
            self.check(
                "connection.deadline",
                "connection",
                "warn" if soon else "ok",
                f"{days} days left before the 30-day deadline ({deadline:%Y-%m-%d})",
                "The person reconnects before then (they are emailed)." if soon else "",
            )

    # --- Profiles -------------------------------------------------------------------------

    def check_profiles(self) -> str | None:
        """The list, the chosen profile's detail and the current profile; returns the id of
        the current profile when Zywave named one (kept in memory, never shown)."""
        code = self.type_code
        listed = self.call("profiles", PROFILES, PROFILES.format(type_code=code))
        items: list[dict[str, Any]] = []
        if not listed.ok:
            self.check("profiles.list", "profiles", *self.not_answered(listed, "the list"))
        else:
            try:
                raw, total, _more = parse_envelope(listed.body, PROFILES)
                items = [lower_keys(item) for item in raw]
            except MalformedResponse:
                self.check(
                    "profiles.list",
                    "profiles",
                    "fail",
                    f"the list is in no envelope the portal reads ({envelope_of(listed.body)})",
                    "Send the shapes file (--record) with a bug report.",
                )
            else:
                self.report_profile_list(listed.body, raw, items)
        chosen = self.connection.chosen_profile
        profile_id = chosen.zywave_id if chosen is not None else None
        if profile_id is None:
            profile_id = next((safe_id(i.get("id")) for i in items if safe_id(i.get("id"))), None)
        listed_token = any("profiletoken" in item for item in items)
        if profile_id is None:
            self.check(
                "profiles.token",
                "profiles",
                "warn",
                "no profile to read the detail of",
                "The person chooses a profile on /zywave/profiles/, then run the doctor again.",
            )
        else:
            detail = self.call("profile", PROFILE, PROFILE.format(type_code=code, id=profile_id))
            if not detail.ok:
                self.check("profiles.token", "profiles", *self.not_answered(detail, "the detail"))
            else:
                self.report_profile_token(detail.body, listed_token)
        current = self.call(
            "current_profile", CURRENT_PROFILE, CURRENT_PROFILE.format(type_code=code)
        )
        if current.ok and isinstance(current.body, dict):
            named = safe_id(lower_keys(current.body).get("id"))
            same = named is not None and named == profile_id
            self.check(
                "profiles.current",
                "profiles",
                "ok",
                f"200, keys {key_case(list(current.body))}; Zywave's active profile is "
                + ("the chosen one" if same else "another than the chosen one"),
            )
            return named
        if current.status == 404:
            self.check(
                "profiles.current",
                "profiles",
                "ok",
                "404: no active profile (the portal uses it only as a hint)",
            )
        else:
            verdict, saw, advice = self.not_answered(current, "the current profile")
            self.check("profiles.current", "profiles", "warn", saw, advice)
        return None

    def report_profile_list(self, body: Any, raw: list[Any], items: list[dict[str, Any]]) -> None:
        keys = [str(key) for item in raw if isinstance(item, dict) for key in item]
        codes = sorted(
            {
                str(i.get("typecode"))
                for i in items
                if isinstance(i.get("typecode"), str) and SAFE_TYPE_CODE.fullmatch(i["typecode"])
            }
        )
        tokens = sum("profiletoken" in item for item in items)
        saw = (
            f"{len(items)} profile(s), envelope {envelope_of(body)}, keys {key_case(keys)}, "
            f"type codes {', '.join(codes) or 'none named'}, ProfileToken in "
            f"{tokens} of {len(items)} list entries"
        )
        if not items:
            self.check(
                "profiles.list",
                "profiles",
                "warn",
                saw,
                f"The person has no profile of type {self.type_code}: set "
                "ZYWAVE_PROFILE_TYPE_CODE to the type Zywave gives them.",
            )
        elif codes and self.type_code.lower() not in {code.lower() for code in codes}:
            self.check(
                "profiles.list",
                "profiles",
                "warn",
                saw,
                f"ZYWAVE_PROFILE_TYPE_CODE is {self.type_code}: set it to {codes[0]}.",
            )
        else:
            self.check("profiles.list", "profiles", "ok", saw)

    def report_profile_token(self, body: Any, listed_token: bool) -> None:
        detail = lower_keys(body) if isinstance(body, dict) else {}
        in_detail = isinstance(detail.get("profiletoken"), str) and bool(detail["profiletoken"])
        where = (
            "the list and the detail"
            if in_detail and listed_token
            else "the detail only"
            if in_detail
            else "the list only"
            if listed_token
            else "neither the list nor the detail"
        )
        keys = [str(key) for key in body] if isinstance(body, dict) else []
        saw = f"ProfileToken in {where}; keys {key_case(keys)}"
        mode = settings.ZYWAVE_PROFILE_HEADER
        if in_detail or mode == "id":
            self.check("profiles.token", "profiles", "ok", f"{saw}; ZYWAVE_PROFILE_HEADER={mode}")
        elif listed_token:
            self.check(
                "profiles.token",
                "profiles",
                "fail",
                f"{saw}: the portal reads it from the detail",
                "Set ZYWAVE_PROFILE_HEADER=id for now, and send the shapes file with a bug report.",
            )
        else:
            self.check(
                "profiles.token",
                "profiles",
                "fail",
                f"{saw}: ZYWAVE_PROFILE_HEADER=token cannot work",
                "Set ZYWAVE_PROFILE_HEADER=id (Profile: {TypeCode} {Id}).",
            )

    # --- The v2 API -----------------------------------------------------------------------

    def check_records(self, resource: str, path: str) -> Answer | None:
        """One `$top=1` page under the chosen profile: envelope, key case, the total's field,
        mapped fields missing and fields present that the portal does not map."""
        id = f"api.{resource}"
        if not self.client.profile_header:
            self.check(
                id,
                "api",
                "warn",
                "not checked: no profile chosen",
                "The person chooses a profile on /zywave/profiles/, then run the doctor again.",
            )
            return None
        answer = self.call(resource, path, path, {"$top": 1, "$orderby": "id"}, v2=True)
        if not answer.ok:
            self.check(id, "api", *self.not_answered(answer, f"GET {path}"))
            return answer
        try:
            items, _total, _more = parse_envelope(answer.body, path)
        except MalformedResponse:
            self.check(
                id,
                "api",
                "fail",
                f"200 in no envelope the portal reads ({envelope_of(answer.body)})",
                "Send the shapes file (--record) with a bug report.",
            )
            return answer
        total_field = "none"
        if isinstance(answer.body, dict):
            total_field = next(
                (
                    str(key)
                    for key in answer.body
                    if str(key).lower() in ("totalcount", "@odata.count")
                ),
                "none",
            )
        saw = f"200, envelope {envelope_of(answer.body)}, total field {total_field}"
        records = [item for item in items if isinstance(item, dict)]
        if not records:
            self.check(
                id,
                "api",
                "warn",
                f"{saw}; no record on the page: the record shape is unknown",
                "Run the doctor again once the profile's agency holds some.",
            )
            return answer
        keys = [str(key) for key in records[0]]
        present = {key.lower() for key in keys}
        missing = [key for key in MAPPED[resource] if key not in present]
        unmapped = [key for key in keys if key.lower() not in MAPPED[resource]]
        saw += (
            f", keys {key_case(keys)}, {len(keys)} fields; mapped fields missing: "
            f"{', '.join(missing) or 'none'}; not mapped (kept in raw): "
            f"{', '.join(unmapped) or 'none'}"
        )
        if REQUIRED & set(missing):
            self.check(
                id,
                "api",
                "fail",
                saw,
                "The mirror keys on id and syncs incrementally on updatedDateTime: send the "
                "shapes file (--record) with a bug report.",
            )
        elif missing:
            self.check(
                id,
                "api",
                "warn",
                saw,
                "Those columns stay empty in the mirror; send the shapes file if they matter.",
            )
        else:
            self.check(id, "api", "ok", saw)
        return answer

    def check_explicit_profile(self, accounts: Answer | None, current: str | None) -> None:
        """The accounts page again without a `Profile` header: only to see that the header
        is honoured (the portal never relies on implicit resolution for data)."""
        id = "api.explicit_profile"
        if accounts is None or not accounts.ok:
            self.check(id, "api", "warn", "not checked: the accounts page did not answer")
            return
        bare = self.call(
            "accounts_without_profile", ACCOUNTS, ACCOUNTS, {"$top": 1, "$orderby": "id"}
        )
        if bare.status in (400, 403):
            self.check(
                id,
                "api",
                "ok",
                f"without a Profile header: {bare.status}; Zywave needs the explicit profile, "
                "which the portal always sends",
            )
            return
        if not bare.ok:
            verdict, saw, advice = self.not_answered(bare, "without a Profile header")
            self.check(id, "api", "warn", saw, advice)
            return
        same = page_digest(accounts.body) == page_digest(bare.body)
        chosen = self.connection.chosen_profile
        chosen_is_current = chosen is not None and current == chosen.zywave_id
        if not same:
            saw = "without a Profile header Zywave answers another page: the header is honoured"
            self.check(id, "api", "ok", saw)
        elif chosen_is_current or current is None:
            self.check(
                id,
                "api",
                "ok",
                "the same page with and without a Profile header; the chosen profile is (or may "
                "be) Zywave's active one, so this cannot tell more",
            )
        else:
            self.check(
                id,
                "api",
                "warn",
                "the same page with and without a Profile header although Zywave's active "
                "profile is another: the header may be ignored",
                "Send the report with a bug report: data may come from the active profile.",
            )

    def check_rate_limits(self) -> None:
        seen = sorted(
            {
                name
                for route, shape in self.routes.items()
                if route != "discovery"
                for name in shape["headers"]
                if RATE_HEADER.search(name)
            }
        )
        self.check(
            "limits.headers",
            "limits",
            "ok",
            f"rate-limit headers seen: {', '.join(seen)}" if seen else "no rate-limit header seen",
        )


def page_digest(body: Any) -> tuple[Any, ...]:
    """What tells two pages apart, kept in memory only: the total and the first record's id."""
    try:
        items, total, _more = parse_envelope(body)
    except MalformedResponse:
        return (None,)
    first = lower_keys(items[0]).get("id") if items and isinstance(items[0], dict) else None
    return (total, len(items), first)


def diagnose(connection: Connection, progress: Progress | None = None) -> Diagnosis:
    """Run every check on `connection` (read-only towards Zywave; see the module's docstring).

    Its calls draw on the app's rate budget as a person's do (someone waits for the report):
    ahead of a backlog of scheduled syncs, and a warning instead of a long wait when the
    budget has no slot within seconds."""
    with ratelimit.priority(ratelimit.INTERACTIVE):
        return Doctor(connection, progress).run()


def connection_to_diagnose(username: str | None) -> Connection | None:
    """The connection of `username`, else the first active one; None when there is none (or
    it was disconnected: no tokens to diagnose with)."""
    connections = Connection.objects.select_related("user", "chosen_profile").order_by("pk")
    if username:
        found = connections.filter(user__username=username).first()
    else:
        found = connections.active().first()
    if found is None or found.status == Connection.Status.DISCONNECTED:
        return None
    return found


# --- Run from the admin (a Celery task: tasks.run_doctor) ---------------------------------

# A report left running this long was abandoned by a worker that died: another may take it.
STALE_RUN = timedelta(minutes=5)


def request_report(connection: Connection, actor: Any) -> DoctorReport:
    """A queued report, audited; the caller queues `tasks.run_doctor` after commit."""
    with transaction.atomic():
        report = DoctorReport.objects.create(
            connection=connection, requested_by=actor, steps_total=len(STEPS)
        )
        connection.record(ConnectionEvent.Kind.DOCTOR_RUN, actor=actor, report=report.pk)
    return report


def run_report(report_id: int) -> str:
    """Run a queued report and keep its outcome. Safe to run twice: a conditional UPDATE
    decides who runs it (the queued report, or one whose worker died long ago)."""
    now = timezone.now()
    queued = Q(state=DoctorReport.State.QUEUED)
    abandoned = Q(state=DoctorReport.State.RUNNING, started_at__lt=now - STALE_RUN)
    claimed = DoctorReport.objects.filter(queued | abandoned, pk=report_id)
    if not claimed.update(state=DoctorReport.State.RUNNING, started_at=now, steps_done=0):
        return "absorbed"
    report = DoctorReport.objects.select_related("connection__user").get(pk=report_id)
    connection = Connection.objects.select_related("user", "chosen_profile").get(
        pk=report.connection_id
    )

    def progress(step: str, done: int, total: int) -> None:
        DoctorReport.objects.filter(pk=report_id).update(
            step=step, steps_done=done, steps_total=total
        )

    try:
        found = diagnose(connection, progress)
    except Exception as exc:
        # Logged through the redacting filter; the report keeps only the exception's name.
        log.exception("The doctor failed on connection %s", connection.pk)
        DoctorReport.objects.filter(pk=report_id).update(
            state=DoctorReport.State.FAILED,
            finished_at=timezone.now(),
            error=f"the doctor failed unexpectedly ({type(exc).__name__}); see the log",
        )
        return "failed"
    DoctorReport.objects.filter(pk=report_id).update(
        state=DoctorReport.State.DONE,
        finished_at=timezone.now(),
        worst=found.worst,
        report=found.report,
        shapes=found.shapes,
        step="done",
        steps_done=len(STEPS),
    )
    return found.worst


# --- The terminal's report ---------------------------------------------------------------


def render_text(report: dict[str, Any]) -> str:
    """The report for people: one block per check, in the order they ran, and a summary."""
    conn = report["connection"]
    lines = [
        f"Zywave doctor, {report['ran_at']}",
        f"connection {conn['id']} of {conn['user']} ({conn['status']}), "
        f"identity server {conn['auth_url']}, API {conn['api_url']}",
        "",
    ]
    for check in report["checks"]:
        lines.append(f"{check['verdict'].upper():<5} {check['id']}")
        lines.append(f"      saw: {check['saw']}")
        if check["advice"]:
            lines.append(f"      set: {check['advice']}")
    counts = {v: sum(c["verdict"] == v for c in report["checks"]) for v in ("ok", "warn", "fail")}
    lines += ["", f"{counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail"]
    return "\n".join(lines)
