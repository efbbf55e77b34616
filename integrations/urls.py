from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("zywave/profiles/", views.profiles, name="profiles"),
    path("zywave/disconnect/", views.disconnect, name="disconnect"),
    path("zywave/sync/", views.sync, name="sync"),
    path("zywave/sync/status/", views.sync_status, name="sync_status"),
    path("zywave/accounts/", views.accounts, name="accounts"),
    path("zywave/accounts/<str:zywave_id>/", views.account_detail, name="account"),
]

# social-auth reverses "social:complete" to build the redirect URI: keep these names.
oauth_patterns = (
    [
        path("login/<str:backend>/", views.connect_begin, name="begin"),
        path("complete/<str:backend>/", views.connect_complete, name="complete"),
    ],
    "social",
)
