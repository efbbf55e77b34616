#!/bin/sh
# One image, several roles. `docker compose run --rm web manage <command>` runs manage.py.
set -eu

case "${1:-web}" in
    web)
        exec gunicorn -c portal/gunicorn.conf.py portal.wsgi:application
        ;;
    worker)
        # Queues: `sync` (mirroring, long), `tokens` (refresh upkeep, short), `celery` (the rest,
        # e.g. heartbeat). See docker/README.md, "Scaling workers".
        exec celery -A portal --quiet worker \
            --queues "${CELERY_QUEUES:-celery,sync,tokens}" \
            --concurrency "${CELERY_CONCURRENCY:-4}" \
            --hostname "${CELERY_HOSTNAME:-worker@%h}" \
            --without-gossip --without-mingle \
            --loglevel "${LOG_LEVEL:-INFO}"
        ;;
    beat)
        exec celery -A portal --quiet beat \
            --schedule /app/var/beat/celerybeat-schedule \
            --loglevel "${LOG_LEVEL:-INFO}"
        ;;
    migrate)
        exec python manage.py migrate --no-input
        ;;
    manage)
        shift
        exec python manage.py "$@"
        ;;
    sandbox)
        exec python -m sandbox serve --bind 0.0.0.0:8001
        ;;
    healthcheck)
        exec python docker/healthcheck.py "${2:-web}"
        ;;
    *)
        exec "$@"
        ;;
esac
