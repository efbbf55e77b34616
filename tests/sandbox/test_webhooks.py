"""Zywave's webhooks as the sandbox emulates them (docs/zywave.md §6): subscriptions verified by
the challenge, deliveries of control-API changes to subscribers who may see the record, retries
with growing waits, and each injected fault, against a real receiver on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests

from tests.sandbox.conftest import AGENT_PROFILES, SOLO_PROFILE, all_items, call
from tests.sandboxserver import Sandbox, SandboxError, parse_forms

AGENT_AGENCY_PROFILE = AGENT_PROFILES[2]  # Prairie Shield Agency: agent@example.com's
BODY_KEYS = ["eventType", "eventDateTime", "recordType", "recordId"]


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # A listen backlog as a real server's: http.server's 5 drops the SYNs of parallel
    # deliveries, and a dropped SYN waits a second for its retransmission.
    request_queue_size = 128


class Receiver:
    """An HTTP server on 127.0.0.1 that plays a webhook receiver: it answers a GET's
    `challenge` with `echo(challenge)`, and records every POST (its path, headers, body and
    arrival time), answering each with the next of `statuses` (204 when none is left) after
    the next of `delays` (none when none is left)."""

    def __init__(self, port: int = 0) -> None:
        self.received: list[dict[str, Any]] = []
        self.challenges: list[str] = []
        self.statuses: deque[int] = deque()
        self.delays: deque[float] = deque()
        self.echo: Callable[[str], str] = lambda challenge: challenge
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                challenge = parse_qs(urlsplit(self.path).query).get("challenge", [""])[0]
                receiver.challenges.append(challenge)
                self.answer(200, receiver.echo(challenge).encode(), "text/plain")

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.received.append(
                        {
                            "at": time.time(),
                            "path": urlsplit(self.path).path,
                            "headers": dict(self.headers),
                            "body": body,
                        }
                    )
                    status = receiver.statuses.popleft() if receiver.statuses else 204
                    delay = receiver.delays.popleft() if receiver.delays else 0.0
                time.sleep(delay)
                self.answer(status, b"", "text/plain")

            def answer(self, status: int, body: bytes, content_type: str) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the sandbox gave up waiting (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = Server(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def uri(self, path: str = "/hooks/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self, path: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [
                json.loads(item["body"])
                for item in self.received
                if path is None or item["path"] == path
            ]

    def wait_for(self, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        """The first `count` POSTs, once that many arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received[:count])
            time.sleep(0.02)
        raise AssertionError(f"{len(self.received)} of {count} deliveries arrived")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def zywave(sandbox_clean: Sandbox) -> Sandbox:
    """The sandbox, clean (no webhooks, no faults), with retries compressed for tests."""
    sandbox_clean.control("POST", "settings", webhook_retry_schedule=[0.2, 0.4, 0.8])
    return sandbox_clean


def change_account(zywave: Sandbox, profile_id: str = AGENT_AGENCY_PROFILE, **extra: Any) -> Any:
    return zywave.control("POST", "accounts/change", profile_id=profile_id, **extra)


def refused(zywave: Sandbox, **payload: Any) -> requests.Response:
    return requests.post(
        f"{zywave.url}/_sandbox/webhooks",
        json=payload,
        headers={"X-Sandbox-Key": zywave.control_key},
        timeout=30,
    )


# Subscriptions -------------------------------------------------------------------------------


def test_a_uri_that_echoes_the_challenge_is_subscribed(zywave: Sandbox, receiver: Receiver) -> None:
    webhook = zywave.subscribe_webhook(receiver.uri(), "account.updated")
    assert webhook["user"] == "agent@example.com"
    assert webhook["event_type"] == "account.updated"
    assert webhook["uri"] == receiver.uri()
    assert len(receiver.challenges) == 1 and len(receiver.challenges[0]) >= 20
    assert zywave.webhooks() == [webhook]
    assert zywave.webhooks(user="solo@example.com") == []
    # Registering it again finds the same subscription (verified again).
    assert zywave.subscribe_webhook(receiver.uri(), "account.updated")["id"] == webhook["id"]
    assert len(receiver.challenges) == 2 and receiver.challenges[0] != receiver.challenges[1]


