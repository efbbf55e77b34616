"""Pages for agency staff: the dashboard, connecting and disconnecting Zywave."""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from social_core.exceptions import SocialAuthBaseException
from social_django import views as social_views

from . import hooks
from .client import SAFE_ID, ZywaveClient, ZywaveError
from .models import Account, Connection, ConnectionEvent, Contact, Policy, SyncRun
from .pipeline import IdentityInUse, NotLoggedIn, SecondIdentity
from .profiles import ConnectionChanged, ProfileRefused, choose_profile, refresh_profiles
from .resources import resources
from .sync import start_interactive
from .tokens import ReauthRequired, RefreshFailed, client_for, revoke_and_disconnect

log = logging.getLogger(__name__)


def connection_for(user) -> Connection | None:  # type: ignore[no-untyped-def]
    """The requesting person's own connection: every view starts here, so none forgets scoping."""
    return Connection.objects.select_related("chosen_profile").filter(user=user).first()


def safe_next(request: HttpRequest, target: str | None, default: str = "/") -> str:
    """A same-site path for `next`, or the default: never an open redirect.

    A path only: Django's check alone also lets through `//`, `//ourhost` and full URLs of
    this host, which are not paths (and `//` is a broken redirect). No control character,
    space or backslash anywhere either: browsers drop tabs and newlines from a URL and read a
    backslash as `/`, so "/", a newline, then "//evil" (which Django's check accepts) would
    leave the site.
    """
    if (
        target
        and target.startswith("/")
        and not any(char <= " " or char in "\x7f\\" for char in target)
        and not target.startswith(("//", "/\\"))
        and url_has_allowed_host_and_scheme(
            target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        )
    ):
        return target
    return default


@require_GET
@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    connection = connection_for(request.user)
    runs = list(connection.sync_runs.all()[:6]) if connection else []
    active = next((run for run in runs if run.is_active), None)
    last = next((run for run in runs if not run.is_active), None)
    mirrored, not_granted = [], []
    if connection is not None and connection.is_connected:
        # One COUNT per registered resource: constant whatever the mirror's size or number.
        mirrored = [
            (resource.label, resource.live(connection.pk).count())
            for resource in resources()
            if resource.granted(connection.scopes)
        ]
        asked = set(_requested_scopes())
        not_granted = [
            {"label": resource.label, "on_reconnect": any(s in asked for s in resource.scopes)}
            for resource in resources()
            if not resource.granted(connection.scopes)
        ]
    return render(
        request,
        "integrations/dashboard.html",
        {
            "connection": connection,
            "runs": runs,
            "active_run": active,
            "last_run": last,
            "can_sync": connection is not None and connection.can_sync,
            "mirrored": mirrored,
            "not_granted": not_granted,
            "sync_interval": settings.ZYWAVE_SYNC_INTERVAL_MINUTES,
            "hook": (
                {"url": hooks.receiver_url(connection), **hooks.delivery_health(connection)}
                if connection is not None and connection.is_connected
                else None
            ),
        },
    )


@require_POST
@login_required
def rotate_hook(request: HttpRequest) -> HttpResponse:
    """A new receiver URL for Zywave's webhooks: the old one answers 404 from now on."""
    connection = connection_for(request.user)
    if connection is None or not connection.is_connected:
        raise Http404
    hooks.rotate_token(connection, actor=request.user)
    messages.success(
        request,
        "A new receiver URL is ready. Register it at Zywave in place of the old one, which "
        "no longer accepts deliveries.",
    )
    return redirect(reverse("dashboard") + "#hooks-heading")


@never_cache
@require_POST
@login_required
def connect_begin(request: HttpRequest, backend: str) -> HttpResponse:
    """Start the authorize redirect (POST only: a link or an image must not start it)."""
    if backend != "zywave":
        raise Http404
    request.session["next"] = safe_next(request, request.POST.get("next"), "")
    return social_views.auth(request, backend)


