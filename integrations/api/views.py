"""The endpoints over the connection, the mirror and its syncs (`/api/v1/`)."""

from __future__ import annotations

from typing import Any

import orjson
from django.http import HttpResponse
from django.urls import reverse
from django.utils.http import urlencode
from rest_framework.request import Request
from rest_framework.views import APIView

from ..mirror import exact_decimal
from ..models import Connection, SyncRun
from ..resources import children_of
from ..sync import start_interactive
from . import schema
from .problems import Problem
from .records import ACCOUNTS, API, Resource, decode_cursor, encode_cursor, page_size, pk_of
from .records import parse_time as parse_rfc3339

# Recent runs listed by GET syncs.
RECENT_RUNS = 20


def json_response(body: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(
        orjson.dumps(body, option=orjson.OPT_UTC_Z, default=exact_decimal),
        status=status,
        content_type="application/json",
    )


def connection_of(request: Request) -> Connection | None:
    """The key owner's own connection: every endpoint starts here, none reads another's. It
    came with the key, in the authentication's one query (`keys.ApiKeyAuthentication`)."""
    try:
        return request.user.zywave_connection  # type: ignore[no-any-return,union-attr]
    except Connection.DoesNotExist:
        return None


def _action(connection: Connection | None) -> str | None:
    if connection is None or connection.status == Connection.Status.DISCONNECTED:
        return "connect"
    if connection.status == Connection.Status.REAUTH_REQUIRED:
        return "reconnect"
    if connection.chosen_profile_id is None:
        return "choose_profile"
    return None


ACTION_DETAIL = {
    "connect": "Connect Zywave on the portal's dashboard first.",
    "reconnect": "The Zywave grant has ended: reconnect on the portal's dashboard.",
    "choose_profile": "Choose a Zywave profile on the portal's profile page first.",
}


def require_usable(connection: Connection | None, *, profile: bool = True) -> Connection:
    """The connection, when it can act at Zywave (`profile`: under a chosen profile); else
    409 saying what the person must do."""
    action = _action(connection)
    if action == "choose_profile" and not profile:
        action = None
    if action is not None or connection is None:
        raise Problem(409, "action_required", ACTION_DETAIL[action or "connect"], action=action)
    return connection


def run_body(request: Request, run: SyncRun) -> dict[str, Any]:
    return {
        "id": run.pk,
        "state": run.state,
        "full": run.full,
        "trigger": run.trigger,
        "queued_at": run.queued_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "records": run.records_done,
        "records_skipped": run.records_skipped,
        "error": run.error,
        "url": request.build_absolute_uri(reverse("api:sync", args=[run.pk])),
    }


class ConnectionView(APIView):
    scopes = {"GET": "read"}

    @schema.connection
    def get(self, request: Request) -> HttpResponse:
        connection = connection_of(request)
        if connection is None:
            return json_response(
                {
                    "status": "not_connected",
                    "zywave_subject": None,
                    "zywave_email": None,
                    "profile": None,
                    "scopes": [],
                    "refresh_deadline": None,
                    "last_sync": None,
                    "action": "connect",
                }
            )
        profile = connection.chosen_profile
        run = connection.sync_runs.first()
        return json_response(
            {
                "status": connection.status,
                "zywave_subject": connection.zywave_subject,
                "zywave_email": connection.zywave_email,
                "profile": (
                    {"id": profile.zywave_id, "type_code": profile.type_code, "name": profile.name}
                    if profile
                    else None
                ),
                "scopes": sorted(connection.scopes),
                "refresh_deadline": connection.refresh_deadline,
                "last_sync": (
                    {
                        "id": run.pk,
                        "state": run.state,
                        "finished_at": run.finished_at,
                        "records": run.records_done,
                    }
                    if run
                    else None
                ),
                "action": _action(connection),
            }
        )


class RecordList(APIView):
    """Keyset pages on (changed_at, row): stable while syncs write, as fast at page 1,000 as at
    page 1. A record that changes while a caller pages moves behind the cursor and is seen
    again, changed; none is skipped."""

    scopes = {"GET": "read"}
    resource: Resource

    def get(self, request: Request) -> HttpResponse:
        params = request.query_params
        size = page_size(params)
        connection = connection_of(request)
        # No connection: an empty mirror, its parameters checked all the same.
        rows = self.resource.rows(connection.pk if connection else 0)
        live = self.resource.filters(rows.filter(deleted_at__isnull=True), params)
        since = params.get("updated_since")
        if since:
            # Incremental pulls see tombstones too, how a caller learns of a deletion: all of
            # them, whatever the filters (a tombstone has no columns left to filter on).
            rows = (live | rows.filter(deleted_at__isnull=False)).filter(
                changed_at__gt=parse_rfc3339(since, "updated_since")
            )
        else:
            rows = live
        cursor = params.get("cursor")
        if cursor:
            changed_at, pk = decode_cursor(cursor)
            rows = rows.filter(changed_at__gte=changed_at).exclude(
                changed_at=changed_at, pk__lte=pk
            )
        page = self.resource.page(rows, size)
        next_url = None
        if page.last is not None:
            query = params.copy()
            query["cursor"] = encode_cursor(*page.last)
            next_url = request.build_absolute_uri(f"{request.path}?{urlencode(query, doseq=True)}")
        # The records arrive as JSON text: spliced in, never parsed again.
        body = b'{"results":' + page.records + b',"next":' + orjson.dumps(next_url) + b"}"
        return HttpResponse(body, content_type="application/json")


def list_view(resource: Resource) -> type[RecordList]:
    """The list endpoint of one registered resource, with its schema."""

    def get(self: RecordList, request: Request) -> HttpResponse:
        return RecordList.get(self, request)

    name = f"{resource.name.title().replace('_', '')}List"
    return type(
        name, (RecordList,), {"resource": resource, "get": schema.record_list(resource)(get)}
    )


class AccountDetail(APIView):
    scopes = {"GET": "read"}

    @schema.account_detail
    def get(self, request: Request, zywave_id: str) -> HttpResponse:
        connection = connection_of(request)
        connection_id = connection.pk if connection else 0
        rows = ACCOUNTS.rows(connection_id).filter(zywave_id=zywave_id, deleted_at__isnull=True)
        found = ACCOUNTS.render(rows)
        if not found:
            raise Problem(404, "not_found", "No account with this id in your mirror.")
        account = found[0]
        pk_of(account)
        # Every resource that hangs under accounts (contacts, policies), one query each.
        for child in children_of("accounts"):
            resource = API[child.name]
            records = resource.render(
                resource.rows(connection_id or 0)
                .filter(**{child.parent_column: zywave_id}, deleted_at__isnull=True)
                .order_by(*list(resource.model._meta.ordering or []), "pk")
            )
            for record in records:
                pk_of(record)
            account[child.name] = records
        return json_response(account)


class SyncList(APIView):
    scopes = {"GET": "read", "POST": "sync"}

    @schema.sync_list
    def get(self, request: Request) -> HttpResponse:
        runs = SyncRun.objects.filter(connection__user_id=request.user.pk)[:RECENT_RUNS]
        return json_response({"results": [run_body(request, run) for run in runs], "next": None})

    @schema.sync_start
    def post(self, request: Request) -> HttpResponse:
        data = request.data if isinstance(request.data, dict) else None
        if data is None:
            raise Problem(400, "invalid", 'The body must be a JSON object, like {"full": false}.')
        full = data.get("full", False)
        if not isinstance(full, bool):
            raise Problem(400, "invalid", "`full` must be true or false.")
        connection = require_usable(connection_of(request))
        # A run already waiting behind the scheduled backlog is taken to the front.
        run, created = start_interactive(connection, full=full, trigger="api")
        if not created:
            raise Problem(
                409,
                "sync_in_progress",
                "A sync of this connection is already queued or running.",
                run=run_body(request, run) if run else None,
            )
        assert run is not None
        return json_response(run_body(request, run), status=202)


class SyncDetail(APIView):
    scopes = {"GET": "read"}

    @schema.sync_detail
    def get(self, request: Request, run_id: int) -> HttpResponse:
        run = SyncRun.objects.filter(pk=run_id, connection__user_id=request.user.pk).first()
        if run is None:
            raise Problem(404, "not_found", "No sync run with this id for your connection.")
        return json_response(run_body(request, run))
