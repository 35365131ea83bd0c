# The two commands of the README: `make run` and `make test`. Both set up
# .venv from requirements.txt first, and the web client (web/) with Node.js >= 20:
# `npm ci` when node_modules is missing or the lock changed, a build when its sources
# changed. Without Node.js the API, gateway and admin still run; the web client is not built.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
export HOST PORT

NPM ?= npm
CHROMIUM ?= /usr/bin/chromium
export CHROMIUM
NODE_OK := $(shell node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' 2>/dev/null && echo 1)
WEB_SOURCES := $(shell find web/src web/public -type f -not -name '*.test.ts' 2>/dev/null) \
	web/index.html web/vite.config.ts web/tsconfig.json

.PHONY: setup web migrate run test test-web-unit bench bench-scale superuser clean

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

# The development settings (DEBUG=1, a generated SECRET_KEY), read by the settings
# in and out of make (decentcom/envfile.py); production has none and sets real variables.
.env:
	$(PYTHON) -m decentcom.envfile

setup: $(VENV)/.installed .env

web/node_modules/.installed: web/package.json web/package-lock.json
	cd web && $(NPM) ci --no-audit --no-fund
	touch $@

web/dist/index.html: web/node_modules/.installed $(WEB_SOURCES)
	cd web && $(NPM) run build
	touch $@

ifeq ($(NODE_OK),1)
web: web/dist/index.html
else
web:
	@echo "*** Node.js >= 20 not found: the web client is not built. The API, the gateway and the admin"
	@echo "*** work without it; / says the web client is missing. Install Node.js 20+ and run make again."
endif

migrate: setup
	$(BIN)/python manage.py migrate --noinput

run: migrate web
	$(BIN)/python -m decentcom.run

# In a terminal it asks; from a script it takes DJANGO_SUPERUSER_USERNAME and
# DJANGO_SUPERUSER_PASSWORD (and DJANGO_SUPERUSER_EMAIL). Django alone, without a
# terminal, skips the user and exits 0: here that is an error.
superuser: migrate
	@if [ -n "$$DJANGO_SUPERUSER_USERNAME" ]; then \
	  if [ -z "$$DJANGO_SUPERUSER_PASSWORD" ]; then \
	    echo "make superuser: DJANGO_SUPERUSER_PASSWORD must be set with DJANGO_SUPERUSER_USERNAME" >&2; exit 2; fi; \
	  $(BIN)/python manage.py createsuperuser --noinput; \
	elif [ -t 0 ]; then \
	  $(BIN)/python manage.py createsuperuser; \
	else \
	  echo "make superuser: no terminal to ask in; set DJANGO_SUPERUSER_USERNAME and DJANGO_SUPERUSER_PASSWORD" >&2; \
	  exit 2; \
	fi

# pytest includes the browser tests (tests/web/), which need the built bundle and
# a Chromium at $(CHROMIUM); they say why when they skip (and fail instead under CI=true).
test: setup web test-web-unit
	@test -x "$(CHROMIUM)" || echo "*** No Chromium at $(CHROMIUM): the browser tests (tests/web/) will be skipped."
	$(BIN)/python -m pytest $(PYTEST_ARGS)

ifeq ($(NODE_OK),1)
test-web-unit: web/node_modules/.installed
	cd web && $(NPM) test
else
test-web-unit:
	@echo "*** Node.js >= 20 not found: the web client's unit tests (vitest) and browser tests are skipped."
endif

# The benchmarks make a database of their own: no migrate of yours needed. `make bench` runs
# every phase with 1 and then 2 web processes in under 3 minutes (the 100,000-row purge and the
# big database are bench-scale's); BENCH_ARGS="--json out.json" also writes the figures.
bench: setup
	$(BIN)/python -m bench.mailbox $(BENCH_ARGS)

# Issue 13's server size: the hot paths on an empty and a filled database (a few minutes,
# about 1 GB of disk while it runs), then 10,000 idle gateway connections on one daphne.
bench-scale: setup
	$(BIN)/python -m bench.scale $(BENCH_SCALE_ARGS)
	$(BIN)/python -m bench.idle $(BENCH_IDLE_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis web/node_modules web/dist
