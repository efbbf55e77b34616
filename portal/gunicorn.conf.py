"""gunicorn settings for the portal: `gunicorn -c portal/gunicorn.conf.py portal.wsgi`.

Everything has a default that suits one container; the environment overrides it. gunicorn's
own loggers (errors and the access log) go through the same JSON formatter and redaction filter
as Django's, so a token in a callback URL never reaches the access log in clear.
"""

from __future__ import annotations

import os
from typing import Any

from portal import env
from portal.logs import logging_config

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
# gunicorn reads WEB_CONCURRENCY itself as the default worker count; say so explicitly.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_class = "gthread"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 20
keepalive = 5
# No periodic worker recycling (max_requests): a recycled worker drops its idle keep-alive
# connections, and a client that sends on one at that moment gets a reset instead of an answer
# (the pages-under-load drill counted 82 in 18,649 pages). No leak has been seen to need it.
max_requests = 0
# Whose X-Forwarded-Proto decides the scheme Django sees (Django itself trusts no header:
# settings.py has no SECURE_PROXY_SSL_HEADER). Only the reverse proxy's address, as this process
# sees it: anyone else could claim HTTPS. The same list, read the same way, decides whose
# X-Forwarded-For names the client for login throttling (settings.FORWARDED_ALLOW_IPS).
forwarded_allow_ips = ",".join(env.get_addresses("FORWARDED_ALLOW_IPS", "127.0.0.1"))
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108

# Metrics (portal/metrics.py): every worker process writes its values into one directory of this
# deployment's, which /metrics adds up. Set here, in the master, before any worker imports
# prometheus_client; emptied at start, and a worker that exits is marked dead.
_made_dir = ""
if env.get("METRICS_TOKEN") and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    import tempfile

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _made_dir = tempfile.mkdtemp(
        prefix="portal-metrics-web-"
    )


def on_starting(server: object) -> None:
    from portal.metrics import ensure_multiprocess

    ensure_multiprocess("web", wanted=False)  # the directory is set above, or not wanted


def child_exit(server: object, worker: Any) -> None:
    from portal.metrics import process_dead

    process_dead(worker.pid)


def on_exit(server: object) -> None:
    if _made_dir:
        import shutil

        shutil.rmtree(_made_dir, ignore_errors=True)


accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
_format = os.environ.get("LOG_FORMAT") or (
    "plain" if os.environ.get("DEBUG", "true").lower() in {"1", "true", "yes", "on"} else "json"
)
logconfig_dict = logging_config(
    _format,
    None,
    {
        "gunicorn.error": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "gunicorn.access": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
)
