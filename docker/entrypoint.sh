#!/bin/sh
# One image, several roles. `docker compose run --rm web manage <command>` runs manage.py.
set -eu

lower() { printf '%s' "${1:-}" | tr '[:upper:]' '[:lower:]'; }

# web, worker and beat serve production, so they start only with DEBUG explicitly false (unset
# means on, for `make run`) unless PORTAL_ALLOW_DEBUG=true says a debug container is meant (a
# demo), never with the image build's marker, and only once `check --deploy` passes (settings
# refuse placeholders and build-only values; errors such as integrations.E001 stop the start,
# warnings are printed).
refuse_unsafe_start() {
    case "$(lower "${PORTAL_BUILD_ONLY:-}")" in
        "" | false | 0 | no | off) ;;
        *)
            echo "refusing to start $1: PORTAL_BUILD_ONLY is for the image's collectstatic" \
                "step only" >&2
            exit 78  # EX_CONFIG
            ;;
    esac
    # As portal/env.py reads it: DEBUG_FILE, when set, wins over DEBUG.
    if [ -n "${DEBUG_FILE:-}" ]; then
        debug="$(cat "$DEBUG_FILE")"
    else
        debug="${DEBUG:-}"
    fi
    case "$(lower "$debug"),$(lower "${PORTAL_ALLOW_DEBUG:-}")" in
        false,* | 0,* | no,* | off,*) ;;
        *,true | *,1 | *,yes | *,on) echo "starting $1 with DEBUG on (PORTAL_ALLOW_DEBUG)" >&2 ;;
        *)
            echo "refusing to start $1: DEBUG is ${debug:-unset (which means on)};" \
                "set DEBUG=false (or PORTAL_ALLOW_DEBUG=true to run in debug on purpose)" >&2
            exit 78  # EX_CONFIG
            ;;
    esac
    python manage.py check --deploy
}

case "${1:-web}" in
    web)
        refuse_unsafe_start web
        # Metrics: every gunicorn worker's counts in one directory of this container's tmpfs,
        # added up by /metrics (portal/metrics.py; emptied at start by gunicorn.conf.py).
        export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-/tmp/metrics}"
        exec gunicorn -c portal/gunicorn.conf.py portal.wsgi:application
        ;;
    worker)
        refuse_unsafe_start worker
        # Metrics: the pool's processes write their counts here, which the worker's exporter on
        # METRICS_PORT adds up. Set before Celery starts: the mode is chosen at import.
        export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-/tmp/metrics}"
        # Queues: `interactive` (Sync now, the API's syncs, profile changes), `refetch` (Zywave's
        # webhooks), `sync` (scheduled mirroring, long), `tokens` (refresh upkeep), `webhooks`
        # (outbound deliveries), `celery` (the rest). One worker takes all six by default; at
        # scale run a second one on interactive,refetch,webhooks,celery so nothing a person waits
        # for sits behind the scheduled backlog. See docker/README.md, "Scaling workers".
        exec celery -A portal --quiet worker \
            --queues "${CELERY_QUEUES:-interactive,refetch,sync,tokens,webhooks,celery}" \
            --concurrency "${CELERY_CONCURRENCY:-4}" \
            --hostname "${CELERY_HOSTNAME:-worker@%h}" \
            --without-gossip --without-mingle \
            --loglevel "${LOG_LEVEL:-INFO}"
        ;;
    beat)
        refuse_unsafe_start beat
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
        export DJANGO_SETTINGS_MODULE=sandbox.settings  # the image's default is the portal's
        exec python -m sandbox serve --bind "${SANDBOX_BIND:-0.0.0.0:8001}"
        ;;
    healthcheck)
        exec python docker/healthcheck.py "${2:-web}"
        ;;
    *)
        exec "$@"
        ;;
esac
