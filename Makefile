# The front door: `make run` starts everything on embedded defaults, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORTAL_URL ?= http://127.0.0.1:8000
SANDBOX_BIND ?= 127.0.0.1:8001
SANDBOX_ACCOUNTS ?= 10000

.PHONY: run test check deps services smoke lint types bench sandbox migrate demo clean browser drills compose-drill promtool

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt sandbox/requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt -r sandbox/requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt sandbox/requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

migrate: $(VENV)/.runtime
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python -m sandbox migrate --no-input

demo: migrate
	$(BIN)/python manage.py create_demo_users
	$(BIN)/python -m sandbox seed --accounts $(SANDBOX_ACCOUNTS)

sandbox: $(VENV)/.runtime
	$(BIN)/python -m sandbox serve --bind $(SANDBOX_BIND)

run: demo
	@echo ""
	@echo "  Portal:   $(PORTAL_URL)/        logins: demo / demo (staff member), admin / admin (superuser)"
	@echo "  Admin:    $(PORTAL_URL)/admin/"
	@echo "  Zywave:   http://$(SANDBOX_BIND)/  (sandbox) logins: agent@example.com / sandbox, solo@example.com / sandbox"
	@echo "  Stop everything with Ctrl-C."
	@echo ""
	$(BIN)/honcho start -f Procfile

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(VENV)/.dev
	$(BIN)/mypy .
	$(BIN)/mypy --config-file sandbox/mypy.ini sandbox tests/sandboxserver.py

# The full suite, what CI runs: everything below, on whatever PostgreSQL and Redis it finds.
# tests/services.py gives the run PostgreSQL and a Redis database of its own wherever it runs
# (the servers on 127.0.0.1 when they answer, else private ones), so no code path is skipped.
test: deps lint types
	$(BIN)/python -m tests.services -- $(BIN)/python tests/smoke/run_smoke.py
	$(BIN)/python -m tests.services -- $(BIN)/pytest

# The fast edit-test loop: lint, types and the tests not marked slow, on SQLite (no browser,
# no smoke run, no drills, never apt or npm). Use `make test` before you push.
check: lint types
	env -u DATABASE_URL $(BIN)/pytest -m "not slow" -q

# What `make test` needs beyond the venv, installed when missing: Debian's Chromium (no browser
# download is possible here) and axe-core for the browser tests.
deps: $(VENV)/.dev browser services promtool

# PostgreSQL and Redis servers for tests/services.py to start privately when none answers on
# 127.0.0.1 (a policy-rc.d keeps Debian from starting the packaged daemons).
services:
	@if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || ! command -v redis-server >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql redis-server; \
			rm -f /usr/sbin/policy-rc.d; \
		else echo "Install PostgreSQL and Redis first: sudo apt-get install postgresql redis-server"; exit 1; fi; fi

# promtool for the alert rules' tests (tests/ops/test_alerts.py): Debian's prometheus package,
# with a policy-rc.d (unless one is there already) so that its daemon never starts.
promtool:
	@command -v promtool >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then \
			own=; [ -e /usr/sbin/policy-rc.d ] || { own=1; printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d; }; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; status=$$?; \
			[ -z "$$own" ] || rm -f /usr/sbin/policy-rc.d; exit $$status; \
		else echo "Install promtool first: sudo apt-get install prometheus"; exit 1; fi; }

browser: tests/e2e/node_modules/axe-core/axe.min.js
	@command -v chromium >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
		else echo "Install Chromium first: sudo apt-get install chromium"; exit 1; fi; }

tests/e2e/node_modules/axe-core/axe.min.js: tests/e2e/package.json tests/e2e/package-lock.json
	npm ci --prefix tests/e2e --no-audit --no-fund --silent
	touch $@

# Production-like run without Docker: gunicorn, worker and beat with DEBUG off against
# PostgreSQL and Redis (DB 14) on 127.0.0.1, plus the sandbox; connects and syncs one user.
smoke: $(VENV)/.dev
	$(BIN)/python -m tests.services -- $(BIN)/python tests/smoke/run_smoke.py

# Reliability drills against real processes (gunicorn, two workers, beat, PostgreSQL database
# portal_drills, Redis DB 13, the sandbox with faults): writes docs/reliability.md.
drills: $(VENV)/.dev
	$(BIN)/python tests/drills/run_drills.py

# The image built and docker/compose.yaml run for real, as an operator would, then broken,
# backed up, restored and its key rotated (also the last step of `make drills`). Installs
# docker.io, mmdebstrap and docker-compose when missing, runs an engine of its own, and removes
# all of it afterwards (COMPOSE_DRILL_KEEP_PACKAGES=1 keeps the packages). Needs root.
compose-drill: $(VENV)/.dev
	$(BIN)/python tests/drills/compose_drill.py

bench: $(VENV)/.dev
	cd tests/bench && ../../$(BIN)/python bench_sandbox.py
	cd tests/bench && ../../$(BIN)/python bench_tokens.py
	cd tests/bench && ../../$(BIN)/python bench_short_tokens.py
	cd tests/bench && ../../$(BIN)/python bench_sync.py
	cd tests/bench && ../../$(BIN)/python bench_logs.py
	cd tests/bench && ../../$(BIN)/python bench_api.py
	cd tests/bench && ../../$(BIN)/python bench_webhooks.py
	cd tests/bench && ../../$(BIN)/python bench_hooks.py
	cd tests/bench && ../../$(BIN)/python bench_fleet.py

clean:
	rm -rf var
