"""Zywave's APIs: Profiles (v2.0 / v2.1), Accounts and contacts (v2.0), Industries (v3.0).

Every request carries a bearer access token (401 `invalid_token` when missing, expired or
revoked) and needs a scope (403). Every v2 data request resolves exactly one profile, from the
`Profile` header in either form or, without one, the user's active profile (docs/zywave.md §3);
the profile's agency decides what is visible.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any

from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from sandbox.zywave import odata, odata_q
from sandbox.zywave.models import Account, Contact, Person, Profile, RuntimeSetting
from sandbox.zywave.oauth import load_access_token

MAX_TOP = 100

ACCOUNT_FIELDS: odata_q.Fields = {
    "id": ("id", "int"),
    "name": ("name", "str"),
    "classification": ("classification", "str"),
    "clientSize": ("client_size", "str"),
    "isActive": ("is_active", "bool"),
    "isArchived": ("is_archived", "bool"),
    "numberOfEmployees": ("number_of_employees", "int"),
    "addressLine1": ("address_line1", "str"),
    "city": ("city", "str"),
    "state": ("state", "str"),
    "postalCode": ("postal_code", "str"),
    "primaryPhone": ("primary_phone", "str"),
    "updatedDateTime": ("updated", "datetime"),
}

CONTACT_FIELDS: odata_q.Fields = {
    "id": ("id", "int"),
    "accountId": ("account_id", "int"),
    "firstName": ("first_name", "str"),
    "lastName": ("last_name", "str"),
    "emailAddress": ("email_address", "str"),
    "title": ("title", "str"),
    "workPhoneNumber": ("work_phone_number", "str"),
    "mobilePhoneNumber": ("mobile_phone_number", "str"),
    "isPrimaryContact": ("is_primary_contact", "bool"),
    "isActive": ("is_active", "bool"),
    "isArchived": ("is_archived", "bool"),
    "updatedDateTime": ("updated", "datetime"),
}

ACCOUNT_COLUMNS = [
    "id",
    "name",
    "classification",
    "lines_of_business",
    "client_size",
    "is_active",
    "is_archived",
    "number_of_employees",
    "naics_codes",
    "address_line1",
    "city",
    "state",
    "postal_code",
    "primary_phone",
    "updated",
]
CONTACT_COLUMNS = [
    "id",
    "account_id",
    "first_name",
    "last_name",
    "email_address",
    "title",
    "work_phone_number",
    "mobile_phone_number",
    "is_primary_contact",
    "is_active",
    "is_archived",
    "updated",
]

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


def iso_z(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


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


def protected(scopes: set[str], profiled: bool) -> Callable[[View], View]:
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


def envelope(items: list[Any], total: int, has_more: bool) -> JsonResponse:
    """The list envelope, a runtime setting because Zywave's is not public (§4)."""
    shape = RuntimeSetting.get("envelope")
    if shape == "array":
        return JsonResponse(items, safe=False)
    if shape == "value":
        return JsonResponse({"value": items, "@odata.count": total})
    return JsonResponse({"items": items, "totalCount": total, "hasMoreResults": has_more})


def int_param(request: HttpRequest, name: str, default: int) -> int:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise odata.ODataError(f"{name} must be a non-negative integer, got {raw!r}")
    return int(raw)


def page(
    request: HttpRequest,
    queryset: QuerySet[Any],
    fields: odata_q.Fields,
    columns: list[str],
    serialize: Callable[[dict[str, Any]], dict[str, Any]],
) -> JsonResponse:
    """One OData page of `queryset`: $filter, $orderby, $skip, $top (at most 100)."""
    try:
        top = int_param(request, "$top", MAX_TOP)
        skip = int_param(request, "$skip", 0)
        if top > MAX_TOP:
            raise odata.ODataError(f"$top may be at most {MAX_TOP}, got {top}")
        queryset = odata_q.apply(
            queryset, fields, request.GET.get("$filter", ""), request.GET.get("$orderby", "")
        )
    except odata.ODataError as error:
        return problem(400, "Bad Request", str(error))
    total = queryset.count()
    rows = list(queryset.values(*columns)[skip : skip + top]) if top else []
    return envelope([serialize(row) for row in rows], total, skip + len(rows) < total)