def test_a_uri_that_answers_anything_but_the_challenge_is_refused(
    zywave: Sandbox, receiver: Receiver
) -> None:
    for echo in [lambda c: c + "\n", lambda c: c.upper(), lambda c: "", lambda c: "ok"]:
        receiver.echo = echo
        answer = refused(
            zywave, user="agent@example.com", event_type="account.updated", uri=receiver.uri()
        )
        assert answer.status_code == 400
        assert "not the challenge" in answer.json()["error"]
    assert zywave.webhooks() == []


def test_a_uri_that_does_not_answer_or_not_with_2xx_is_refused(zywave: Sandbox) -> None:
    closed = Receiver()
    uri = closed.uri()
    closed.stop()
    answer = refused(zywave, user="agent@example.com", event_type="account.updated", uri=uri)
    assert answer.status_code == 400 and "challenge GET failed" in answer.json()["error"]
    assert zywave.webhooks() == []


def test_only_loopback_uris_known_users_and_event_types_are_accepted(
    zywave: Sandbox, receiver: Receiver
) -> None:
    good = {"user": "agent@example.com", "event_type": "account.updated", "uri": receiver.uri()}
    for change, reason in [
        ({"uri": "http://10.1.2.3/hooks/"}, "loopback"),
        ({"uri": "http://example.com/hooks/"}, "loopback"),
        ({"uri": "http://127.0.0.1.example.com/hooks/"}, "loopback"),
        ({"uri": "ftp://127.0.0.1/hooks/"}, "http"),
        ({"uri": "http://user:pw@127.0.0.1/hooks/"}, "credentials"),
        ({"user": "nobody@example.com"}, "No sandbox user"),
        ({"event_type": "account.touched"}, "event_type"),
    ]:
        answer = refused(zywave, **{**good, **change})
        assert answer.status_code == 400, change
        assert reason in answer.json()["error"], answer.json()
    assert receiver.challenges == []  # none of them was sent a challenge
    assert zywave.webhooks() == []


def test_a_webhook_is_deleted_with_its_queue(zywave: Sandbox, receiver: Receiver) -> None:
    webhook = zywave.subscribe_webhook(receiver.uri())
    zywave.control("POST", "settings", webhook_delay_seconds=30)
    change_account(zywave)
    assert len(zywave.webhook_deliveries()) == 1
    assert zywave.unsubscribe_webhook(webhook["id"]) == {"deleted": webhook["id"]}
    assert zywave.webhooks() == [] and zywave.webhook_deliveries() == []
    with pytest.raises(SandboxError, match="404"):
        zywave.unsubscribe_webhook(webhook["id"])
    # DELETE works too.
    again = zywave.subscribe_webhook(receiver.uri())
    answer = requests.delete(
        f"{zywave.url}/_sandbox/webhooks/{again['id']}",
        headers={"X-Sandbox-Key": zywave.control_key},
        timeout=30,
    )
    assert answer.status_code == 200 and zywave.webhooks() == []


def test_a_restoring_reset_removes_every_webhook(zywave: Sandbox, receiver: Receiver) -> None:
    zywave.subscribe_webhook(receiver.uri())
    zywave.reset()
    assert len(zywave.webhooks()) == 1  # a plain reset lifts faults, keeps webhooks
    zywave.reset(restore=True)
    assert zywave.webhooks() == []


def test_the_admin_page_adds_lists_and_removes_webhooks(
    zywave: Sandbox, receiver: Receiver
) -> None:
    browser = requests.Session()
    page = browser.get(f"{zywave.url}/admin/webhooks", timeout=30)
    login = next(form for form in parse_forms(page.text) if "password" in form["fields"])
    data = {**login["fields"], "username": "solo@example.com", "password": "sandbox"}
    page = browser.post(urljoin(page.url, login["action"]), data=data, timeout=30)
    assert page.url.endswith("/admin/webhooks") and "No webhooks yet" in page.text

    def submit(**fields: str) -> requests.Response:
        form = parse_forms(page.text)[0]
        data = {**form["fields"], "event_type": "contact.created", **fields}
        return browser.post(f"{zywave.url}/admin/webhooks", data=data, timeout=30)

    wrong = submit(uri="http://192.0.2.1/hooks/")
    assert wrong.status_code == 400 and "loopback" in wrong.text
    added = submit(uri=receiver.uri("/solo/"))
    assert added.status_code == 200 and "added" in added.text
    [webhook] = zywave.webhooks()
    assert webhook["user"] == "solo@example.com"
    assert webhook["event_type"] == "contact.created"
    assert receiver.uri("/solo/") in added.text

    remove = next(f for f in parse_forms(added.text) if "delete" in f["buttons"])
    data = {**remove["fields"], "delete": remove["buttons"]["delete"]}
    removed = browser.post(f"{zywave.url}/admin/webhooks", data=data, timeout=30)
    assert removed.status_code == 200 and zywave.webhooks() == []


