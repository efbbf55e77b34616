from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

# Pages through MIDDLEWARE; /hooks/zywave/ and /api/ (not its two HTML pages) through the short
# PORTAL_MACHINE_MIDDLEWARE: portal/machine.py says why.
from portal.machine import MachineHandler, dispatcher  # noqa: E402

application = dispatcher(pages=get_wsgi_application(), machines=MachineHandler())

# gunicorn does not run Django's system checks: refuse to serve with a wrong encryption key.
from integrations.checks import run_startup_checks  # noqa: E402

run_startup_checks()
