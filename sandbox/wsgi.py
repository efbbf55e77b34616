"""WSGI entry point for gunicorn: `gunicorn sandbox.wsgi`."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sandbox.settings")

application = get_wsgi_application()

# Only server processes send webhooks (never `migrate` or `seed`): each starts its sender here,
# after Django is set up (docs/zywave.md §6).
from sandbox.zywave.webhooks import start_dispatcher  # noqa: E402

start_dispatcher()