# What each social-auth failure means for the person, in plain words.
CONNECT_ERRORS = {
    "authorization_declined": (
        "You declined access at Zywave, so nothing was connected. "
        "Press Connect again whenever you are ready."
    ),
    "missing_parameter": (
        "That sign-in link was incomplete. Start again from the dashboard with Connect Zywave."
    ),
    "session_context_missing": (
        "That sign-in link does not belong to this browser session (it may be old, already "
        "used, or from another window). Start again from the dashboard with Connect Zywave."
    ),
    "state_mismatch": (
        "That sign-in link has expired or was already used. "
        "Start again from the dashboard with Connect Zywave."
    ),
    "authorization_code_rejected": (
        "Zywave did not accept the sign-in code (it may have expired or been used already). "
        "Start again from the dashboard with Connect Zywave."
    ),
    "timeout": "Zywave did not answer in time. Nothing was connected; please try again shortly.",
    "connection_failed": "Zywave could not be reached. Nothing was connected; please try again.",
    "unavailable": "Zywave is unavailable right now. Nothing was connected; please try again.",
    "rate_limited": "Zywave asked us to slow down. Nothing was connected; try again in a minute.",
    "malformed_response": (
        "Zywave sent an answer we could not understand. Nothing was connected; please try "
        "again, and tell your administrator if it keeps happening."
    ),
    # discovery.IdentityUnverified: an id_token that fails validation, or a discovery document
    # that names another issuer.
    "identity_unverified": (
        "We could not verify that this sign-in came from Zywave, so nothing was connected. "
        "Start again from the dashboard with Connect Zywave, and tell your administrator if it "
        "keeps happening."
    ),
}
SCOPE_ERROR = (
    "Zywave refused the access this portal asks for: the portal's registration at Zywave does "
    "not allow it. Please ask your administrator to register the portal's scopes at Zywave. "
    "Nothing was connected."
)
GENERIC_ERROR = "Connecting to Zywave failed. Nothing was connected; please try again."


def _connect_error(request: HttpRequest, message: str, status: int = 400) -> HttpResponse:
    return render(request, "integrations/connect_error.html", {"message": message}, status=status)


@never_cache
@require_GET
@login_required
def connect_complete(request: HttpRequest, backend: str) -> HttpResponse:
    """Zywave's redirect back: validate state, exchange the code, store the tokens."""
    if backend != "zywave":
        raise Http404
    try:
        response = social_views.complete(request, backend)
    except IdentityInUse:
        return _connect_error(
            request,
            "That Zywave account is already linked to another portal user. Sign in to Zywave "
            "as yourself, or ask your administrator.",
            status=409,
        )
    except SecondIdentity:
        return _connect_error(
            request,
            "You are connected to a different Zywave account. Disconnect it first, then connect "
            "the new one.",
            status=409,
        )
    except NotLoggedIn:
        return redirect("login")
    except SocialAuthBaseException as exc:
        provider_code = str(getattr(exc, "provider_code", "") or "")
        log.warning(
            "Zywave connect failed for user %s: %s (provider %s, stage %s)",
            request.user.pk,
            exc.code,
            provider_code or "-",
            exc.stage,
        )
        if provider_code in {"invalid_scope", "unauthorized_client"}:
            log.error(
                "Zywave refused the portal's scopes (%s). Register these scopes for client "
                "the portal uses: %s",
                provider_code,
                " ".join(_requested_scopes()),
            )
            _record_failure(request, provider_code)
            return _connect_error(request, SCOPE_ERROR)
        return _connect_error(request, CONNECT_ERRORS.get(exc.code, GENERIC_ERROR))
    if isinstance(response, HttpResponseRedirect):
        messages.success(request, "Your Zywave account is connected.")
        return _after_connect(request, safe_next(request, response.url, "/"))
    return response


def picker_url(next_url: str) -> str:
    """The picker, carrying where to go once a profile is chosen (when that is not home)."""
    base = reverse("profiles")
    return base if next_url == "/" else f"{base}?{urlencode({'next': next_url})}"


