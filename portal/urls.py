from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path

from integrations.api.problems import not_found
from integrations.urls import oauth_patterns
from integrations.views import zywave_hook
from portal.forms import AdminLoginForm, LoginForm
from portal.health import health

admin.site.login_form = AdminLoginForm

urlpatterns = [
    path(
        "login/",
        auth_views.LoginView.as_view(
            authentication_form=LoginForm, redirect_authenticated_user=True
        ),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("oauth/", include(oauth_patterns)),
    path("admin/", admin.site.urls),
    path("health/", health, name="health"),
    path("hooks/zywave/<str:token>/", zywave_hook, name="zywave_hook"),
    path("api/", include("integrations.api.urls")),
    re_path(r"^api$", not_found),  # never APPEND_SLASH's redirect (a POST's would be a 500)
    path("", include("integrations.urls")),
]

handler400 = "portal.errors.bad_request"
handler500 = "portal.errors.server_error"
