# Two commands for a fresh machine: `make demo` and `make test`. Both bootstrap .venv first.
# Every pip call goes through constraints.txt so nothing swaps torch silently.

PYTHON ?= python3.11
VENV ?= .venv
PIP_ARGS ?=
PIP := $(VENV)/bin/python -m pip
STAMP := $(VENV)/.hyperkd-installed
DEMO_OUT ?= demo-out

# Offline and quiet: no telemetry from Prefect, no hub lookups from timm/huggingface.
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export HF_HUB_OFFLINE ?= 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120

.PHONY: install demo test test-all lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install -q $(PIP_ARGS) -c constraints.txt torch torchvision
	$(PIP) install -q $(PIP_ARGS) -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hyperkd demo --out $(DEMO_OUT)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest -q

test-all: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not network"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
