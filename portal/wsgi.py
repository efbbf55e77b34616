from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

application = get_wsgi_application()

# gunicorn does not run Django's system checks: refuse to serve with a wrong encryption key.
from integrations.checks import run_startup_checks  # noqa: E402

run_startup_checks()
