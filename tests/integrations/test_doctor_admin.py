"""The Zywave doctor in the admin: run on demand from a connection's page by staff with the
change permission, as a Celery task on a real worker, its progress followed by a page that
reloads itself, the report kept with its date and the run audited."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import User
from django.utils import timezone

from integrations.doctor import request_report, run_report
from integrations.models import Connection, ConnectionEvent, DoctorReport
from portal.celery import app
from tests.conftest import Person, connection
from tests.integrations.workers import Worker, wait_for
from tests.sandboxserver import Sandbox

CONNECTIONS = "/admin/integrations/connection/"
REPORTS = "/admin/integrations/doctorreport/"


def run_from_the_page(visitor: Person, conn: Connection) -> Any:
    return visitor.post(f"{CONNECTIONS}{conn.pk}/act/", {"action": "run_doctor"})


def test_the_task_goes_to_the_celery_queue() -> None:
    route = app.amqp.router.route({}, "integrations.tasks.run_doctor")
    assert route["queue"].name == "celery"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_an_admin_runs_the_doctor_on_a_worker_and_reads_the_report(
    root: Person, admin_user: User, staff: User, worker: Worker, zywave: Sandbox
) -> None:
    conn = connection(staff, zywave)
    page = root.get(f"{CONNECTIONS}{conn.pk}/change/")
    assert b'value="run_doctor"' in page.content  # a button on the connection's page
    response = run_from_the_page(root, conn)
    report = DoctorReport.objects.get(connection=conn)
    assert response.status_code == 302
    assert response["Location"] == f"{REPORTS}{report.pk}/change/"
    event = ConnectionEvent.objects.get(connection=conn, kind=ConnectionEvent.Kind.DOCTOR_RUN)
    assert event.actor == admin_user and event.detail == {"report": report.pk}

    wait_for(lambda: DoctorReport.objects.get(pk=report.pk).is_finished, 60, "the doctor's report")
    report.refresh_from_db()
    assert report.state == DoctorReport.State.DONE and report.worst == "ok", report.error
    assert report.finished_at is not None and report.finished_at <= timezone.now()
    assert report.report["connection"]["id"] == conn.pk
    assert {c["verdict"] for c in report.report["checks"]} == {"ok"}
    html = root.get(f"{REPORTS}{report.pk}/change/").content.decode()
    assert "17 ok, 0 warn, 0 fail" in html
    assert 'http-equiv="refresh"' not in html  # finished: the page stops reloading
    assert "api.explicit_profile" in html
    shapes = root.get(f"{REPORTS}{report.pk}/shapes.json")
    assert shapes.status_code == 200
    assert "attachment" in shapes["Content-Disposition"]
    assert set(json.loads(shapes.content)["routes"]) >= {"profiles", "accounts", "contacts"}
    # Nothing secret anywhere: the report, its page, its shapes file.
    conn.refresh_from_db()
    assert conn.chosen_profile is not None
    secrets = [conn.access_token, conn.refresh_token, conn.chosen_profile.profile_token]
    stored = json.dumps([report.report, report.shapes]) + html + shapes.content.decode()
    assert [s for s in secrets if s and s in stored] == []
    # And the worker never refreshed: the connect's code exchange is the only token request.
    assert zywave.counters()["token"] == {"authorization_code:success": 1}


@pytest.mark.django_db
def test_a_report_still_running_shows_its_step_and_reloads_itself(
    root: Person, staff: User
) -> None:
    conn = connection(staff)
    report = request_report(conn, actor=None)
    html = root.get(f"{REPORTS}{report.pk}/change/").content.decode()
    assert "waiting for a worker" in html and 'http-equiv="refresh" content="2"' in html
    DoctorReport.objects.filter(pk=report.pk).update(
        state=DoctorReport.State.RUNNING, step="profiles", steps_done=2
    )
    html = root.get(f"{REPORTS}{report.pk}/change/").content.decode()
    assert "step 3 of 6: profiles" in html and 'http-equiv="refresh"' in html
    assert root.get(f"{REPORTS}{report.pk}/shapes.json").status_code == 404  # none yet


@pytest.mark.django_db
def test_support_staff_read_reports_but_cannot_run_the_doctor(
    sam: Person, dana: Person, staff: User
) -> None:
    conn = connection(staff)
    report = request_report(conn, actor=None)
    assert sam.get(f"{REPORTS}{report.pk}/change/").status_code == 200
    assert run_from_the_page(sam, conn).status_code == 403
    assert DoctorReport.objects.count() == 1
    # A portal user who is not staff reaches neither (the admin's login instead).
    assert dana.get(f"{REPORTS}{report.pk}/change/").status_code == 302
    assert run_from_the_page(dana, conn).status_code == 302
    assert DoctorReport.objects.count() == 1


@pytest.mark.django_db
def test_the_action_wants_a_post(root: Person, staff: User) -> None:
    conn = connection(staff)
    assert root.get(f"{CONNECTIONS}{conn.pk}/act/?action=run_doctor").status_code == 405
    assert not DoctorReport.objects.exists()


@pytest.mark.django_db
def test_a_report_runs_once_however_often_its_task_is_delivered(
    staff: User, zywave: Sandbox
) -> None:
    conn = connection(staff, zywave)
    report = request_report(conn, actor=None)
    assert run_report(report.pk) == "ok"
    assert run_report(report.pk) == "absorbed"
    report.refresh_from_db()
    assert report.state == DoctorReport.State.DONE and len(report.report["checks"]) == 17


@pytest.mark.django_db
def test_a_disconnected_connection_is_not_diagnosed(root: Person, staff: User) -> None:
    conn = connection(staff, status=Connection.Status.DISCONNECTED)
    response = run_from_the_page(root, conn)
    assert response.status_code == 302
    assert not DoctorReport.objects.exists()


@pytest.mark.django_db
def test_two_connections_at_once_get_a_report_each_and_one_message(
    root: Person, staff: User, other_staff: User
) -> None:
    conns = [connection(staff), connection(other_staff)]
    response = root.post(
        CONNECTIONS,
        {"action": "run_doctor", ACTION_CHECKBOX_NAME: [c.pk for c in conns], "index": 0},
        follow=True,
    )
    assert response.status_code == 200
    assert "Zywave doctor: 2 queued" in response.content.decode()
    assert sorted(DoctorReport.objects.values_list("connection_id", flat=True)) == sorted(
        c.pk for c in conns
    )
    assert ConnectionEvent.objects.filter(kind=ConnectionEvent.Kind.DOCTOR_RUN).count() == 2
