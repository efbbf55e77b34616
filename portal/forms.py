"""The login forms of the portal and of the admin."""

from __future__ import annotations

from typing import Any

from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.core.validators import MaxLengthValidator


class UsernameLengthMixin:
    """Refuse a username longer than any account can have, with a form error, before it
    reaches authentication.

    Django's login form only sets `max_length` after the field is built, which adds no
    validator; django-axes then records the failed username in a varchar(255), and
    PostgreSQL refuses a longer one: a 500 the scanner drill found.
    """

    fields: dict[str, Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        username = self.fields["username"]
        username.validators = [*username.validators, MaxLengthValidator(username.max_length)]


class LoginForm(UsernameLengthMixin, AuthenticationForm):
    pass


class AdminLoginForm(UsernameLengthMixin, AdminAuthenticationForm):
    pass
