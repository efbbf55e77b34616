# The stand-in for python:3.11-slim (registries of images are out of reach here): Debian
# bookworm's Python 3.11 with pip and venv, as the real image offers them (`python` on the path,
# pip free to install into the system). Built by tests/drills/engine.py; nothing machine-specific.
ARG DEBIAN_BASE=portal-drill/debian:bookworm
FROM ${DEBIAN_BASE}
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-pip python3-venv \
    && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
    && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED \
    && ln -s /usr/bin/python3 /usr/local/bin/python
ENV LANG=C.UTF-8
CMD ["python3"]
