"""Zywave's APIs: Profiles (v2.0 / v2.1), the registry's resources (accounts, contacts, ...:
zywave.resources), Industries (v3.0).

Every request carries a bearer access token (401 `invalid_token` when missing, expired or
revoked) and needs a scope (403). Every v2 data request resolves exactly one profile, from the
`Profile` header in either form or, without one, the user's active profile (docs/zywave.md §3);
the profile's agency decides what is visible.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from decimal import Decimal
from functools import wraps
from json.encoder import encode_basestring_ascii as quoted  # json.dumps's own, in C
from typing import Any

from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from sandbox.zywave import odata, odata_q, shapes
from sandbox.zywave.models import Person, Profile, RuntimeSetting
from sandbox.zywave.oauth import load_access_token
from sandbox.zywave.resources import Resource

MAX_TOP = 100

INDUSTRIES = [
    ("11", "Agriculture, Forestry, Fishing and Hunting"),
    ("21", "Mining, Quarrying, and Oil and Gas Extraction"),
    ("22", "Utilities"),
    ("23", "Construction"),
    ("31-33", "Manufacturing"),
    ("42", "Wholesale Trade"),
    ("44-45", "Retail Trade"),
    ("48-49", "Transportation and Warehousing"),
    ("51", "Information"),
    ("52", "Finance and Insurance"),
    ("53", "Real Estate and Rental and Leasing"),
    ("54", "Professional, Scientific, and Technical Services"),
    ("55", "Management of Companies and Enterprises"),
    ("56", "Administrative and Support and Waste Management"),
    ("61", "Educational Services"),
    ("62", "Health Care and Social Assistance"),
    ("71", "Arts, Entertainment, and Recreation"),
    ("72", "Accommodation and Food Services"),
    ("81", "Other Services (except Public Administration)"),
    ("92", "Public Administration"),
]


def problem(status: int, title: str, detail: str = "") -> JsonResponse:
    """An ASP.NET-style problem answer (docs/zywave.md §5: error bodies may be problem+json)."""
    body = {"title": title, "status": status}
    if detail:
        body["detail"] = detail
    return JsonResponse(body, status=status, content_type="application/problem+json")


def unauthorized(description: str) -> JsonResponse:
    response = problem(401, "Unauthorized", description)
    response["WWW-Authenticate"] = (
        f'Bearer error="invalid_token", error_description="{description}"'
    )
    return response


def resolve_profile(request: HttpRequest, user: Any) -> Profile | None:
    """The one profile this request acts under, or None (unknown, foreign or unlinked)."""
    linked = Profile.objects.select_related("agency").filter(user=user)
    header = request.headers.get("Profile", "").strip()
    if not header:
        # Implicit resolution: the user's active profile, which Zywave changes with the
        # user's activity (the control API switches it here).
        person = Person.objects.filter(user=user).first()
        if person is None or person.active_profile_id is None:
            return None
        return linked.filter(pk=person.active_profile_id).first()
    kind, _, value = header.partition(" ")
    value = value.strip()
    if kind.lower() == "token":
        return linked.filter(token=value).first() if value else None
    if value.isdigit():
        return linked.filter(type_code__iexact=kind, pk=int(value)).first()
    return None


View = Callable[..., HttpResponse]


def protected(scopes: AbstractSet[str], profiled: bool) -> Callable[[View], View]:
    """Require a live bearer token holding one of `scopes`; with `profiled`, resolve the
    request's profile too. The view gets (request, access_token, profile, **kwargs)."""

    def decorator(view: View) -> View:
        # Bearer-only, no cookie: nothing for CSRF to protect (a POST gets its 405).
        @csrf_exempt
        @require_GET
        @wraps(view)
        def wrapper(request: HttpRequest, **kwargs: Any) -> HttpResponse:
            kind, _, value = request.headers.get("Authorization", "").partition(" ")
            if kind.lower() != "bearer" or not value.strip():
                return unauthorized("No bearer token")
            access = load_access_token(value.strip())
            if access is None:
                return unauthorized("The access token is invalid, expired or revoked")
            if not scopes & set(access.scope.split()):
                response = problem(403, "Forbidden", f"Needs scope {' or '.join(sorted(scopes))}")
                response["WWW-Authenticate"] = (
                    f'Bearer error="insufficient_scope", scope="{" ".join(sorted(scopes))}"'
                )
                return response
            profile = None
            if profiled:
                profile = resolve_profile(request, access.user)
                if profile is None:
                    return problem(403, "Forbidden", "The profile is unknown or not yours")
            return view(request, access, profile, **kwargs)

        return wrapper

    return decorator