def _after_connect(request: HttpRequest, target: str) -> HttpResponse:
    """List the profiles of this (re)connection, here in the callback (the picker's GET only
    reads): keep the chosen profile when Zywave still offers it, choose the only one when there
    is exactly one (and start the first sync), otherwise send the person to the picker."""
    connection = connection_for(request.user)
    assert connection is not None  # the pipeline has just stored it
    picker = picker_url(target)
    had_choice = connection.chosen_profile_id is not None
    client = client_for(connection)
    try:
        listed = refresh_profiles(connection, client)
    except (ZywaveError, ReauthRequired, RefreshFailed, ConnectionChanged) as exc:
        log.warning("Listing profiles after connect failed for %s: %s", connection.pk, exc)
        messages.error(
            request,
            "Zywave did not list your profiles just now. Refresh the list on this page in a "
            "moment.",
        )
        return HttpResponseRedirect(picker)
    if connection.chosen_profile is not None:
        messages.info(request, f"Still acting as {connection.chosen_profile.name}.")
        return HttpResponseRedirect(target)
    if had_choice:
        messages.warning(
            request,
            "Zywave no longer offers the profile you had chosen. Syncing is paused until you "
            "choose another one.",
        )
    elif len(listed) == 1:
        return _choose(request, connection, client, listed[0].zywave_id, target, auto=True)
    return HttpResponseRedirect(picker)


def _requested_scopes() -> list[str]:
    from django.conf import settings

    return list(settings.ZYWAVE_SCOPES)


def _record_failure(request: HttpRequest, provider_code: str) -> None:
    assert isinstance(request.user, User)  # the view is login_required
    ConnectionEvent.objects.create(
        user=request.user,
        connection=connection_for(request.user),
        kind=ConnectionEvent.Kind.CONNECT_FAILED,
        actor=request.user,
        detail={"error": provider_code, "register_scopes": " ".join(_requested_scopes())},
    )


@require_http_methods(["GET", "POST"])
@login_required
def disconnect(request: HttpRequest) -> HttpResponse:
    """GET asks for confirmation; POST revokes at Zywave, then deletes the tokens locally."""
    connection = connection_for(request.user)
    if connection is None or not connection.is_connected:
        messages.info(request, "You have no Zywave account connected.")
        return redirect("dashboard")
    if request.method == "GET":
        return render(request, "integrations/disconnect_confirm.html", {"connection": connection})
    revoked, reason = revoke_and_disconnect(connection, actor=request.user)
    if revoked:
        messages.success(request, "Zywave is disconnected and the portal's access was revoked.")
    else:
        messages.warning(
            request,
            "Zywave is disconnected here and the portal's copies of your tokens are deleted, "
            f"but Zywave did not confirm the revocation ({reason}). You can also remove the "
            "portal's access in your Zywave account settings.",
        )
    return redirect("dashboard")


def _zywave_problem(exc: Exception) -> str:
    """What a failed profile call means for the person, without internals or secrets."""
    if isinstance(exc, ReauthRequired):
        return "Zywave needs you to sign in again: use Reconnect on the dashboard."
    if isinstance(exc, RefreshFailed):
        return "Zywave did not renew the portal's access just now. Please try again shortly."
    return (
        "Zywave did not answer properly just now, so the list could not be read. "
        "Your previous choice is kept; please try again shortly."
    )


@never_cache
@require_http_methods(["GET", "POST"])
@login_required
def profiles(request: HttpRequest) -> HttpResponse:
    """The stored list of the connection's Zywave profiles. GET only reads; POST refreshes the
    list from Zywave (`action=refresh`) or chooses one (`action=choose`, checked against it)."""
    connection = connection_for(request.user)
    if connection is None or connection.status != Connection.Status.ACTIVE:
        messages.info(request, "Connect your Zywave account first.")
        return redirect("dashboard")
    next_url = safe_next(request, request.GET.get("next") or request.POST.get("next"), "/")
    action = request.POST.get("action", "") if request.method == "POST" else ""
    client = client_for(connection)
    if action == "refresh":
        had_choice = connection.chosen_profile_id is not None
        try:
            refresh_profiles(connection, client)
        except ConnectionChanged:
            messages.error(request, "Your Zywave connection was disconnected meanwhile.")
            return redirect("dashboard")
        except (ZywaveError, ReauthRequired, RefreshFailed) as exc:
            log.warning("Listing profiles failed for connection %s: %s", connection.pk, exc)
            messages.error(request, _zywave_problem(exc))
        else:
            if had_choice and connection.chosen_profile_id is None:
                messages.warning(
                    request,
                    "Zywave no longer offers the profile you had chosen. "
                    "Syncing is paused until you choose another one.",
                )
        return redirect(picker_url(next_url))
    listed = list(connection.profiles.all())
    if action == "choose":
        chosen_id = request.POST.get("profile", "")
        if not SAFE_ID.fullmatch(chosen_id):  # before any lookup: PostgreSQL refuses NUL in text
            return _refuse(request)
        changing = (
            connection.chosen_profile is not None
            and connection.chosen_profile.zywave_id != chosen_id
        )
        if changing and request.POST.get("confirm") != "yes":
            candidate = connection.profiles.filter(zywave_id=chosen_id).first()
            if candidate is None:
                return _refuse(request)
            return render(
                request,
                "integrations/profile_change_confirm.html",
                {"connection": connection, "candidate": candidate, "next": next_url},
            )
        return _choose(request, connection, client, chosen_id, next_url, auto=False)
    stale = connection.profiles_listed_at is None or (
        connection.authorized_at is not None
        and connection.profiles_listed_at < connection.authorized_at
    )
    return render(
        request,
        "integrations/profiles.html",
        {"connection": connection, "profiles": listed, "next": next_url, "stale": stale},
    )


