# Driftline — the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test proto stack-up stack-status stack-down bench clean

# The virtual environment is rebuilt only when the dependencies change. pip's
# own cache (~/.cache/pip) makes a rebuild on the same machine fast.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar on -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

## The whole loop on the local stack: events → features → model → drift → retrain → swap.
demo: setup
	$(PY) -m services.devstack doctor --demo
	$(PY) -m services.devstack install
	$(PY) -m services.demo $(DEMO_ARGS)

## Every test, against a real Kafka broker and a real S3 server (started if none is configured).
## First the machine's prerequisites (or exactly what to install), then the stack's and the tests'
## downloads and builds (cached; only what no DRIFTLINE_* address replaces), outside the tests' limits.
test: setup
	$(PY) -m services.devstack doctor
	$(PY) -m services.devstack install
	$(PY) -m pytest $(PYTEST_ARGS)

proto: setup
	$(PY) protos/generate.py

stack-up: setup
	$(PY) -m services.devstack up
stack-status: setup
	$(PY) -m services.devstack status
stack-down: setup
	$(PY) -m services.devstack down

bench: setup
	$(PY) bench/kafka_roundtrip.py

clean:
	rm -rf $(VENV) .devstack .pytest_cache
