"""`/settings/webhooks/`: a person's own webhook subscriptions, made and looked after in the
browser: the delivery log, a test event, replays, the secret's rotation, enabling, deleting.

A signing secret is shown once, as an API key is (integrations/api/pages.py): in the answer to
the POST that made it (a new subscription, a rotation), never through the session, a flash
message or a redirect. A reload of that answer re-sends the form, so those forms carry a
one-time id kept in the session: sent twice, they make no second subscription, rotate no second
time (which would end the first secret's overlap at once) and show nothing secret.

Everything else follows redirect-after-POST with a flash message. The work itself is
integrations/webhooks.py's; these views only call it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Count, IntegerField, OuterRef, Prefetch, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from . import webhooks
from .api.pages import new_form_id, use_form_id
from .models import WebhookAttempt, WebhookDelivery, WebhookSubscription

DELIVERIES_PER_PAGE = 20
# The one-time ids of the forms whose answer shows a secret (subscribe, rotate).
SESSION_FORM_IDS = "webhook_form_ids"
# What `webhooks.enable` sends again (WebhookDelivery.objects.undelivered()).
UNDELIVERED = (WebhookDelivery.State.PENDING, WebhookDelivery.State.FAILED)


def subscriptions_of(user: Any) -> QuerySet[WebhookSubscription]:
    """The requesting person's own subscriptions: every view here starts from this. Their
    secrets are not read (each would be decrypted for nothing: no page shows one again)."""
    return WebhookSubscription.objects.filter(owner=user).defer("secret", "previous_secret")


def _count(deliveries: QuerySet[WebhookDelivery]) -> Coalesce:
    """How many of a subscription's deliveries match, as a correlated subquery (one query for
    any number of subscriptions, and no join multiplying rows)."""
    counted = deliveries.order_by().values("subscription").annotate(n=Count("pk")).values("n")
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


def with_summary(subscriptions: QuerySet[WebhookSubscription]) -> QuerySet[WebhookSubscription]:
    """Each subscription with its newest delivery (type, state, time, HTTP status), the number
    failing (tried and not delivered), and the number held (what enabling sends again)."""
    own = WebhookDelivery.objects.filter(subscription=OuterRef("pk"))
    newest = own.order_by("-sequence")
    return subscriptions.annotate(
        newest_type=Subquery(newest.values("event__type")[:1]),
        newest_state=Subquery(newest.values("state")[:1]),
        newest_at=Subquery(newest.values("created_at")[:1]),
        newest_status=Subquery(newest.values("last_status")[:1]),
        failing=_count(own.filter(attempts__gt=0).exclude(state=WebhookDelivery.State.DELIVERED)),
        held=_count(own.filter(state__in=[s.value for s in UNDELIVERED])),
    )


def _sentence(message: str) -> str:
    return message[:1].upper() + message[1:] + ("" if message.endswith(".") else ".")


class SubscriptionForm(forms.Form):
    url = forms.CharField(
        label="Endpoint URL",
        max_length=2000,
        error_messages={"required": "Give the endpoint's URL."},
        help_text="An HTTPS address of your system that accepts POST requests.",
        # type=text, not url: the browser's own check would stop what the portal explains.
        widget=forms.TextInput(attrs={"inputmode": "url", "spellcheck": "false"}),
    )
    events = forms.MultipleChoiceField(
        label="Events",
        widget=forms.CheckboxSelectMultiple,
        # A callable: the registry's resources, read when a form is made.
        choices=lambda: [(name, name) for name in webhooks.event_types()],
        error_messages={"required": "Choose at least one event type."},
    )

    def event_rows(self) -> list[tuple[Any, str]]:
        """Each event type's checkbox with what the type means, for the template's table."""
        descriptions = webhooks.event_types()
        return [
            (box, descriptions[str(box.data["value"])].replace("`", ""))  # Markdown's code marks
            for box in self["events"]
        ]

    def refused(self, exc: webhooks.InvalidSubscription) -> None:
        """`webhooks`' refusal (a URL that is not HTTPS or not public, say), on its field."""
        field = exc.field if exc.field in self.fields else None
        self.add_error(field, _sentence(exc.message))


class NewSubscriptionForm(SubscriptionForm):
    form_id = forms.CharField(widget=forms.HiddenInput)