def _refuse(request: HttpRequest) -> HttpResponse:
    messages.error(
        request,
        "That profile is not one Zywave lists for your account. Nothing was changed.",
    )
    return redirect("profiles")


def _choose(
    request: HttpRequest,
    connection: Connection,
    client: ZywaveClient,
    zywave_id: str,
    next_url: str,
    *,
    auto: bool,
) -> HttpResponse:
    try:
        profile = choose_profile(connection, client, zywave_id, actor=request.user)
    except ProfileRefused:
        return _refuse(request)
    except ConnectionChanged:
        messages.error(
            request,
            "Your Zywave connection changed while the profile was being fetched (it was "
            "disconnected or reconnected meanwhile). Nothing was chosen.",
        )
        return redirect("dashboard")
    except (ZywaveError, ReauthRequired, RefreshFailed) as exc:
        log.warning("Choosing a profile failed for connection %s: %s", connection.pk, exc)
        messages.error(request, _zywave_problem(exc))
        return redirect("profiles")
    _start_sync(connection, full=True, trigger="profile")
    if auto:
        messages.success(
            request,
            f"Zywave offers you one profile, {profile.name}; the portal will act under it.",
        )
    else:
        messages.success(request, f"The portal now acts under the profile {profile.name}.")
    return redirect(next_url)


def _start_sync(connection: Connection, full: bool, trigger: str) -> SyncRun | None:
    """Queue a run and its task on the `interactive` queue (after commit). None when one is
    already queued or running (a queued one is taken to the front: `start_interactive`)."""
    run, created = start_interactive(connection, full=full, trigger=trigger)
    return run if created else None


@require_POST
@login_required
def sync(request: HttpRequest) -> HttpResponse:
    """ "Sync now" and "Full resync" (with `full=1`)."""
    connection = connection_for(request.user)
    if connection is None or not connection.can_sync:
        messages.error(request, "Connect Zywave and choose a profile before syncing.")
        return redirect("dashboard")
    full = request.POST.get("full") == "1"
    if _start_sync(connection, full=full, trigger="person") is None:
        messages.info(request, "A sync is already running; it will bring everything up to date.")
    else:
        messages.success(request, "Full resync started." if full else "Sync started.")
    return redirect("dashboard")


@require_GET
@login_required
def sync_status(request: HttpRequest) -> JsonResponse:
    """The latest run's progress, polled by the dashboard's progress bar."""
    connection = connection_for(request.user)
    run = connection.sync_runs.first() if connection else None
    if run is None:
        return JsonResponse({"state": None})
    return JsonResponse(
        {
            "id": run.pk,
            "state": run.state,
            "active": run.is_active,
            "full": run.full,
            "pages": run.pages_done,
            "records": run.records_done,
            "total": run.total_reported,
            "percent": run.percent,
            "error": run.error,
        }
    )


ACCOUNTS_PER_PAGE = 50


