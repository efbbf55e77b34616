"""The Zywave doctor (integrations/doctor.py, `manage.py zywave_doctor`) against the real
sandbox in each of its variants: every verdict asserted, the calls counted at the sandbox,
nothing refreshed, and the output searched for every token and record value."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
import requests
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.utils import timezone

from integrations import ratelimit
from integrations.client import ACCOUNTS, CONTACTS, parse_envelope
from integrations.doctor import MAPPED, diagnose
from integrations.models import Connection, ConnectionEvent
from integrations.resources import account_row, contact_row
from sandbox.scopes import PORTAL_SCOPES
from tests.conftest import connection
from tests.sandboxserver import Sandbox

pytestmark = pytest.mark.django_db

DISCOVERY = r"^/\.well-known/openid-configuration$"


def run(*args: str) -> tuple[int, str, str]:
    """The command as an operator runs it: exit status, standard output, standard error."""
    out, err = StringIO(), StringIO()
    try:
        call_command("zywave_doctor", *args, stdout=out, stderr=err)
    except CommandError as exc:
        err.write(str(exc))
        return exc.returncode, out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def report_of(*args: str) -> tuple[int, dict[str, Any], str]:
    code, out, err = run("--json", *args)
    return code, json.loads(out), err  # nothing but the one JSON object on standard output


def verdicts(report: dict[str, Any]) -> dict[str, str]:
    return {check["id"]: check["verdict"] for check in report["checks"]}


def saw(report: dict[str, Any], id: str) -> str:
    return next(str(check["saw"]) for check in report["checks"] if check["id"] == id)


def advice(report: dict[str, Any], id: str) -> str:
    return next(str(check["advice"]) for check in report["checks"] if check["id"] == id)


def count_discovery(sandbox: Sandbox) -> None:
    """Count discovery requests at the sandbox: its request counters count the API only, so a
    fault of a 1 ms delay and no status (then served normally), one firing taken per request."""
    sandbox.add_fault(DISCOVERY, count=1000, delay_ms=1)


def discovery_calls(sandbox: Sandbox) -> int:
    faults = sandbox.control("GET", "faults")["faults"]
    return sum(1000 - f["remaining"] for f in faults if f["path"] == DISCOVERY)


def api_calls(sandbox: Sandbox) -> dict[str, int]:
    return dict(sandbox.counters()["api"])


def secrets_and_values(sandbox: Sandbox, conn: Connection) -> list[str]:
    """Every token of the connection, every ProfileToken of its Zywave user, and every text
    value of its profiles and of the first records the doctor may have seen (names, emails,
    phones, ...), read from the sandbox directly."""
    found = [conn.access_token or "", conn.refresh_token or ""]
    profiles = sandbox.profiles(conn.zywave_email)
    found += [profile["profile_token"] for profile in profiles]
    bearer = {"Authorization": f"Bearer {conn.access_token}"}
    paths = [f"/profiles/V2.0/Profile/B/{profile['id']}" for profile in profiles]
    page: dict[str, str | int] = {"$top": 3, "$orderby": "id"}
    for path in [*paths, ACCOUNTS, CONTACTS]:
        headers = {**bearer, "Profile": conn.profile_header() or ""}
        body = requests.get(
            f"{sandbox.url}{path}",
            params=page,
            headers=headers,
            timeout=10,
        ).json()
        records = [body] if "/profiles/" in path else parse_envelope(body)[0]
        for record in records:
            found += [v for v in record.values() if isinstance(v, str) and len(v) >= 5]
    return [value for value in found if value and not value[:4].isdigit()]  # not the dates


@pytest.fixture
def linked(staff: User, zywave: Sandbox) -> Connection:
    conn = connection(staff, zywave)
    count_discovery(zywave)
    zywave.control("POST", "counters/reset")
    return conn


def test_the_documented_defaults_pass_every_check_in_seven_calls(
    linked: Connection, zywave: Sandbox
) -> None:
    code, report, err = report_of("--user", "dana")
    assert code == 0, report
    assert set(verdicts(report).values()) == {"ok"}, report
    assert set(report) == {"version", "ran_at", "connection", "checks"}
    assert {"id", "area", "verdict", "saw", "advice"} == set(report["checks"][0])
    assert "envelope items" in saw(report, "api.accounts")
    assert "total field totalCount" in saw(report, "api.accounts")
    assert "keys pascal" in saw(report, "profiles.list")
    assert "ProfileToken in the detail only" in saw(report, "profiles.token")
    assert "mapped fields missing: none" in saw(report, "api.contacts")
    assert "7 calls" in err
    # Six API requests and one discovery, each once; not a single token request.
    calls = api_calls(zywave)
    assert sum(calls.values()) == 6, calls
    assert calls[f"{ACCOUNTS}:200"] == 2 and calls[f"{CONTACTS}:200"] == 1
    assert discovery_calls(zywave) == 1
    assert zywave.counters()["token"] == {}


def test_nothing_secret_and_no_record_value_reaches_either_output_or_the_shapes(
    linked: Connection, zywave: Sandbox, tmp_path: Any
) -> None:
    shapes = tmp_path / "shapes.json"
    outputs = [run("--user", "dana", "--record", str(shapes)), run("--user", "dana", "--json")]
    text = "\n".join(out + err for _code, out, err in outputs) + shapes.read_text()
    values = secrets_and_values(zywave, linked)
    assert len(values) > 20
    assert [value for value in values if value in text] == []


@pytest.mark.parametrize(
    ("envelope", "key_case", "total_field"),
    [
        ("items", "camel", "totalCount"),
        ("value", "pascal", "@odata.count"),
        ("array", "camel", "none"),
    ],
)
def test_each_envelope_and_key_case_is_named_and_read(
    linked: Connection, zywave: Sandbox, envelope: str, key_case: str, total_field: str
) -> None:
    zywave.control("POST", "settings", envelope=envelope, key_case=key_case)
    code, report, _ = report_of()
    assert code == 0
    assert set(verdicts(report).values()) == {"ok"}, report
    assert f"envelope {envelope}, total field {total_field}" in saw(report, "api.accounts")
    assert f"envelope {envelope}, keys {key_case}" in saw(report, "profiles.list")


def test_a_token_auth_method_discovery_does_not_advertise_fails_with_the_setting_to_use(
    linked: Connection, zywave: Sandbox, settings: Any
) -> None:
    zywave.control("POST", "settings", token_auth_method="client_secret_basic")
    code, report, _ = report_of()
    assert code == 1
    assert verdicts(report)["discovery.token_auth"] == "fail"
    assert "ZYWAVE_TOKEN_AUTH_METHOD=client_secret_basic" in advice(report, "discovery.token_auth")
    assert [id for id, v in verdicts(report).items() if v != "ok"] == ["discovery.token_auth"]
    settings.ZYWAVE_TOKEN_AUTH_METHOD = "client_secret_basic"
    code, report, _ = report_of()
    assert code == 0 and verdicts(report)["discovery.token_auth"] == "ok"


def test_another_issuer_fails_and_names_the_issuer_to_set(
    linked: Connection, zywave: Sandbox
) -> None:
    zywave.control("POST", "settings", issuer="https://auth.elsewhere.test")
    code, report, _ = report_of()
    assert code == 1
    assert verdicts(report)["discovery.issuer"] == "fail"
    assert "ZYWAVE_AUTH_URL=https://auth.elsewhere.test" in advice(report, "discovery.issuer")


def test_missing_discovery_warns_and_falls_back_to_the_documented_paths(
    linked: Connection, zywave: Sandbox
) -> None:
    zywave.reset()  # the counting fault off: this one answers discovery
    zywave.add_fault(DISCOVERY, count=5, status=404)
    code, report, _ = report_of()
    assert code == 0
    found = verdicts(report)
    assert {id: v for id, v in found.items() if id.startswith("discovery.")} == {
        "discovery.reachable": "warn",
        "discovery.issuer": "warn",
        "discovery.endpoints": "warn",
        "discovery.token_auth": "warn",
        "discovery.scopes": "warn",
    }
    assert "documented /connect/* paths" in advice(report, "discovery.reachable")
    assert {v for id, v in found.items() if not id.startswith("discovery.")} == {"ok"}


def test_a_token_without_offline_access_fails_with_exit_status_1(
    staff: User, zywave: Sandbox
) -> None:
    scope = " ".join(s for s in PORTAL_SCOPES.split() if s != "offline_access")
    conn = Connection(
        user=staff, zywave_subject="agent@example.com", zywave_email="agent@example.com"
    )
    conn.set_tokens(zywave.obtain_tokens(scope=scope))
    conn.authorized_at = timezone.now()
    conn.save()
    code, report, _ = report_of()
    assert code == 1
    found = verdicts(report)
    assert found["connection.scopes"] == "fail"
    assert found["connection.refresh_token"] == "fail"
    assert "offline_access" in saw(report, "connection.scopes")
    # No profile chosen: the data checks say so instead of guessing one.
    assert found["api.accounts"] == "warn" and "no profile chosen" in saw(report, "api.accounts")


def test_an_expired_access_token_turns_the_api_checks_into_warnings_and_is_never_refreshed(
    linked: Connection, zywave: Sandbox
) -> None:
    linked.access_token_expires_at = timezone.now() - timedelta(minutes=1)
    linked.save()
    code, report, err = report_of()
    assert code == 0
    found = verdicts(report)
    assert found["connection.access_token"] == "warn"
    for id in ("profiles.list", "profiles.token", "api.accounts", "api.contacts"):
        assert found[id] == "warn", id
        assert "never refreshes" in saw(report, id)
    assert api_calls(zywave) == {} and zywave.counters()["token"] == {}
    assert "1 calls" in err  # discovery only
    linked.refresh_from_db()
    assert linked.access_token_expires_at < timezone.now()


def test_an_access_token_zywave_refuses_is_a_warning_not_a_refresh(
    linked: Connection, zywave: Sandbox
) -> None:
    zywave.control("POST", "users/agent@example.com/expire-access-tokens")
    code, report, _ = report_of()
    assert code == 0
    assert verdicts(report)["api.accounts"] == "warn"
    assert "401" in saw(report, "api.accounts")
    assert zywave.counters()["token"] == {}
    # One request per route, each refused once: none was asked again after a refresh.
    assert all(count == 1 for count in api_calls(zywave).values())


def test_a_profile_header_that_changes_the_answer_is_honoured(
    linked: Connection, zywave: Sandbox
) -> None:
    other = zywave.profiles()[1]["id"]
    zywave.control("POST", "users/agent@example.com/active-profile", profile_id=other)
    _code, report, _ = report_of()
    assert verdicts(report)["api.explicit_profile"] == "ok"
    assert "the header is honoured" in saw(report, "api.explicit_profile")
    assert "another than the chosen one" in saw(report, "profiles.current")


def test_without_a_connection_the_exit_status_is_2(db: None) -> None:
    code, out, err = run()
    assert code == 2 and out == "" and "no Zywave connection" in err
    assert run("--user", "nobody")[0] == 2


def test_a_run_from_the_command_is_audited(linked: Connection) -> None:
    run()
    event = ConnectionEvent.objects.get(connection=linked, kind=ConnectionEvent.Kind.DOCTOR_RUN)
    assert event.detail == {"via": "command", "worst": "ok", "calls": 7}


def test_every_mapped_key_is_one_the_row_builders_read() -> None:
    """MAPPED lists the keys the portal reads: each one changes the row it builds."""
    now = timezone.now()
    for resource, build in (("accounts", account_row), ("contacts", contact_row)):
        base = {"id": "7"}
        plain = build(1, None, base, now)
        for key in MAPPED[resource]:
            if key == "id":
                continue
            value: Any = "2026-01-01T00:00:00Z" if key == "updateddatetime" else "true"
            if key == "isactive":
                value = "false"  # its default is true
            if key == "numberofemployees":
                value = 12
            changed = build(1, None, {**base, key: value}, now)
            assert {k: v for k, v in changed.items() if k != "raw"} != {
                k: v for k, v in plain.items() if k != "raw"
            }, key


def test_diagnose_reports_progress_in_steps_drawing_on_the_budget_as_a_person(
    linked: Connection,
) -> None:
    seen: list[tuple[str, int, int, str]] = []

    def progress(step: str, done: int, total: int) -> None:
        seen.append((step, done, total, ratelimit.current_priority()))

    diagnose(linked, progress)
    assert [step for step, *_ in seen][:2] == ["discovery", "connection"]
    assert seen[-1][:3] == ("done", 6, 6)
    # Someone waits for the report: ahead of scheduled syncs on the app's rate budget.
    assert {priority for *_, priority in seen} == {ratelimit.INTERACTIVE}
    assert ratelimit.current_priority() == ratelimit.BACKGROUND  # and only while it runs


def test_zywave_busy_is_a_warning_and_a_refusal_a_failure(
    linked: Connection, zywave: Sandbox
) -> None:
    zywave.add_fault(r"^/accounts/v2\.0/account$", count=1, status=503)
    zywave.add_fault(r"^/accounts/v2\.0/contact$", count=1, status=403)
    code, report, _ = report_of()
    assert code == 1
    found = verdicts(report)
    assert found["api.accounts"] == "warn" and "503" in saw(report, "api.accounts")
    assert found["api.contacts"] == "fail" and "403" in saw(report, "api.contacts")
    assert found["api.explicit_profile"] == "warn"  # not compared: no page to compare with


def test_the_id_form_of_the_profile_header_passes_too(
    staff: User, zywave: Sandbox, settings: Any
) -> None:
    settings.ZYWAVE_PROFILE_HEADER = "id"
    conn = connection(staff, zywave)
    assert conn.profile_header() == f"B {conn.chosen_profile.zywave_id}"  # type: ignore[union-attr]
    code, report, _ = report_of()
    assert code == 0, report
    assert "ZYWAVE_PROFILE_HEADER=id" in saw(report, "profiles.token")
    assert set(verdicts(report).values()) == {"ok"}