def exact_json(value: Any) -> str:
    """JSON text as json.dumps writes it, except that a Decimal is a JSON number spelled with
    the Decimal's own digits. DjangoJSONEncoder (JsonResponse's) writes a Decimal as a string,
    and a float on the way would round it and drop its trailing zeros (1250.50 -> 1250.5).

    Strings go through the same C function json.dumps uses (and ints through int's repr, as
    json's encoder does), which keeps a page of 100 records at about a millisecond."""
    if isinstance(value, str):
        return quoted(value)
    if value is None or isinstance(value, bool):
        return LITERALS[value]
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} has no JSON form")
        return format(value, "f")
    if isinstance(value, dict):
        items = (f"{quoted(str(key))}: {exact_json(item)}" for key, item in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(exact_json(item) for item in value) + "]"
    return json.dumps(value)


LITERALS = {None: "null", True: "true", False: "false"}


def json_answer(body: Any, exact: bool = False) -> HttpResponse:
    """A JSON answer, byte for byte what JsonResponse writes for the same plain values; with
    `exact`, through exact_json (records with decimals: slower, so only for those)."""
    text = exact_json(body) if exact else json.dumps(body)
    return HttpResponse(text, content_type="application/json")


def envelope(items: list[Any], total: int, has_more: bool, exact: bool = False) -> HttpResponse:
    """The list envelope, a runtime setting because Zywave's is not public (§4)."""
    shape = RuntimeSetting.get("envelope")
    if shape == "array":
        return json_answer(items, exact)
    if shape == "value":
        return json_answer({"value": items, "@odata.count": total}, exact)
    return json_answer({"items": items, "totalCount": total, "hasMoreResults": has_more}, exact)


def int_param(request: HttpRequest, name: str, default: int) -> int:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise odata.ODataError(f"{name} must be a non-negative integer, got {raw!r}")
    return int(raw)


def page(request: HttpRequest, queryset: QuerySet[Any], resource: Resource) -> HttpResponse:
    """One OData page of `queryset`: $filter, $orderby, $skip, $top (at most 100)."""
    try:
        top = int_param(request, "$top", MAX_TOP)
        skip = int_param(request, "$skip", 0)
        if top > MAX_TOP:
            raise odata.ODataError(f"$top may be at most {MAX_TOP}, got {top}")
        queryset = odata_q.apply(
            queryset,
            resource.fields,
            request.GET.get("$filter", ""),
            request.GET.get("$orderby", ""),
        )
    except odata.ODataError as error:
        return problem(400, "Bad Request", str(error))
    total = queryset.count()
    rows = list(queryset.values(*resource.columns)[skip : skip + top]) if top else []
    items = [resource.as_json(row) for row in rows]
    shaped = shapes.list_answer(resource.name, items, total, skip + len(rows) < total)
    if shaped is not None:
        return shaped
    return envelope(items, total, skip + len(rows) < total, exact=resource.has_decimals)


def agency_of(profile: Profile | None) -> int | None:
    return profile.agency_id if profile is not None else None


def list_view(resource: Resource) -> View:
    """`GET {route}`: a page of the resource's records."""

    @protected(resource.scopes, profiled=resource.profiled)
    def view(request: HttpRequest, access: Any, profile: Profile | None) -> HttpResponse:
        return page(request, resource.rows(agency_of(profile)), resource)

    return view


def detail_view(resource: Resource) -> View:
    """`GET {route}/{id}`: one record; 404 when it is unknown or not the profile's agency's."""

    @protected(resource.scopes, profiled=resource.profiled)
    def view(request: HttpRequest, access: Any, profile: Profile | None, id: str) -> HttpResponse:
        rows = resource.rows(agency_of(profile)).filter(pk=int(id))
        row = rows.values(*resource.columns).first()
        if row is None:
            return problem(404, "Not Found", f"No {resource.noun} {id}")
        shaped = shapes.one_answer(resource.name, resource.as_json(row))
        if shaped is not None:
            return shaped
        return json_answer(resource.as_json(row), exact=resource.has_decimals)

    return view


def nested_view(resource: Resource) -> View:
    """`GET {parent detail route}/{nested}`: a page of one parent record's records (404 when
    the parent is unknown or not the profile's agency's)."""
    parent = resource.parent_resource
    assert parent is not None

    @protected(resource.scopes, profiled=resource.profiled)
    def view(request: HttpRequest, access: Any, profile: Profile | None, id: str) -> HttpResponse:
        agency_id = agency_of(profile)
        if not parent.rows(agency_id).filter(pk=int(id)).exists():
            return problem(404, "Not Found", f"No {parent.noun} {id}")
        rows = resource.rows(agency_id).filter(**{resource.parent_field: int(id)})
        return page(request, rows, resource)

    return view


PROFILE_SCOPES = {"api.profiles"}


@protected(PROFILE_SCOPES, profiled=False)
def profiles(request: HttpRequest, access: Any, _profile: None, type_code: str) -> HttpResponse:
    rows = Profile.objects.select_related("agency").filter(
        user=access.user, type_code__iexact=type_code
    )
    if shapes.entry("profiles") is not None:
        every = [profile.as_json("pascal", with_token=True) for profile in rows.order_by("id")]
        return shapes.list_answer("profiles", every, len(every), False) or envelope([], 0, False)
    key_case = str(RuntimeSetting.get("key_case"))
    items = [profile.as_json(key_case) for profile in rows.order_by("id")]
    return envelope(items, len(items), False)


@protected(PROFILE_SCOPES, profiled=False)
def profile_detail(
    request: HttpRequest, access: Any, _profile: None, type_code: str, profile_id: str
) -> HttpResponse:
    profile = (
        Profile.objects.select_related("agency")
        .filter(user=access.user, type_code__iexact=type_code, pk=int(profile_id))
        .first()
    )
    if profile is None:
        # Another user's profile or an unknown one: not yours to see either way.
        return problem(403, "Forbidden", "The profile is unknown or not yours")
    shaped = shapes.one_answer("profile", profile.as_json("pascal", with_token=True))
    if shaped is not None:
        return shaped
    return JsonResponse(profile.as_json(str(RuntimeSetting.get("key_case")), with_token=True))


@protected(PROFILE_SCOPES, profiled=False)
def profile_current(
    request: HttpRequest, access: Any, _profile: None, type_code: str
) -> HttpResponse:
    person = Person.objects.filter(user=access.user).first()
    profile = (
        Profile.objects.select_related("agency")
        .filter(user=access.user, type_code__iexact=type_code, pk=person.active_profile_id)
        .first()
        if person is not None and person.active_profile_id is not None
        else None
    )
    if profile is None:
        return problem(404, "Not Found", f"No current profile of type {type_code}")
    shaped = shapes.one_answer("current_profile", profile.as_json("pascal", with_token=True))
    if shaped is not None:
        return shaped
    return JsonResponse(profile.as_json(str(RuntimeSetting.get("key_case"))))


@protected({"api.industries"}, profiled=False)
def industries(request: HttpRequest, access: Any, _profile: None) -> HttpResponse:
    """A v3 API: no profile (a `Profile` header is ignored)."""
    items = [{"code": code, "name": name} for code, name in INDUSTRIES]
    return envelope(items, len(items), False)
