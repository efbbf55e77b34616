# The front door: `make run` starts everything on embedded defaults, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORTAL_URL ?= http://127.0.0.1:8000
SANDBOX_BIND ?= 127.0.0.1:8001
SANDBOX_ACCOUNTS ?= 10000

.PHONY: run test smoke lint types bench sandbox migrate demo clean browser drills

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

test: lint types smoke browser
	$(BIN)/pytest

# Browser tests need Debian's Chromium (no browser download is possible here) and axe-core.
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
	$(BIN)/python tests/smoke/run_smoke.py

# Reliability drills against real processes (gunicorn, two workers, beat, PostgreSQL database
# portal_drills, Redis DB 13, the sandbox with faults): writes docs/reliability.md.
drills: $(VENV)/.dev
	$(BIN)/python tests/drills/run_drills.py

bench: $(VENV)/.dev
	cd tests/bench && ../../$(BIN)/python bench_sandbox.py
	cd tests/bench && ../../$(BIN)/python bench_tokens.py
	cd tests/bench && ../../$(BIN)/python bench_sync.py

clean:
	rm -rf var
