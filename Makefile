# Two commands on a fresh machine: `make demo` and `make test`. Install steps are stamped, so they are
# idempotent and take a second once done; they rerun when poetry.lock or package-lock.json changes.

PYTHON ?= python3.11
POETRY_VERSION := 2.2.1
VENV := .venv
TOOLS := .tools
STAMPS := .make
PY := $(VENV)/bin/python
QUICK ?=
PYTEST_ARGS ?=
TEST_WORKERS ?= 4
# The Python and the npm installs are independent: a fresh clone runs them side by side.
MAKEFLAGS += --jobs=2

export POETRY_VIRTUALENVS_IN_PROJECT := true
export POETRY_NO_INTERACTION := 1

.PHONY: install test demo bench reliability schemas clean

install: $(STAMPS)/python $(STAMPS)/node
	@# Bytecode for our own modules too: a start without it compiles every import again (PYTHONDONTWRITEBYTECODE).
	@$(PY) -m compileall -q -j 0 main.py connectors office365 azure_eventhub emulators benchmarks >/dev/null

$(STAMPS)/poetry:
	@mkdir -p $(STAMPS)
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check "poetry==$(POETRY_VERSION)"
	@touch $@

$(STAMPS)/python: $(STAMPS)/poetry pyproject.toml poetry.lock
	$(TOOLS)/bin/poetry env use $(PYTHON) >/dev/null
	$(TOOLS)/bin/poetry sync --no-root
	@# Bytecode now, not at every start; the SDK's cookiecutter templates are not Python and are left out.
	$(PY) -m compileall -q -j 0 -x '\{\{cookiecutter' $(VENV)/lib >/dev/null
	@touch $@

$(STAMPS)/node: package.json package-lock.json
	@mkdir -p $(STAMPS)
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# pytest-xdist workers: the tests mostly wait on local servers and child processes, so four keep two cores busy;
# an idle worker takes tests from a busy one (worksteal). Tests marked `slow` (longer end-to-end runs; `make
# reliability` covers them at scale) run on request: `make test PYTEST_ARGS="-m slow"`.
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow" $(PYTEST_ARGS)

demo: install
	$(PY) demo.py

bench: install
	$(PY) -m benchmarks $(if $(QUICK),--quick,)

reliability: install
	$(PY) -m benchmarks.reliability $(if $(QUICK),--quick,)

# trigger_*.json and connector_*.json from the configuration models (tests/test_schemas.py fails when they drift).
schemas: install
	$(PY) -m connectors.schema

clean:
	rm -rf $(VENV) $(TOOLS) $(STAMPS) node_modules
