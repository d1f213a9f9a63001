# Set-up and checks. Everything installs into .venv; torch is pinned to the
# local CPU build through constraints.txt so pip never pulls CUDA wheels.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/unet-pipeline demo demo-output
	$(BIN)/python -m flows.demo demo-output

clean:
	rm -rf $(VENV) demo-output .pytest_cache .hypothesis
