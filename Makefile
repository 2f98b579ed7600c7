# Every target creates .venv when it is missing and installs the project into it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

AIRFLOW_ENV := AIRFLOW_HOME=$(CURDIR)/.local/airflow \
	AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
	AIRFLOW__CORE__PLUGINS_FOLDER=$(CURDIR)/plugins \
	AIRFLOW__CORE__LOAD_EXAMPLES=False

.PHONY: install demo airflow test test-fast lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(AIRFLOW_ENV) $(BIN)/airflow db migrate > /dev/null
	$(AIRFLOW_ENV) PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/airflow dags test mnist_training
	$(AIRFLOW_ENV) PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/airflow dags test mnist_serving_export
	$(BIN)/mnist-pipeline summary

# The Airflow UI (airflow standalone) with the same settings as demo, until Ctrl-C; AIRFLOW_PORT=8081 moves it.
airflow: $(STAMP)
	$(AIRFLOW_ENV) $(BIN)/python scripts/airflow_ui.py

# pyright (15 to 30 s of CPU) checks again only when what it reads changed: a file or folder of the
# packages it checks ([tool.pyright] include), its settings or the installed packages.
TYPED_PATHS := mnist_pipeline dags plugins
TYPECHECKED := .local/typechecked
$(TYPECHECKED): $(STAMP) pyproject.toml $(wildcard $(VENV)/lib/python3*/site-packages) $(shell find $(TYPED_PATHS) -name '*.py' -o -type d -not -name __pycache__)
	$(BIN)/pyright
	@mkdir -p $(@D) && touch $@

lint: $(STAMP) $(TYPECHECKED)
	$(BIN)/ruff check mnist_pipeline dags plugins tests benchmarks scripts
	$(BIN)/lint-imports

# pytest workers: PYTEST_WORKERS if set, else one per CPU core for the fast tests and one more for the
# whole suite, whose slow tests leave a core idle while they wait on Airflow's processes and servers
# (at least 2, at most 4: each holds TensorFlow and Airflow). A module whose tests share a
# module-scoped fixture runs on one worker, in order (tests/conftest.py).
workers = $(or $(PYTEST_WORKERS),$(shell $(PYTHON) -c "import os; print(min(max(len(os.sched_getaffinity(0)) + $(1), 2), 4))"))

test: lint
	$(BIN)/pytest -n $(call workers,1) --dist loadgroup

# Skips the tests that train models or run the DAG end to end.
test-fast: lint
	$(BIN)/pytest -n $(call workers,0) --dist loadgroup -m "not slow"

clean:
	rm -rf .local .pytest_cache .ruff_cache .import_linter_cache
