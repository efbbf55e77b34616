"""The emulated resources, one declaration each: where Zywave serves it, to whom, with which
fields.

Everything else follows from an entry: the routes (sandbox/urls.py) and their scope and profile
checks, the OData typing, the `values()` columns and the JSON of a record (api.py), the paths
the counting middleware counts, archiving and the counts of the control API (control.py), and
the seed's deletion, columns and counts (seed.py). Adding a resource to the sandbox is one entry
in RESOURCES plus its model and migration (and, for demo data, a row generator in demo.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cached_property
from typing import Any

from django.conf import settings
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db import models

from sandbox.zywave import demo
from sandbox.zywave.models import Account, Contact, Policy
from sandbox.zywave.odata_q import KINDS, Fields

Seeder = Callable[[random.Random, demo.SeedPlan], demo.Rows]

# Served by api.py's own views, outside the registry; their paths are API paths too.
OTHER_API_ROOTS = ("profiles", "industries")


def iso_z(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# How a value of each kind is written in a record; the other kinds are written as they are. A
# Decimal stays a Decimal: api.exact_json writes it as a JSON number with its own digits.
WRITERS: dict[str, Callable[[Any], Any]] = {"datetime": iso_z, "date": date.isoformat}


@dataclass(frozen=True)
class Resource:
    """One emulated resource.

    `fields` maps each API name to (model field, kind), in the order a record is written; the
    kinds are odata_q.KINDS. A `profiled` resource is a v2 one: a request resolves a profile
    and sees the rows of its agency (an `agency` foreign key on the model). A resource with a
    `parent` has a foreign key to the parent's model and, with `nested`, a list route under a
    parent record too (`{parent detail route}/{nested}`): archiving a parent archives it.
    """

    name: str  # plural: how the control API's counts and the seed's counts name it
    model: type[models.Model]
    route: str  # the list route, e.g. "accounts/v2.0/account"
    detail_route: str | None  # "{route}/{id}", or None
    scopes: frozenset[str]  # any one of them allows every route of the resource
    fields: Fields
    profiled: bool = True
    parent: str | None = None
    nested: str | None = None
    seed: Seeder | None = None  # None: nothing seeded, or seeded in another's stream

    def __post_init__(self) -> None:
        unknown = self.scopes - set(settings.ZYWAVE_SCOPES)
        problems = [f"unknown scope {scope!r}" for scope in sorted(unknown)]
        for api_name, (field, kind) in self.fields.items():
            if kind not in KINDS:
                problems.append(f"{api_name}: unknown kind {kind!r}")
            try:
                self.model._meta.get_field(field)
            except FieldDoesNotExist:
                problems.append(f"{api_name}: {self.model.__name__} has no field {field!r}")
        if self.detail_route not in {None, f"{self.route}/{{id}}"}:
            problems.append(f"the detail route must be {self.route}/{{id}}")
        if self.nested and not self.parent:
            problems.append("a nested route needs a parent")
        if problems:
            raise ImproperlyConfigured(f"Resource {self.name}: {'; '.join(problems)}")

    @property
    def noun(self) -> str:
        """The record's name in messages: the route's last segment ("account")."""
        return self.route.rsplit("/", 1)[-1]

    @cached_property
    def columns(self) -> list[str]:
        """The model fields a record is written from, for `values()`."""
        return [field for field, _kind in self.fields.values()]

    @cached_property
    def stored_columns(self) -> list[str]:
        """The columns a seeded row fills: the record's, and the agency of a profiled one."""
        extra = ["agency_id"] if self.profiled and "agency_id" not in self.columns else []
        return self.columns + extra

    @cached_property
    def kinds(self) -> dict[str, str]:
        """Model field -> kind, for every stored column (the agency is an id)."""
        return {"agency_id": "int", **dict(self.fields.values())}

    @cached_property
    def has_decimals(self) -> bool:
        return any(kind == "decimal" for _field, kind in self.fields.values())

    @cached_property
    def parent_resource(self) -> Resource | None:
        return resource_named(self.parent) if self.parent else None

    @cached_property
    def parent_field(self) -> str:
        """The foreign key to the parent's model, as a column (`account_id`)."""
        parent = self.parent_resource
        assert parent is not None, f"{self.name} has no parent"
        for field in self.model._meta.concrete_fields:
            if field.is_relation and field.related_model is parent.model:
                return str(field.attname)
        raise ImproperlyConfigured(f"{self.model.__name__} has no foreign key to {parent.name}")

    @property
    def nested_route(self) -> str | None:
        parent = self.parent_resource
        if self.nested is None or parent is None or parent.detail_route is None:
            return None
        return f"{parent.detail_route}/{self.nested}"

    def rows(self, agency_id: int | None) -> models.QuerySet[Any]:
        """Every row a request may see: the agency's for a profiled resource."""
        rows = self.model._default_manager.all()
        return rows.filter(agency_id=agency_id) if self.profiled else rows

    def as_json(self, row: dict[str, Any]) -> dict[str, Any]:
        """The API record of a `values(*columns)` row."""
        record = {}
        for api_name, (field, kind) in self.fields.items():
            value = row[field]
            writer = WRITERS.get(kind)
            record[api_name] = writer(value) if writer is not None and value is not None else value
        return record

    def archived_values(self, now: datetime) -> dict[str, Any]:
        """The update that archives a row (a soft delete, seen by incremental reads)."""
        changes = {"isArchived": True, "isActive": False, "updatedDateTime": now}
        return {
            self.fields[api_name][0]: value
            for api_name, value in changes.items()
            if api_name in self.fields
        }


