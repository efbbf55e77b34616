#!/bin/sh
# As the official image: options alone mean redis-server; the server runs as `redis`.
set -eu
case "${1:-redis-server}" in -*) set -- redis-server "$@" ;; esac
if [ "${1:-}" = redis-server ] && [ "$(id -u)" = 0 ]; then
    chown redis:redis /data
    exec setpriv --reuid redis --regid redis --init-groups "$@"
fi
exec "$@"
