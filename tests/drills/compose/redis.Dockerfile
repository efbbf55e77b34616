# The stand-in for redis:7: Debian bookworm's Redis 7.0, run as `redis` in /data, taking the
# command docker/compose.yaml gives (`redis-server --save "" ...`). Built by tests/drills/engine.py.
ARG DEBIAN_BASE=portal-drill/debian:bookworm
FROM ${DEBIAN_BASE}
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
    && mkdir -p /data && chown redis:redis /data
WORKDIR /data
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
EXPOSE 6379
CMD ["redis-server"]
