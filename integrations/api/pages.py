"""`/settings/api-keys/`: a person's own API keys, made and revoked in the browser.

A new key is shown once, in the answer to the POST that made it: not through the session, a
flash message or a redirect (each would store it somewhere, or put it in a URL). A reload of
that answer re-sends the form, so each form carries a one-time id kept in the session: a form
sent a second time makes no second key and shows nothing secret.
"""

from __future__ import annotations

import secrets
from datetime import date, datetime, time, timedelta
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from ..models import ApiKey
from .keys import issue

# How far ahead an expiry may be set (and a bound that keeps date arithmetic in range).
MAX_EXPIRY_DAYS = 3650
# One-time form ids kept per session: one per open tab is plenty.
FORM_IDS_KEPT = 10
SESSION_FORM_IDS = "api_key_form_ids"


def keys_of(user: Any) -> QuerySet[ApiKey]:
    """The requesting person's own keys: every view here starts from this."""
    return ApiKey.objects.filter(owner=user).select_related("revoked_by")


def end_of_day(day: date) -> datetime:
    """A key "expiring on" a date works through that day (in the portal's time zone)."""
    return timezone.make_aware(datetime.combine(day, time.max))


class ApiKeyForm(forms.Form):
    name = forms.CharField(
        max_length=100,
        error_messages={"required": "Give the key a name."},
        help_text="What will use it, for example “CRM import” or “nightly report”.",
    )
    scopes = forms.MultipleChoiceField(
        choices=ApiKey.Scope.choices,
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Choose at least one scope."},
    )
    expires_on = forms.DateField(
        required=False,
        label="Expires on (optional)",
        help_text="The key works through this day. Leave empty for a key that does not expire.",
        widget=forms.DateInput(attrs={"type": "date"}),
    )
    form_id = forms.CharField(widget=forms.HiddenInput)

    def clean_expires_on(self) -> date | None:
        day: date | None = self.cleaned_data["expires_on"]
        if day is None:
            return None
        today = timezone.localdate()
        if day < today:
            raise forms.ValidationError("That date has passed: choose today or a later day.")
        if day > today + timedelta(days=MAX_EXPIRY_DAYS):
            raise forms.ValidationError(
                f"Choose a day within {MAX_EXPIRY_DAYS // 365} years, or no expiry at all."
            )
        return day


def new_form_id(request: HttpRequest, kept_as: str = SESSION_FORM_IDS) -> str:
    """A one-time id for a form that shows a secret in its answer, kept in the session under
    `kept_as` (one list per kind of form; the webhooks pages use it too)."""
    form_id = secrets.token_urlsafe(16)
    kept = request.session.get(kept_as, [])
    request.session[kept_as] = [*kept, form_id][-FORM_IDS_KEPT:]
    return form_id


def use_form_id(request: HttpRequest, form_id: str, kept_as: str = SESSION_FORM_IDS) -> bool:
    """True once per form id handed out: False for a form sent again (a reload, a double
    click) or one this session never saw."""
    kept = request.session.get(kept_as, [])
    if form_id not in kept:
        return False
    request.session[kept_as] = [other for other in kept if other != form_id]
    return True


@never_cache  # no-store: the answer that shows a new key stays in no cache
@require_http_methods(["GET", "POST"])
@login_required
def api_keys(request: HttpRequest) -> HttpResponse:
    """The person's keys and the form for a new one. A valid POST answers with the page itself,
    the new key on it (the one exception to redirect-after-POST: see the module's docstring)."""
    keys = keys_of(request.user)
    created: ApiKey | None = None
    secret = ""
    status = 200
    if request.method == "POST":
        form = ApiKeyForm(request.POST)
        if form.is_valid():
            if not use_form_id(request, form.cleaned_data["form_id"]):
                messages.info(
                    request,
                    "That form was already sent, so no other key was made. A key is shown only "
                    "once: if you did not keep it, revoke it and create another.",
                )
                return redirect("api_keys")
            expires_on = form.cleaned_data["expires_on"]
            created, secret = issue(
                request.user,
                form.cleaned_data["name"],
                form.cleaned_data["scopes"],
                expires_at=end_of_day(expires_on) if expires_on else None,
                actor=request.user,
            )
            form = ApiKeyForm(initial={"form_id": new_form_id(request)})
        else:
            status = 400
    else:
        form = ApiKeyForm(initial={"form_id": new_form_id(request)})
    return render(
        request,
        "integrations/api_keys.html",
        {
            "keys": keys,
            "form": form,
            "created": created,
            "secret": secret,
            "api_url": request.build_absolute_uri("/api/v1/connection"),
        },
        status=status,
    )


@require_POST
@login_required
def api_key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    """Revoke one of the person's keys (audited); refused from its next request on."""
    key = get_object_or_404(keys_of(request.user), pk=key_id)
    if key.revoke(request.user):
        messages.success(
            request,
            f"The key “{key.name}” is revoked: systems using it are refused from their next "
            "request.",
        )
    else:
        messages.info(request, f"The key “{key.name}” was already revoked.")
    return redirect("api_keys")
