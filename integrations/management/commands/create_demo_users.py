from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Create the demo logins demo/demo (staff member) and admin/admin (superuser)."

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError("Demo users are for development only (DEBUG is off).")
        User = get_user_model()
        demo, _ = User.objects.get_or_create(username="demo", defaults={"first_name": "Demo"})
        demo.is_staff = False  # an agency staff member: an ordinary portal user, no admin
        demo.set_password("demo")
        demo.save()
        admin, _ = User.objects.get_or_create(username="admin")
        admin.is_staff = admin.is_superuser = True
        admin.set_password("admin")
        admin.save()
        self.stdout.write("Demo users ready: demo/demo (staff member), admin/admin (superuser).")