@require_GET
@login_required
def accounts(request: HttpRequest) -> HttpResponse:
    """The mirror: searchable, filterable, paginated. Two queries whatever its size."""
    connection = connection_for(request.user)
    if connection is None:
        messages.info(request, "Connect your Zywave account first.")
        return redirect("dashboard")
    rows = Account.objects.filter(connection=connection)
    # PostgreSQL refuses NUL in a lookup: drop it from what people type.
    query = request.GET.get("q", "").replace("\x00", "").strip()[:100]
    if query:
        rows = rows.filter(name__icontains=query)
    status = request.GET.get("status", "")
    if status == "active":
        rows = rows.filter(is_active=True, is_archived=False)
    elif status == "archived":
        rows = rows.filter(is_archived=True)
    classification = request.GET.get("classification", "").replace("\x00", "").strip()[:100]
    if classification:
        rows = rows.filter(classification=classification)
    page = Paginator(rows.order_by("name", "zywave_id"), ACCOUNTS_PER_PAGE).get_page(
        request.GET.get("page")
    )
    keep = request.GET.copy()
    keep.pop("page", None)
    return render(
        request,
        "integrations/accounts.html",
        {
            "connection": connection,
            "page": page,
            "q": query,
            "status": status,
            "classification": classification,
            "classifications": CLASSIFICATIONS,
            "querystring": keep.urlencode(),
        },
    )


# Zywave's classifications are data, not a published list: offer the common ones as filters.
CLASSIFICATIONS = ("Client", "Prospect", "Former Client")


@require_GET
@login_required
def account_detail(request: HttpRequest, zywave_id: str) -> HttpResponse:
    connection = connection_for(request.user)
    if connection is None or "\x00" in zywave_id:
        raise Http404
    account = get_object_or_404(Account, connection=connection, zywave_id=zywave_id)
    contacts = Contact.objects.filter(connection=connection, account_zywave_id=zywave_id)
    policies = Policy.objects.filter(connection=connection, account_zywave_id=zywave_id)
    return render(
        request,
        "integrations/account_detail.html",
        {"account": account, "contacts": contacts, "policies": policies},
    )


# --- Zywave's webhooks in (integrations/hooks.py) ----------------------------------------------


@csrf_exempt  # Zywave posts here; the token in the URL is what authenticates it
@never_cache
def zywave_hook(request: HttpRequest, token: str) -> HttpResponse:
    """GET `?challenge=` echoes it (Zywave's verification of the URL); POST takes one
    notification: kept, its fetch queued, answered 202 without calling Zywave."""
    connection = hooks.connection_for(token)
    if connection is None:
        hooks.count_refusal(None, "unknown_token")
        return HttpResponse(status=404)
    if request.method == "GET":
        challenge = request.GET.get("challenge")
        if challenge is None or len(challenge) > 1000:
            hooks.count_refusal(connection.pk, "bad_request")
            return HttpResponse(
                "A GET here must carry ?challenge=", status=400, content_type="text/plain"
            )
        return HttpResponse(challenge, content_type="text/plain; charset=utf-8")
    if request.method != "POST":
        response = HttpResponse(status=405, content_type="text/plain")
        response["Allow"] = "GET, POST"
        return response
    try:
        wait = hooks.allow(connection.pk)
    except Exception as exc:  # the shared cache (Redis) is down: no count, so no delivery
        log.warning(
            "Zywave delivery refused: the rate limit is unavailable (%s)", type(exc).__name__
        )
        response = HttpResponse("Try again shortly", status=503, content_type="text/plain")
        response["Retry-After"] = "30"
        return response
    if wait is not None:
        hooks.count_refusal(connection.pk, "rate_limited")
        response = HttpResponse("Too many deliveries", status=429, content_type="text/plain")
        response["Retry-After"] = str(int(wait + 0.999))
        return response
    length = request.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > hooks.MAX_BODY_BYTES:
        hooks.count_refusal(connection.pk, "too_large")
        return HttpResponse("Body too large", status=413, content_type="text/plain")
    raw = request.read(hooks.MAX_BODY_BYTES + 1)
    if len(raw) > hooks.MAX_BODY_BYTES:  # no Content-Length (chunked), or a wrong one
        hooks.count_refusal(connection.pk, "too_large")
        return HttpResponse("Body too large", status=413, content_type="text/plain")
    try:
        notification = hooks.parse(raw)
    except hooks.BadNotification as exc:
        hooks.count_refusal(connection.pk, "bad_request")
        return HttpResponse(str(exc), status=400, content_type="text/plain")
    hooks.receive(connection, notification)
    return HttpResponse(status=202)
