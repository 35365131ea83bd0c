# The two commands of the README: `make run` and `make test`. Both set up
# .venv from requirements.txt first, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Embedded defaults are a developer's laptop; production sets DEBUG=0 and SECRET_KEY.
export DEBUG ?= 1
export HOST PORT

.PHONY: setup migrate run test bench superuser clean

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

setup: $(VENV)/.installed

migrate: setup
	$(BIN)/python manage.py migrate --noinput

run: migrate
	$(BIN)/python -m decentcom.run

superuser: migrate
	$(BIN)/python manage.py createsuperuser

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The benchmarks make a database of their own: no migrate of yours needed.
bench: setup
	$(BIN)/python -m bench.mailbox $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