def test_the_admin_page_needs_a_signed_in_user_and_csrf(zywave: Sandbox) -> None:
    anonymous = requests.get(f"{zywave.url}/admin/webhooks", allow_redirects=False, timeout=30)
    assert anonymous.status_code == 302 and "/account/login" in anonymous.headers["Location"]
    forged = requests.post(
        f"{zywave.url}/admin/webhooks", data={"uri": "http://127.0.0.1:9/"}, timeout=30
    )
    assert forged.status_code == 403


# Deliveries ----------------------------------------------------------------------------------


def test_a_change_is_delivered_as_the_documented_notification(
    zywave: Sandbox, receiver: Receiver
) -> None:
    zywave.subscribe_webhook(receiver.uri())
    changed = change_account(zywave, field="name")
    [post] = receiver.wait_for(1)
    assert post["path"] == "/hooks/"
    assert post["headers"]["Content-Type"] == "application/json"
    assert not any("signature" in name.lower() for name in post["headers"])
    body = json.loads(post["body"])
    assert list(body) == BODY_KEYS
    assert body["eventType"] == "account.updated"
    assert body["recordType"] == "Account"
    assert body["recordId"] == str(changed["ids"][0])
    assert body["eventDateTime"].endswith("Z")
    when = datetime.fromisoformat(body["eventDateTime"])
    assert when == datetime.fromisoformat(changed["updatedDateTime"])

    assert zywave.drain_webhooks()["delivered"] == 1
    [delivery] = zywave.webhook_deliveries()
    assert delivery["state"] == "delivered" and delivery["faults"] == []
    assert json.loads(delivery["body"]) == body
    [attempt] = delivery["attempts"]
    assert attempt["status"] == 204 and attempt["error"] == ""


def test_the_body_keys_can_be_pascal_case(zywave: Sandbox, receiver: Receiver) -> None:
    zywave.control("POST", "settings", webhook_key_case="pascal")
    zywave.subscribe_webhook(receiver.uri())
    change_account(zywave)
    receiver.wait_for(1)
    assert list(receiver.bodies()[0]) == ["EventType", "EventDateTime", "RecordType", "RecordId"]


def test_a_change_reaches_only_subscribers_who_may_see_the_record(
    zywave: Sandbox, receiver: Receiver
) -> None:
    for user in ["agent", "solo", "none"]:
        zywave.subscribe_webhook(receiver.uri(f"/{user}/"), user=f"{user}@example.com")
    solos = change_account(zywave, SOLO_PROFILE, count=2)["ids"]
    agents = change_account(zywave, AGENT_PROFILES[0], count=3)["ids"]
    zywave.drain_webhooks()
    assert sorted(int(b["recordId"]) for b in receiver.bodies("/solo/")) == sorted(solos)
    assert sorted(int(b["recordId"]) for b in receiver.bodies("/agent/")) == sorted(agents)
    assert receiver.bodies("/none/") == []

    # A profile taken away takes its agency's records with it.
    zywave.control("POST", f"users/agent@example.com/profiles/{AGENT_PROFILES[0]}/remove")
    change_account(zywave, AGENT_PROFILES[0])
    zywave.drain_webhooks()
    assert len(receiver.bodies("/agent/")) == 3


def test_a_webhook_hears_only_its_event_type(zywave: Sandbox, receiver: Receiver) -> None:
    zywave.subscribe_webhook(receiver.uri(), "account.archived")
    change_account(zywave)
    archived = zywave.control("POST", "accounts/archive", profile_id=AGENT_AGENCY_PROFILE)["ids"]
    zywave.drain_webhooks()
    assert [(b["eventType"], b["recordId"]) for b in receiver.bodies()] == [
        ("account.archived", str(archived[0]))
    ]


