"""The stand-in for Zywave's admin tool: the page where webhooks are registered.

Zywave publishes no API to register a webhook; its admin tool does it (docs/zywave.md §6). This
page does what the control API's `webhooks` calls do, for a person signed in to the sandbox:
add a subscription (user, event type, URI; verified by the challenge before it is kept), list
them with their deliveries, remove one.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from sandbox.zywave.models import WebhookDelivery, WebhookSubscription
from sandbox.zywave.webhooks import WebhookError, event_types, subscribe


@login_required
def webhooks(request: HttpRequest) -> HttpResponse:
    form = {"user": request.user.get_username(), "event_type": "account.updated", "uri": ""}
    error = ""
    if request.method == "POST":
        remove = request.POST.get("delete", "")
        if remove:
            if remove.isdigit():
                WebhookSubscription.objects.filter(pk=int(remove)).delete()
            return redirect(f"{request.path}?removed={remove}")
        form = {name: request.POST.get(name, "").strip() for name in form}
        try:
            subscription, _created = subscribe(form["user"], form["event_type"], form["uri"])
        except WebhookError as refused:
            error = str(refused)
        else:
            return redirect(f"{request.path}?added={subscription.pk}")
    rows = (
        WebhookSubscription.objects.select_related("user")
        .annotate(
            delivered=Count("deliveries", filter=Q(deliveries__state=WebhookDelivery.DELIVERED)),
            pending=Count("deliveries", filter=Q(deliveries__state=WebhookDelivery.PENDING)),
            failed=Count("deliveries", filter=Q(deliveries__state=WebhookDelivery.FAILED)),
        )
        .order_by("id")
    )
    context = {
        "form": form,
        "error": error,
        "event_types": event_types(),
        "subscriptions": rows,
        "added": request.GET.get("added", ""),
        "removed": request.GET.get("removed", ""),
    }
    return render(request, "zywave/webhooks.html", context, status=400 if error else 200)
