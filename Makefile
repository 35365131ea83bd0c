# The two commands of the README: `make run` and `make test`. Both set up
# .venv from requirements.txt first, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
export HOST PORT

.PHONY: setup migrate run test bench superuser clean

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

migrate: setup
	$(BIN)/python manage.py migrate --noinput

run: migrate
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

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The benchmarks make a database of their own: no migrate of yours needed.
bench: setup
	$(BIN)/python -m bench.mailbox $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