class ReplayRangeForm(forms.Form):
    since = forms.DateTimeField(
        label="From",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )
    until = forms.DateTimeField(
        label="Up to (not including)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since >= until:
            self.add_error("until", "Choose a time after the start of the range.")
        return cleaned


def _fresh_range_form() -> ReplayRangeForm:
    now = timezone.now().replace(second=0, microsecond=0) + timedelta(minutes=1)
    return ReplayRangeForm(initial={"since": now - timedelta(days=1), "until": now})


# --- The list and the subscribe form ---------------------------------------------------------


@never_cache  # no-store: the answer that shows a new secret stays in no cache
@require_http_methods(["GET", "POST"])
@login_required
def subscriptions(request: HttpRequest) -> HttpResponse:
    """The person's subscriptions and the form for a new one. A valid POST answers with the
    page itself, the new secret on it (see the module's docstring)."""
    created: WebhookSubscription | None = None
    secret = ""
    status = 200
    if request.method == "POST":
        form = NewSubscriptionForm(request.POST)
        if form.is_valid():
            if not use_form_id(request, form.cleaned_data["form_id"], SESSION_FORM_IDS):
                messages.info(
                    request,
                    "That form was already sent, so no other subscription was made. A secret "
                    "is shown only once: if you did not keep it, rotate it on the "
                    "subscription's page.",
                )
                return redirect("webhooks")
            try:
                created, secret = webhooks.subscribe(
                    request.user,
                    form.cleaned_data["url"],
                    form.cleaned_data["events"],
                    actor=request.user,
                )
            except webhooks.InvalidSubscription as exc:
                # The id was used up: the corrected form needs a new one.
                data = request.POST.copy()
                data["form_id"] = new_form_id(request, SESSION_FORM_IDS)
                form = NewSubscriptionForm(data)
                form.is_valid()
                form.refused(exc)
                status = 400
            else:
                form = NewSubscriptionForm(
                    initial={"form_id": new_form_id(request, SESSION_FORM_IDS)}
                )
        else:
            status = 400
    else:
        form = NewSubscriptionForm(initial={"form_id": new_form_id(request, SESSION_FORM_IDS)})
    return render(
        request,
        "integrations/webhooks.html",
        {
            "subscriptions": with_summary(subscriptions_of(request.user)),
            "form": form,
            "created": created,
            "secret": secret,
        },
        status=status,
    )


# --- One subscription ------------------------------------------------------------------------


def _subscription(request: HttpRequest, subscription_id: int) -> WebhookSubscription:
    return get_object_or_404(subscriptions_of(request.user), pk=subscription_id)


def _detail(
    request: HttpRequest,
    subscription: WebhookSubscription,
    *,
    change_form: SubscriptionForm | None = None,
    range_form: ReplayRangeForm | None = None,
    secret: str = "",
    status: int = 200,
) -> HttpResponse:
    """The subscription's page: the same queries whatever the size of its log (the summary,
    the page of deliveries with their events, and their attempts)."""
    summary = with_summary(subscriptions_of(request.user)).get(pk=subscription.pk)
    deliveries = (
        summary.deliveries.select_related("event")
        .prefetch_related(
            Prefetch("attempt_log", queryset=WebhookAttempt.objects.order_by("at", "id"))
        )
        .order_by("-sequence")
    )
    page = Paginator(deliveries, DELIVERIES_PER_PAGE).get_page(request.GET.get("page"))
    if change_form is None:
        change_form = SubscriptionForm(initial={"url": summary.url, "events": summary.events})
    return render(
        request,
        "integrations/webhook_detail.html",
        {
            "subscription": summary,
            "change_form": change_form,
            "range_form": range_form or _fresh_range_form(),
            "page": page,
            "querystring": "",
            "secret": secret,
            "rotate_form_id": new_form_id(request, SESSION_FORM_IDS),
            "overlap_until": (
                summary.previous_secret_until if len(summary.secrets_now()) > 1 else None
            ),
            "time_zone": timezone.get_current_timezone_name(),
        },
        status=status,
    )


@never_cache
@require_http_methods(["GET", "POST"])
@login_required
def subscription(request: HttpRequest, subscription_id: int) -> HttpResponse:
    """The subscription, its delivery log, and (POST) a change of its URL or events."""
    sub = _subscription(request, subscription_id)
    if request.method == "GET":
        return _detail(request, sub)
    form = SubscriptionForm(request.POST)
    if form.is_valid():
        try:
            webhooks.change(
                sub, request.user, url=form.cleaned_data["url"], events=form.cleaned_data["events"]
            )
        except webhooks.InvalidSubscription as exc:
            form.refused(exc)
        else:
            messages.success(request, "Saved: the subscription hears about the events chosen.")
            return redirect("webhook", sub.pk)
    return _detail(request, sub, change_form=form, status=400)


@require_POST
@login_required
def send_test(request: HttpRequest, subscription_id: int) -> HttpResponse:
    sub = _subscription(request, subscription_id)
    delivery = webhooks.send_test(sub)
    if sub.is_active:
        messages.success(
            request,
            f"A test event ({delivery.event.type}, #{delivery.sequence}) is on its way: its "
            "delivery shows in the log below.",
        )
    else:
        messages.warning(
            request,
            f"A test event (#{delivery.sequence}) is recorded, but the subscription is "
            "disabled: it is held until you enable it.",
        )
    return redirect("webhook", sub.pk)


@never_cache  # the answer shows the new secret
@require_POST
@login_required
def rotate_secret(request: HttpRequest, subscription_id: int) -> HttpResponse:
    """A new secret, shown in this answer only; the old one keeps signing for a day."""
    sub = _subscription(request, subscription_id)
    if not use_form_id(request, request.POST.get("form_id", ""), SESSION_FORM_IDS):
        messages.info(
            request,
            "That form was already sent, so the secret was not rotated again. A secret is shown "
            "only once: if you did not keep it, rotate it again.",
        )
        return redirect("webhook", sub.pk)
    secret = webhooks.rotate_secret(sub, request.user)
    return _detail(request, sub, secret=secret)


@require_POST
@login_required
def enable(request: HttpRequest, subscription_id: int) -> HttpResponse:
    sub = _subscription(request, subscription_id)
    if sub.is_active:
        messages.info(request, "The subscription is already active.")
        return redirect("webhook", sub.pk)
    replayed = webhooks.enable(sub, request.user)
    messages.success(
        request,
        f"Enabled: {replayed} held deliver{'y is' if replayed == 1 else 'ies are'} being sent "
        "now, oldest first.",
    )
    return redirect("webhook", sub.pk)


@require_POST
@login_required
def delete(request: HttpRequest, subscription_id: int) -> HttpResponse:
    sub = _subscription(request, subscription_id)
    url = sub.url
    webhooks.delete(sub, request.user)
    messages.success(request, f"Deleted: nothing more is sent to {url}.")
    return redirect("webhooks")


@require_POST
@login_required
def replay(request: HttpRequest, subscription_id: int, delivery_id: int) -> HttpResponse:
    """One delivery again: the same webhook-id and body, a fresh count of attempts."""
    sub = _subscription(request, subscription_id)
    delivery = get_object_or_404(sub.deliveries, pk=delivery_id)
    webhooks.replay(sub.deliveries.filter(pk=delivery.pk))
    messages.success(request, f"Delivery #{delivery.sequence} is sent again{_held(sub)}.")
    return redirect("webhook", sub.pk)


@require_POST
@login_required
def replay_range(request: HttpRequest, subscription_id: int) -> HttpResponse:
    """Every delivery made in a time range again (a receiver that lost a day, say)."""
    sub = _subscription(request, subscription_id)
    form = ReplayRangeForm(request.POST)
    if not form.is_valid():
        return _detail(request, sub, range_form=form, status=400)
    since, until = form.cleaned_data["since"], form.cleaned_data["until"]
    count = webhooks.replay_range(sub, since, until)
    if count:
        messages.success(
            request,
            f"{count} deliver{'y' if count == 1 else 'ies'} from {_when(since)} up to "
            f"{_when(until)} {'is' if count == 1 else 'are'} sent again{_held(sub)}.",
        )
    else:
        messages.info(request, f"No delivery was made from {_when(since)} up to {_when(until)}.")
    return redirect("webhook", sub.pk)


def _when(moment: Any) -> str:
    return timezone.localtime(moment).strftime("%b %-d, %Y, %H:%M")


def _held(sub: WebhookSubscription) -> str:
    return "" if sub.is_active else " once you enable the subscription (it is disabled)"