def test_every_record_change_of_the_control_api_is_delivered(
    zywave: Sandbox, receiver: Receiver, agent_token: str
) -> None:
    kinds = ["account", "contact", "policy"]
    actions = ["created", "updated", "archived", "deleted"]
    for event_type in [f"{kind}.{action}" for kind in kinds for action in actions]:
        zywave.subscribe_webhook(receiver.uri(f"/{event_type}/"), event_type)
    profile = AGENT_AGENCY_PROFILE
    # A seeded account with policies (and contacts), to delete with everything under it.
    policies = call(zywave, agent_token, "/policies/v2.0/policy", f"B {profile}").json()["items"]
    seeded = str(policies[0]["accountId"])
    its_policies = [str(p["id"]) for p in policies if str(p["accountId"]) == seeded]
    path = f"/accounts/v2.0/account/{seeded}/contacts"
    its_contacts = [str(c["id"]) for c in all_items(zywave, agent_token, path, f"B {profile}")]

    def ids(path: str, **payload: Any) -> list[str]:
        return [str(i) for i in zywave.control("POST", path, profile_id=profile, **payload)["ids"]]

    [account] = ids("accounts/create", name="Webhook Test Co")
    assert ids("accounts/change", ids=[int(account)]) == [account]
    contacts = ids("contacts/create", account_id=int(account), count=3)
    assert ids("contacts/change", ids=[int(contacts[0])], field="title") == contacts[:1]
    assert ids("contacts/archive", ids=[int(contacts[1])]) == contacts[1:2]
    assert ids("contacts/delete", ids=[int(contacts[2])]) == contacts[2:]
    # Archiving the account archives its live contact (not the archived one again).
    assert ids("accounts/archive", ids=[int(account)]) == [account]
    deleted = ids("accounts/delete", ids=[int(account), int(seeded)])
    assert sorted(deleted) == sorted([account, seeded])
    zywave.drain_webhooks()

    def heard(event_type: str) -> list[str]:
        bodies = receiver.bodies(f"/{event_type}/")
        assert all(b["eventType"] == event_type for b in bodies)
        assert {b["recordType"] for b in bodies} <= {event_type.split(".")[0].capitalize()}
        return [b["recordId"] for b in bodies]

    assert heard("account.created") == [account]
    assert heard("account.updated") == [account]
    assert heard("account.archived") == [account]
    assert sorted(heard("account.deleted")) == sorted([account, seeded])
    assert heard("contact.created") == contacts
    assert heard("contact.updated") == contacts[:1]
    assert heard("contact.archived") == [contacts[1], contacts[0]]
    assert heard("contact.deleted")[0] == contacts[2]
    assert sorted(heard("contact.deleted")[1:]) == sorted([*contacts[:2], *its_contacts])
    assert sorted(heard("policy.deleted")) == sorted(its_policies)
    assert heard("policy.created") == heard("policy.updated") == heard("policy.archived") == []


def test_a_hand_made_delivery_names_any_record(zywave: Sandbox, receiver: Receiver) -> None:
    webhook = zywave.subscribe_webhook(receiver.uri(), "contact.updated")
    sent = zywave.send_webhook(webhook["id"], "999999")
    zywave.drain_webhooks()
    [body] = receiver.bodies()
    assert body == json.loads(sent["body"])
    assert zywave.webhook_deliveries()[0]["faults"] == ["manual"]
    assert (body["eventType"], body["recordType"], body["recordId"]) == (
        "contact.updated",
        "Contact",
        "999999",
    )


# Retries -------------------------------------------------------------------------------------


