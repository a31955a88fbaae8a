# Two commands for a newcomer: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test models install bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

models: $(STAMP)
	$(BIN)/vbgw models fetch

run: models
	$(BIN)/vbgw serve

test: models
	$(BIN)/python -m pytest -q -ra

clean:
	rm -rf $(VENV) var build *.egg-info
