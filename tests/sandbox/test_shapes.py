"""The sandbox answering in recorded shapes (SANDBOX_SHAPES_FILE, sandbox/zywave/shapes.py).

For each shapes file of tests/shapes/ (written by hand from docs/zywave.md's variants; a file
recorded in the wild dropped there becomes one more case), a sandbox started with it answers
the portal's client and a real sync, and the doctor records again exactly the file's shapes.
And the round trip: what the doctor records from the sandbox in one variant, replayed by a
fresh sandbox, records again to the same file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command

from integrations.models import Account, Contact, SyncRun
from integrations.sync import sync_now
from tests.conftest import connection
from tests.integrations.flows import sandbox_counts
from tests.sandboxserver import Sandbox, SandboxError, start_sandbox, stop_sandbox

SHAPES = Path(__file__).resolve().parent.parent / "shapes"
FILES = sorted(SHAPES.glob("*.json"))
REPLAYED = ("profiles", "profile", "current_profile", "accounts", "contacts")

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def started(var_dir: Path, shapes_file: Path) -> tuple[Sandbox, Any]:
    handle, process = start_sandbox(
        var_dir, accounts=40, env={"SANDBOX_SHAPES_FILE": str(shapes_file)}
    )
    handle.ensure_test_redirect_uri()
    handle.take_baseline()
    return handle, process


@pytest.fixture(scope="module", params=FILES, ids=[path.stem for path in FILES])
def shaped(request: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    handle, process = started(tmp_path_factory.mktemp(request.param.stem), request.param)
    handle.shapes_file = request.param  # type: ignore[attr-defined]
    try:
        yield handle
    finally:
        stop_sandbox(process)


def pointed_at(sandbox: Sandbox, settings: Any) -> Sandbox:
    settings.ZYWAVE_AUTH_URL = sandbox.url
    settings.ZYWAVE_API_URL = sandbox.url
    settings.ZYWAVE_HTTP_TIMEOUT = (2.0, 3.0)
    return sandbox


def record(path: Path) -> dict[str, Any]:
    """The shapes the doctor records (its report under "report")."""
    out = StringIO()
    call_command("zywave_doctor", "--json", "--record", str(path), stdout=out, stderr=StringIO())
    return {**json.loads(path.read_text()), "report": json.loads(out.getvalue())}


def test_the_portal_connects_and_syncs_in_each_shape(
    shaped: Sandbox, settings: Any, staff: User
) -> None:
    pointed_at(shaped, settings)
    shaped.reset(restore=True)
    conn = connection(staff, shaped)  # profiles listed and one chosen through the client
    assert conn.chosen_profile is not None and conn.chosen_profile.profile_token
    assert conn.profiles.count() == 3
    run = sync_now(conn, full=True)
    assert run is not None
    assert run.state == SyncRun.State.SUCCEEDED, run.error
    expected = sandbox_counts(shaped, conn)
    assert Account.objects.filter(connection=conn).count() == expected["accounts"] > 0
    assert Contact.objects.filter(connection=conn).count() == expected["contacts"] > 0
    file = json.loads(shaped.shapes_file.read_text())  # type: ignore[attr-defined]
    contact_keys = file["routes"]["contacts"]["body"]
    contact_keys = contact_keys.get("items") or next(
        sub["items"] for sub in contact_keys["keys"].values() if sub["type"] == "array"
    )
    sample = Contact.objects.filter(connection=conn).order_by("zywave_id").first()
    assert sample is not None
    # The record arrives with the file's keys exactly (case and set; jsonb keeps no order),
    # mapped all the same.
    assert set(sample.raw) == set(contact_keys["keys"])
    assert sample.last_name and sample.account_zywave_id
    if "title" not in {key.lower() for key in contact_keys["keys"]}:
        assert sample.title == ""  # the optional field missing: the column stays empty


def test_the_doctor_records_each_file_back_from_the_sandbox(
    shaped: Sandbox, settings: Any, staff: User, tmp_path: Path
) -> None:
    pointed_at(shaped, settings)
    shaped.reset(restore=True)
    connection(staff, shaped)
    found = record(tmp_path / "again.json")
    recorded, report = found["routes"], found["report"]
    file = json.loads(shaped.shapes_file.read_text())["routes"]  # type: ignore[attr-defined]
    for route in REPLAYED:
        assert recorded[route]["status"] == 200
        assert recorded[route]["envelope"] == file[route]["envelope"], route
        assert recorded[route]["body"] == file[route]["body"], route
        assert set(file[route]["headers"]) <= set(recorded[route]["headers"]), route
    assert recorded["accounts_without_profile"]["body"] == file["accounts"]["body"]
    # And the doctor says what it met: the fields missing, the rate-limit headers.
    checks = {check["id"]: check for check in report["checks"]}
    missing = "mapped fields missing: title" in checks["api.contacts"]["saw"]
    assert missing == (shaped.shapes_file.stem == "array-camel")  # type: ignore[attr-defined]
    assert checks["api.contacts"]["verdict"] == ("warn" if missing else "ok")
    limits = checks["limits.headers"]["saw"]
    assert ("x-ratelimit-remaining" in limits) == ("x-ratelimit-remaining" in str(file))


@pytest.mark.parametrize(("envelope", "key_case"), [("value", "camel"), ("array", "pascal")])
def test_recorded_in_one_variant_replayed_by_a_fresh_sandbox_records_the_same_file(
    zywave: Sandbox,
    settings: Any,
    staff: User,
    other_staff: User,
    tmp_path: Path,
    envelope: str,
    key_case: str,
) -> None:
    zywave.control("POST", "settings", envelope=envelope, key_case=key_case)
    first = connection(staff, zywave)
    recorded = tmp_path / "variant.json"
    record(recorded)
    first.delete()
    (tmp_path / "replay").mkdir()
    replaying, process = started(tmp_path / "replay", recorded)
    try:
        pointed_at(replaying, settings)
        connection(other_staff, replaying)
        again = tmp_path / "again.json"
        record(again)
    finally:
        stop_sandbox(process)
    assert again.read_text() == recorded.read_text()
    routes = json.loads(recorded.read_text())["routes"]
    assert set(routes) == {"discovery", *REPLAYED, "accounts_without_profile"}
    assert routes["accounts"]["envelope"] == envelope


def test_a_shapes_file_that_cannot_be_read_stops_the_sandbox_at_start(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": 1}')
    with pytest.raises(SandboxError, match="not a shapes file"):
        start_sandbox(tmp_path, accounts=1, env={"SANDBOX_SHAPES_FILE": str(broken)})


def test_a_record_takes_the_shapes_keys_types_and_nesting_from_its_own_fields() -> None:
    """sandbox/zywave/shapes.py's filling, without a server (its functions touch no settings)."""
    from sandbox.zywave.shapes import fill

    shape = {
        "type": "object",
        "keys": {
            "ID": {"type": "string"},
            "Employees": {"type": "integer"},
            "LinesOfBusiness": {"type": "string"},
            "NaicsCodes": {"type": "array"},
            "Address": {"type": "object", "keys": {"City": {"type": "string"}}},
            "Fax": {"type": "null"},
            "Rating": {"type": "number"},
            "Seen": {"type": "string", "format": "date-time"},
        },
    }
    row = {"id": 7, "employees": "12", "linesofbusiness": ["a", "b"], "naicscodes": ["1"]}
    record = fill(shape, {**row, "city": "Here", "fax": "x", "unmapped": 1})
    assert list(record) == list(shape["keys"])  # the shape's keys, in its order and case
    assert record["ID"] == "7" and record["Employees"] == 12
    assert record["LinesOfBusiness"] == "a, b"
    assert record["NaicsCodes"] == []  # recorded empty: no items are known
    assert record["Address"] == {"City": "Here"} and record["Fax"] is None
    assert record["Rating"] == 0.0 and record["Seen"].endswith("Z")  # synthetic, typed