def test_a_failed_delivery_is_retried_with_growing_waits(
    zywave: Sandbox, receiver: Receiver
) -> None:
    zywave.control("POST", "settings", webhook_retry_schedule=[0.3, 0.6, 1.2, 5])
    receiver.statuses.extend([500, 503, 404])
    zywave.subscribe_webhook(receiver.uri())
    change_account(zywave)
    posts = receiver.wait_for(4)
    assert len({post["body"] for post in posts}) == 1  # the same notification each time
    gaps = [later["at"] - earlier["at"] for earlier, later in zip(posts, posts[1:], strict=False)]
    for gap, wait in zip(gaps, [0.3, 0.6, 1.2], strict=True):
        assert wait - 0.05 <= gap <= wait + 1.0, gaps
    assert gaps == sorted(gaps)
    zywave.drain_webhooks()
    [delivery] = zywave.webhook_deliveries()
    assert delivery["state"] == "delivered"
    assert [attempt["status"] for attempt in delivery["attempts"]] == [500, 503, 404, 204]


def test_a_delivery_is_given_up_after_the_last_retry(zywave: Sandbox, receiver: Receiver) -> None:
    zywave.control("POST", "settings", webhook_retry_schedule=[0.1, 0.1])
    receiver.statuses.extend([500] * 10)
    zywave.subscribe_webhook(receiver.uri())
    change_account(zywave)
    assert zywave.drain_webhooks()["failed"] == 1
    [delivery] = zywave.webhook_deliveries()
    assert delivery["state"] == "failed"
    assert [attempt["status"] for attempt in delivery["attempts"]] == [500, 500, 500]
    time.sleep(0.5)
    assert len(receiver.received) == 3


def test_a_slow_answer_times_out_and_is_retried(zywave: Sandbox, receiver: Receiver) -> None:
    zywave.control("POST", "settings", webhook_timeout=0.5)
    receiver.delays.append(3.0)
    zywave.subscribe_webhook(receiver.uri())
    change_account(zywave)
    zywave.drain_webhooks()
    [delivery] = zywave.webhook_deliveries()
    first, second = delivery["attempts"]
    assert first["status"] is None and "timed out" in first["error"]
    assert first["duration_ms"] < 2000
    assert second["status"] == 204


def test_deliveries_to_a_receiver_that_is_down_arrive_once_it_is_back(
    zywave: Sandbox, receiver: Receiver
) -> None:
    zywave.control("POST", "settings", webhook_retry_schedule=[0.3] * 20)
    zywave.subscribe_webhook(receiver.uri())
    receiver.stop()
    ids = change_account(zywave, count=3)["ids"]
    deadline = time.monotonic() + 20
    while not all(len(d["attempts"]) >= 2 for d in zywave.webhook_deliveries()):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    failures = [a for d in zywave.webhook_deliveries() for a in d["attempts"]]
    assert all(a["status"] is None and "Refused" in a["error"] for a in failures)

    back = Receiver(receiver.port)
    try:
        zywave.drain_webhooks()
        assert sorted(int(body["recordId"]) for body in back.bodies()) == sorted(ids)
    finally:
        back.stop()


def test_drain_answers_408_while_deliveries_are_pending(
    zywave: Sandbox, receiver: Receiver
) -> None:
    zywave.control("POST", "settings", webhook_delay_seconds=60)
    zywave.subscribe_webhook(receiver.uri())
    change_account(zywave)
    with pytest.raises(SandboxError, match="408"):
        zywave.drain_webhooks(timeout=0.3)


# Faults --------------------------------------------------------------------------------------


def test_duplicates_send_each_delivery_twice(zywave: Sandbox, receiver: Receiver) -> None:
    zywave.control("POST", "settings", webhook_duplicates=True)
    zywave.subscribe_webhook(receiver.uri())
    ids = change_account(zywave, count=2)["ids"]
    zywave.drain_webhooks()
    bodies = receiver.bodies()
    assert len(bodies) == 4
    assert sorted(int(b["recordId"]) for b in bodies) == sorted(ids * 2)
    for record_id in ids:
        copies = [b for b in bodies if b["recordId"] == str(record_id)]
        assert copies[0] == copies[1]
    faults = sorted(tuple(d["faults"]) for d in zywave.webhook_deliveries())
    assert faults == [(), (), ("duplicate",), ("duplicate",)]


def test_out_of_order_shuffles_a_batch(zywave: Sandbox, receiver: Receiver) -> None:
    zywave.control("POST", "settings", webhook_out_of_order=True)
    zywave.subscribe_webhook(receiver.uri())
    ids = change_account(zywave, count=6)["ids"]
    zywave.drain_webhooks()
    received = [int(body["recordId"]) for body in receiver.bodies()]
    assert sorted(received) == sorted(ids)
    assert received != sorted(ids)
    assert all("out_of_order" in d["faults"] for d in zywave.webhook_deliveries())


