# Set-up and checks. Everything installs into .venv; torch is pinned to the
# local CPU build through constraints.txt so pip never pulls CUDA wheels.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo demo-model install clean

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

# the shipped demo model: synthetic nuclei (seeds 101-104; the demo uses 2026), configs/train.yaml
demo-model: $(STAMP)
	rm -rf build/demo-training
	for seed in 101 102 103 104; do \
	  $(BIN)/unet-pipeline synth build/demo-training/nuclei-$$seed.ome.zarr --shape 4x512x512 \
	    --chunks 1x256x256 --seed $$seed --labels || exit 1; \
	done
	$(BIN)/unet-pipeline train --images build/demo-training --config configs/train.yaml \
	  --out models/demo-unet.safetensors --overwrite
	$(BIN)/unet-pipeline model info models/demo-unet.safetensors | grep sha256

clean:
	rm -rf $(VENV) demo-output .pytest_cache .hypothesis
