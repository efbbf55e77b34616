# A layer on the python stand-in holding this machine's CA bundle and pip configuration, so
# that the portal's `pip install` reaches the package registry from here. The build context is
# a temporary directory the harness fills (never the repository); after the portal image is
# built on it, tests/drills/engine.py removes this layer from the image (`strip_layer`), so the
# image the stack runs has never held these files.
ARG PYTHON_BASE=python:3.11-slim
FROM ${PYTHON_BASE}
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY pip.conf /etc/pip.conf