def test_a_delay_holds_each_delivery(zywave: Sandbox, receiver: Receiver) -> None:
    zywave.control("POST", "settings", webhook_delay_seconds=1.5)
    zywave.subscribe_webhook(receiver.uri())
    changed_at = time.time()
    change_account(zywave)
    time.sleep(1.0)
    assert receiver.received == []
    [post] = receiver.wait_for(1)
    assert post["at"] - changed_at >= 1.5
    assert zywave.webhook_deliveries()[0]["faults"] == ["delayed"]


def test_a_burst_sends_many_deliveries_for_one_record(zywave: Sandbox, receiver: Receiver) -> None:
    zywave.control("POST", "settings", webhook_burst=25)
    zywave.subscribe_webhook(receiver.uri())
    changed = change_account(zywave)
    zywave.drain_webhooks()
    bodies = receiver.bodies()
    assert len(bodies) == 25
    assert {b["recordId"] for b in bodies} == {str(changed["ids"][0])}
    times = [datetime.fromisoformat(b["eventDateTime"]) for b in bodies]
    assert times == sorted(times) and len(set(times)) == 25
    assert times[-1] == datetime.fromisoformat(changed["updatedDateTime"])


def test_a_foreign_delivery_names_a_record_the_owner_may_not_see(
    zywave: Sandbox, receiver: Receiver
) -> None:
    zywave.subscribe_webhook(receiver.uri("/agent/"), user="agent@example.com")
    zywave.subscribe_webhook(receiver.uri("/solo/"), user="solo@example.com")
    zywave.control("POST", "settings", webhook_foreign=True)
    [solos] = change_account(zywave, SOLO_PROFILE)["ids"]
    zywave.drain_webhooks()
    assert [b["recordId"] for b in receiver.bodies("/agent/")] == [str(solos)]
    assert [b["recordId"] for b in receiver.bodies("/solo/")] == [str(solos)]
    faults = {d["user"]: d["faults"] for d in zywave.webhook_deliveries()}
    assert faults == {"agent@example.com": ["foreign"], "solo@example.com": []}


def test_a_reset_turns_every_fault_off(zywave: Sandbox) -> None:
    zywave.control(
        "POST",
        "settings",
        webhook_duplicates=True,
        webhook_out_of_order=True,
        webhook_delay_seconds=3,
        webhook_burst=4,
        webhook_foreign="true",
    )
    current = zywave.reset()["settings"]
    assert current["webhook_duplicates"] is False
    assert current["webhook_out_of_order"] is False
    assert current["webhook_delay_seconds"] == 0
    assert current["webhook_burst"] == 0
    assert current["webhook_foreign"] is False
    assert current["webhook_retry_schedule"] == [1, 2, 4, 8, 16, 32, 60]


def test_bad_webhook_settings_are_refused(zywave: Sandbox) -> None:
    for bad in [
        {"webhook_retry_schedule": "soon"},
        {"webhook_retry_schedule": [-1]},
        {"webhook_timeout": 0},
        {"webhook_burst": 100000},
        {"webhook_key_case": "snake"},
    ]:
        answer = requests.post(
            f"{zywave.url}/_sandbox/settings",
            json=bad,
            headers={"X-Sandbox-Key": zywave.control_key},
            timeout=30,
        )
        assert answer.status_code == 400, bad
    schedule = zywave.control("POST", "settings", webhook_retry_schedule="0.5, 1")
    assert schedule["webhook_retry_schedule"] == [0.5, 1.0]


def test_parallel_deliveries_all_arrive(zywave: Sandbox, receiver: Receiver) -> None:
    zywave.control("POST", "settings", webhook_parallel=4, webhook_burst=50)
    zywave.subscribe_webhook(receiver.uri())
    ids = change_account(zywave, count=4)["ids"]
    assert zywave.drain_webhooks()["delivered"] == 200
    received = [int(body["recordId"]) for body in receiver.bodies()]
    assert sorted(received) == sorted(ids * 50)