ACCOUNT_SCOPES = frozenset({"api.accounts", "api.accounts:read"})

RESOURCES = [
    Resource(
        name="accounts",
        model=Account,
        route="accounts/v2.0/account",
        detail_route="accounts/v2.0/account/{id}",
        scopes=ACCOUNT_SCOPES,
        fields={
            "id": ("id", "int"),
            "name": ("name", "str"),
            "classification": ("classification", "str"),
            "linesOfBusiness": ("lines_of_business", "list"),
            "clientSize": ("client_size", "str"),
            "isActive": ("is_active", "bool"),
            "isArchived": ("is_archived", "bool"),
            "numberOfEmployees": ("number_of_employees", "int"),
            "naicsCodes": ("naics_codes", "list"),
            "addressLine1": ("address_line1", "str"),
            "city": ("city", "str"),
            "state": ("state", "str"),
            "postalCode": ("postal_code", "str"),
            "primaryPhone": ("primary_phone", "str"),
            "updatedDateTime": ("updated", "datetime"),
        },
        seed=demo.accounts_and_contacts,
    ),
    Resource(
        name="contacts",
        model=Contact,
        route="accounts/v2.0/contact",
        # Not seen in Zywave's clients (the account's is): assumed, so that the portal can
        # fetch one contact again after Zywave's notification (docs/zywave.md §6).
        detail_route="accounts/v2.0/contact/{id}",
        scopes=ACCOUNT_SCOPES,
        parent="accounts",
        nested="contacts",
        fields={
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
        },
        # Seeded by demo.accounts_and_contacts, in the accounts' stream.
    ),
    Resource(
        name="policies",
        model=Policy,
        # Assumed: Zywave documents a v2 Policies API and its scopes, not its routes or fields
        # (docs/zywave.md §4).
        route="policies/v2.0/policy",
        detail_route="policies/v2.0/policy/{id}",
        scopes=frozenset({"api.policies", "api.policies:read"}),
        parent="accounts",
        nested="policies",
        fields={
            "id": ("id", "int"),
            "accountId": ("account_id", "int"),
            "policyNumber": ("policy_number", "str"),
            "lineOfBusiness": ("line_of_business", "str"),
            "carrierName": ("carrier_name", "str"),
            "effectiveDate": ("effective_date", "date"),
            "expirationDate": ("expiration_date", "date"),
            "premium": ("premium", "decimal"),
            "isActive": ("is_active", "bool"),
            "isArchived": ("is_archived", "bool"),
            "updatedDateTime": ("updated", "datetime"),
        },
        seed=demo.policies,
    ),
]


def resource_named(name: str) -> Resource:
    for resource in RESOURCES:
        if resource.name == name:
            return resource
    raise KeyError(f"No resource {name!r}")


def children(resource: Resource) -> list[Resource]:
    return [child for child in RESOURCES if child.parent == resource.name]


def api_roots() -> list[str]:
    """The first path segments of Zywave's APIs (`accounts`, `policies`, ...)."""
    return sorted({*OTHER_API_ROOTS, *(resource.route.split("/")[0] for resource in RESOURCES)})


def register(resource: Resource) -> None:
    """Add a resource from outside this module: a test-only one, from the `ready()` of an app
    in SANDBOX_EXTRA_APPS (before the URLs and the middleware read the registry)."""
    if any(known.name == resource.name for known in RESOURCES):
        raise ImproperlyConfigured(f"A resource {resource.name} is registered already")
    RESOURCES.append(resource)
    check_order()


def check_order() -> None:
    """Parents come before their children: the seed inserts in this order and deletes in the
    reverse one."""
    seen: set[str] = set()
    for resource in RESOURCES:
        if resource.parent is not None and resource.parent not in seen:
            raise ImproperlyConfigured(f"{resource.name} comes before its parent {resource.parent}")
        seen.add(resource.name)


check_order()