def account_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "classification": row["classification"],
        "linesOfBusiness": row["lines_of_business"],
        "clientSize": row["client_size"],
        "isActive": row["is_active"],
        "isArchived": row["is_archived"],
        "numberOfEmployees": row["number_of_employees"],
        "naicsCodes": row["naics_codes"],
        "addressLine1": row["address_line1"],
        "city": row["city"],
        "state": row["state"],
        "postalCode": row["postal_code"],
        "primaryPhone": row["primary_phone"],
        "updatedDateTime": iso_z(row["updated"]),
    }


def contact_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "accountId": row["account_id"],
        "firstName": row["first_name"],
        "lastName": row["last_name"],
        "emailAddress": row["email_address"],
        "title": row["title"],
        "workPhoneNumber": row["work_phone_number"],
        "mobilePhoneNumber": row["mobile_phone_number"],
        "isPrimaryContact": row["is_primary_contact"],
        "isActive": row["is_active"],
        "isArchived": row["is_archived"],
        "updatedDateTime": iso_z(row["updated"]),
    }


PROFILE_SCOPES = {"api.profiles"}
ACCOUNT_SCOPES = {"api.accounts", "api.accounts:read"}


@protected(PROFILE_SCOPES, profiled=False)
def profiles(request: HttpRequest, access: Any, _profile: None, type_code: str) -> HttpResponse:
    rows = Profile.objects.select_related("agency").filter(
        user=access.user, type_code__iexact=type_code
    )
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
    return JsonResponse(profile.as_json(str(RuntimeSetting.get("key_case"))))


@protected(ACCOUNT_SCOPES, profiled=True)
def accounts(request: HttpRequest, access: Any, profile: Profile) -> HttpResponse:
    queryset = Account.objects.filter(agency_id=profile.agency_id)
    return page(request, queryset, ACCOUNT_FIELDS, ACCOUNT_COLUMNS, account_json)


@protected(ACCOUNT_SCOPES, profiled=True)
def account_detail(
    request: HttpRequest, access: Any, profile: Profile, account_id: str
) -> HttpResponse:
    rows = Account.objects.filter(agency_id=profile.agency_id, pk=int(account_id))
    row = rows.values(*ACCOUNT_COLUMNS).first()
    if row is None:
        return problem(404, "Not Found", f"No account {account_id}")
    return JsonResponse(account_json(row))


@protected(ACCOUNT_SCOPES, profiled=True)
def account_contacts(
    request: HttpRequest, access: Any, profile: Profile, account_id: str
) -> HttpResponse:
    if not Account.objects.filter(agency_id=profile.agency_id, pk=int(account_id)).exists():
        return problem(404, "Not Found", f"No account {account_id}")
    queryset = Contact.objects.filter(agency_id=profile.agency_id, account_id=int(account_id))
    return page(request, queryset, CONTACT_FIELDS, CONTACT_COLUMNS, contact_json)


@protected(ACCOUNT_SCOPES, profiled=True)
def contacts(request: HttpRequest, access: Any, profile: Profile) -> HttpResponse:
    queryset = Contact.objects.filter(agency_id=profile.agency_id)
    return page(request, queryset, CONTACT_FIELDS, CONTACT_COLUMNS, contact_json)


@protected({"api.industries"}, profiled=False)
def industries(request: HttpRequest, access: Any, _profile: None) -> HttpResponse:
    """A v3 API: no profile (a `Profile` header is ignored)."""
    items = [{"code": code, "name": name} for code, name in INDUSTRIES]
    return envelope(items, len(items), False)
