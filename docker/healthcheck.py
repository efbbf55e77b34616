"""Container healthchecks, one per role: `python docker/healthcheck.py web|worker|beat`.

Exit status 0 means healthy.

* web: GET /health/ as the load balancer would, with the first ALLOWED_HOSTS name as Host (Django
  refuses others) and X-Forwarded-Proto so that no HTTPS redirect gets in the way.
* worker: this container's worker answers a ping through the broker.
* beat: the schedule file was written recently (beat saves it every few minutes).
"""

from __future__ import annotations

import glob
import os
import socket
import sys
import time
import urllib.error
import urllib.request


def web() -> int:
    hosts = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "").split(",") if h.strip()]
    host = (hosts[0] if hosts else "localhost").lstrip(".").replace("*", "localhost")
    port = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000").rsplit(":", 1)[-1]
    request = urllib.request.Request(  # noqa: S310 (a fixed http URL on this container)
        f"http://127.0.0.1:{port}/health/",
        headers={"Host": host, "X-Forwarded-Proto": "https"},
    )
    try:
        with urllib.request.urlopen(request, timeout=8) as response:  # noqa: S310
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


def worker() -> int:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from portal.celery import app

    name = os.environ.get("CELERY_HOSTNAME", "worker@%h").replace("%h", socket.gethostname())
    replies = app.control.ping(destination=[name], timeout=5)
    return 0 if replies else 1


def beat() -> int:
    files = glob.glob("/app/var/beat/celerybeat-schedule*")
    if not files:
        return 1
    age = time.time() - max(os.path.getmtime(path) for path in files)
    return 0 if age < 600 else 1


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else "web"
    sys.exit({"web": web, "worker": worker, "beat": beat}[role]())
