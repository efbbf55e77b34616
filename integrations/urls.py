from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("zywave/profiles/", views.profiles, name="profiles"),
    path("zywave/disconnect/", views.disconnect, name="disconnect"),
]

# social-auth reverses "social:complete" to build the redirect URI: keep these names.
oauth_patterns = (
    [
        path("login/<str:backend>/", views.connect_begin, name="begin"),
        path("complete/<str:backend>/", views.connect_complete, name="complete"),
    ],
    "social",
)
